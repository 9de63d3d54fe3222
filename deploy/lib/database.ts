// Database: Aurora PostgreSQL, the system of record. A writer and a reader in different AZs (the
// reader is the failover target), isolated subnets, encrypted storage, backups and deletion
// protection on. The master credentials live in Secrets Manager and reach the services as ECS
// secrets PGUSER / PGPASSWORD, which sqlx reads when DATABASE_URL names no user: the URL in the
// task definition carries only the writer's address and the TLS settings. TLS is required on both
// ends: the cluster refuses plain connections (rds.force_ssl), and the services verify the
// certificate against Amazon's RDS CAs and the host name against the endpoint (verify-full).
import { Duration, RemovalPolicy } from 'aws-cdk-lib';
import * as ec2 from 'aws-cdk-lib/aws-ec2';
import * as ecs from 'aws-cdk-lib/aws-ecs';
import * as logs from 'aws-cdk-lib/aws-logs';
import * as rds from 'aws-cdk-lib/aws-rds';
import { Construct } from 'constructs';
import type { DatabaseConfig } from './config';

export const DATABASE_NAME = 'trading';
/**
 * The RDS CA bundle in the image (Dockerfile): the global bundle, every region's roots, added to
 * the system trust store by update-ca-certificates, which links it here. sqlx's native-tls backend
 * adds only the first certificate of `sslrootcert` to OpenSSL's default store (the system bundle,
 * which holds all of them), so the system store is what verifies; naming the file anyway fails
 * the connection loudly when an image lacks it, and keeps the URL right for psql, which trusts
 * exactly this file.
 */
export const RDS_CA_BUNDLE = '/etc/ssl/certs/rds-global-bundle.pem';

export interface DatabaseProps {
  readonly config: DatabaseConfig;
  readonly vpc: ec2.IVpc;
  readonly subnets: ec2.SubnetSelection;
  readonly availabilityZones: readonly string[];
  readonly logRetention: logs.RetentionDays;
}

export class Database extends Construct {
  readonly cluster: rds.DatabaseCluster;
  /** `postgres://<writer endpoint>:<port>/trading?sslmode=verify-full&sslrootcert=...`: no credentials in it. */
  readonly url: string;
  readonly secrets: Readonly<Record<string, ecs.Secret>>;

  constructor(scope: Construct, id: string, props: DatabaseProps) {
    super(scope, id);
    const { config } = props;
    const [writerAz, readerAz] = props.availabilityZones;
    if (writerAz === undefined || readerAz === undefined || writerAz === readerAz) {
      throw new Error('the database needs two different availability zones');
    }
    const engine = rds.DatabaseClusterEngine.auroraPostgres({
      version: rds.AuroraPostgresEngineVersion.of(config.engineVersion, config.engineVersion.split('.')[0]!),
    });
    const instanceType = new ec2.InstanceType(config.instanceType);
    const instance = (name: string, az: string): rds.IClusterInstance =>
      rds.ClusterInstance.provisioned(name, {
        instanceType,
        availabilityZone: az,
        publiclyAccessible: false,
        enablePerformanceInsights: true,
        autoMinorVersionUpgrade: true,
      });
    const readerAzs = props.availabilityZones.filter((az) => az !== writerAz);
    this.cluster = new rds.DatabaseCluster(this, 'Cluster', {
      engine,
      credentials: rds.Credentials.fromGeneratedSecret('trading'),
      defaultDatabaseName: DATABASE_NAME,
      writer: instance('Writer', writerAz),
      readers: Array.from({ length: config.readers }, (_, i) =>
        instance(`Reader${i + 1}`, readerAzs[i % readerAzs.length]!),
      ),
      vpc: props.vpc,
      vpcSubnets: props.subnets,
      storageEncrypted: true,
      storageType: config.ioOptimized
        ? rds.DBClusterStorageType.AURORA_IOPT1
        : rds.DBClusterStorageType.AURORA,
      backup: { retention: Duration.days(config.backupRetentionDays), preferredWindow: '02:00-03:00' },
      preferredMaintenanceWindow: 'sun:03:30-sun:04:30',
      deletionProtection: true,
      removalPolicy: RemovalPolicy.SNAPSHOT,
      cloudwatchLogsExports: ['postgresql'],
      cloudwatchLogsRetention: props.logRetention,
      parameterGroup: new rds.ParameterGroup(this, 'Parameters', {
        engine,
        description: 'trading: TLS required (see docs/DEPLOY.md)',
        parameters: {
          // Connections without TLS are refused; the services connect with sslmode=verify-full.
          'rds.force_ssl': '1',
          // Same as the local stack: slow statements in the log.
          log_min_duration_statement: '1000',
        },
      }),
    });
    // verify-full: the certificate chains to an RDS CA and names the cluster endpoint.
    this.url =
      `postgres://${this.cluster.clusterEndpoint.socketAddress}/${DATABASE_NAME}` +
      `?sslmode=verify-full&sslrootcert=${RDS_CA_BUNDLE}`;
    const secret = this.cluster.secret;
    if (secret === undefined) throw new Error('the cluster has no generated secret');
    this.secrets = {
      PGUSER: ecs.Secret.fromSecretsManager(secret, 'username'),
      PGPASSWORD: ecs.Secret.fromSecretsManager(secret, 'password'),
    };
  }

  allowClientsFrom(peer: ec2.IConnectable, description: string): void {
    this.cluster.connections.allowDefaultPortFrom(peer, description);
  }
}

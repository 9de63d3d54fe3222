// Database: Aurora PostgreSQL, the system of record. A writer and a reader in different AZs (the
// reader is the failover target), isolated subnets, encrypted storage, backups and deletion
// protection on. The master credentials live in Secrets Manager and reach the services as ECS
// secrets PGUSER / PGPASSWORD, which sqlx reads when DATABASE_URL names no user: the URL in the
// task definition carries only the writer's address.
import { Duration, RemovalPolicy } from 'aws-cdk-lib';
import * as ec2 from 'aws-cdk-lib/aws-ec2';
import * as ecs from 'aws-cdk-lib/aws-ecs';
import * as logs from 'aws-cdk-lib/aws-logs';
import * as rds from 'aws-cdk-lib/aws-rds';
import { Construct } from 'constructs';
import type { DatabaseConfig } from './config';

export const DATABASE_NAME = 'trading';

export interface DatabaseProps {
  readonly config: DatabaseConfig;
  readonly vpc: ec2.IVpc;
  readonly subnets: ec2.SubnetSelection;
  readonly availabilityZones: readonly string[];
  readonly logRetention: logs.RetentionDays;
}

export class Database extends Construct {
  readonly cluster: rds.DatabaseCluster;
  /** `postgres://<writer endpoint>:<port>/trading`: no credentials in it. */
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
        description: 'trading: the services connect without TLS (see docs/DEPLOY.md)',
        parameters: {
          // The services' sqlx is built without a TLS backend today (Cargo.toml); the traffic
          // stays inside the VPC between security groups. docs/DEPLOY.md, "Known gaps".
          'rds.force_ssl': '0',
          // Same as the local stack: slow statements in the log.
          log_min_duration_statement: '1000',
        },
      }),
    });
    this.url = `postgres://${this.cluster.clusterEndpoint.socketAddress}/${DATABASE_NAME}`;
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

// Streaming: the Kafka the services talk to. By default an Amazon MSK cluster across the three
// AZs (brokers a multiple of 3, replication factor 3, min.insync.replicas 2, unclean leader
// election off, TLS between clients and brokers and inside the cluster, SASL/SCRAM); or existing
// brokers given as a parameter. Either way the services get their settings the same way:
// KAFKA_BROKERS plus the KAFKA_CFG_* overrides infra/src/kafka.rs applies to every client.
import * as ec2 from 'aws-cdk-lib/aws-ec2';
import * as ecs from 'aws-cdk-lib/aws-ecs';
import * as kms from 'aws-cdk-lib/aws-kms';
import * as logs from 'aws-cdk-lib/aws-logs';
import * as msk from 'aws-cdk-lib/aws-msk';
import * as secretsmanager from 'aws-cdk-lib/aws-secretsmanager';
import * as cr from 'aws-cdk-lib/custom-resources';
import { Construct } from 'constructs';
import type { KafkaConfig } from './config';
import { AZ_COUNT } from './network';

/** MSK's SASL/SCRAM listener (TLS). */
export const MSK_SCRAM_PORT = 9096;
export const REPLICATION_FACTOR = 3;
export const MIN_INSYNC_REPLICAS = 2;

/** What every Kafka client container gets. */
export interface KafkaClientSettings {
  readonly bootstrapBrokers: string;
  readonly environment: Readonly<Record<string, string>>;
  readonly secrets: Readonly<Record<string, ecs.Secret>>;
}

export interface StreamingProps {
  readonly config: KafkaConfig;
  readonly stage: string;
  readonly vpc: ec2.IVpc;
  readonly brokerSubnets: ec2.SubnetSelection;
  readonly logRetention: logs.RetentionDays;
}

export class Streaming extends Construct {
  readonly client: KafkaClientSettings;
  /** Set when the cluster is created here; clients are let in with `allowClientsFrom`. */
  readonly securityGroup?: ec2.SecurityGroup;
  readonly clusterArn?: string;

  constructor(scope: Construct, id: string, props: StreamingProps) {
    super(scope, id);
    const external = props.config.bootstrapBrokers;
    if (external !== undefined) {
      const secretArn = props.config.scramSecretArn;
      this.client =
        secretArn === undefined
          ? { bootstrapBrokers: external, environment: {}, secrets: {} }
          : scramClient(external, secretsmanager.Secret.fromSecretCompleteArn(this, 'Scram', secretArn));
      return;
    }
    this.securityGroup = new ec2.SecurityGroup(this, 'BrokerSg', {
      vpc: props.vpc,
      description: 'MSK brokers: SASL/SCRAM over TLS from the services only',
      allowAllOutbound: false,
    });
    const configuration = new msk.CfnConfiguration(this, 'Configuration', {
      name: `${props.stage}-trading`,
      kafkaVersionsList: [props.config.kafkaVersion],
      serverProperties: serverProperties(),
    });
    const brokerLogs = new logs.LogGroup(this, 'BrokerLogs', { retention: props.logRetention });
    const subnetIds = props.vpc.selectSubnets(props.brokerSubnets).subnetIds;
    const cluster = new msk.CfnCluster(this, 'Cluster', {
      clusterName: `${props.stage}-trading`,
      kafkaVersion: props.config.kafkaVersion,
      numberOfBrokerNodes: AZ_COUNT * props.config.brokersPerAz,
      brokerNodeGroupInfo: {
        clientSubnets: subnetIds,
        instanceType: props.config.instanceType,
        securityGroups: [this.securityGroup.securityGroupId],
        storageInfo: { ebsStorageInfo: { volumeSize: props.config.volumeGiB } },
      },
      // The latest revision: a changed server.properties reaches the brokers on the next deploy.
      configurationInfo: { arn: configuration.attrArn, revision: configuration.attrLatestRevisionRevision },
      encryptionInfo: { encryptionInTransit: { clientBroker: 'TLS', inCluster: true } },
      clientAuthentication: {
        sasl: { scram: { enabled: true } },
        unauthenticated: { enabled: false },
      },
      loggingInfo: {
        brokerLogs: { cloudWatchLogs: { enabled: true, logGroup: brokerLogs.logGroupName } },
      },
    });
    this.clusterArn = cluster.attrArn;

    // MSK reads SCRAM credentials only from secrets named AmazonMSK_* and encrypted with a
    // customer-managed key.
    const key = new kms.Key(this, 'ScramKey', {
      description: `${props.stage} trading: MSK SCRAM credentials`,
      enableKeyRotation: true,
    });
    const secret = new secretsmanager.Secret(this, 'ScramSecret', {
      secretName: `AmazonMSK_${props.stage}_trading`,
      description: 'Kafka SASL/SCRAM user of the trading services',
      encryptionKey: key,
      generateSecretString: {
        secretStringTemplate: JSON.stringify({ username: 'trading' }),
        generateStringKey: 'password',
        excludePunctuation: true,
        passwordLength: 32,
      },
    });
    const association = new msk.CfnBatchScramSecret(this, 'ScramAssociation', {
      clusterArn: cluster.attrArn,
      secretArnList: [secret.secretArn],
    });

    // CloudFormation returns no broker addresses for an MSK cluster; one API call at deploy time
    // reads them (a Lambda-backed custom resource; synthesized offline like everything else).
    const lookup = new cr.AwsCustomResource(this, 'BootstrapBrokers', {
      onUpdate: {
        service: 'Kafka',
        action: 'GetBootstrapBrokers',
        parameters: { ClusterArn: cluster.attrArn },
        physicalResourceId: cr.PhysicalResourceId.of(cluster.attrArn),
      },
      policy: cr.AwsCustomResourcePolicy.fromSdkCalls({ resources: [cluster.attrArn] }),
      installLatestAwsSdk: false,
      logGroup: new logs.LogGroup(this, 'BootstrapBrokersLogs', { retention: props.logRetention }),
    });
    lookup.node.addDependency(association);
    this.client = scramClient(lookup.getResponseField('BootstrapBrokerStringSaslScram'), secret);
  }

  /** Lets `peer` reach the brokers (no-op for existing brokers: their owner opens them). */
  allowClientsFrom(peer: ec2.IConnectable, description: string): void {
    this.securityGroup?.connections.allowFrom(peer, ec2.Port.tcp(MSK_SCRAM_PORT), description);
  }
}

/** The broker settings the project relies on (docs/DEPLOY.md, "Kafka"). */
export function serverProperties(): string {
  return [
    // Topics come from `stackctl prepare` with one partition per pair; a typo must fail.
    'auto.create.topics.enable=false',
    // `stackctl prepare` creates topics with the broker's default replication factor.
    `default.replication.factor=${REPLICATION_FACTOR}`,
    // With acks=all (infra/src/kafka.rs) an acknowledged record is on two AZs at least.
    `min.insync.replicas=${MIN_INSYNC_REPLICAS}`,
    // A replica that missed acknowledged records never becomes leader: no silent loss.
    'unclean.leader.election.enable=false',
    `offsets.topic.replication.factor=${REPLICATION_FACTOR}`,
    `transaction.state.log.replication.factor=${REPLICATION_FACTOR}`,
    `transaction.state.log.min.isr=${MIN_INSYNC_REPLICAS}`,
  ].join('\n');
}

function scramClient(bootstrapBrokers: string, secret: secretsmanager.ISecret): KafkaClientSettings {
  return {
    bootstrapBrokers,
    environment: {
      KAFKA_CFG_SECURITY_PROTOCOL: 'SASL_SSL',
      KAFKA_CFG_SASL_MECHANISM: 'SCRAM-SHA-512',
    },
    secrets: {
      KAFKA_CFG_SASL_USERNAME: ecs.Secret.fromSecretsManager(secret, 'username'),
      KAFKA_CFG_SASL_PASSWORD: ecs.Secret.fromSecretsManager(secret, 'password'),
    },
  };
}

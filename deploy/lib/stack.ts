// The whole deployment in one stack: network → streaming (MSK) → database (Aurora) → the engine,
// account stage and gateway services → operator tasks and load generator → alarms. Each concern is its own construct; this file
// only wires them together and opens the security-group paths between them.
import { CfnOutput, Duration, RemovalPolicy, Stack, type StackProps } from 'aws-cdk-lib';
import * as ec2 from 'aws-cdk-lib/aws-ec2';
import * as ecr from 'aws-cdk-lib/aws-ecr';
import * as ecs from 'aws-cdk-lib/aws-ecs';
import * as logs from 'aws-cdk-lib/aws-logs';
import * as s3 from 'aws-cdk-lib/aws-s3';
import type { Construct } from 'constructs';
import { AccountsServices, TRANSFER_VARIABLES, TransferTasks } from './accounts';
import { Alarms } from './alarms';
import type { DeployConfig } from './config';
import { type AppContext, appLogs, prepareEnvironment } from './containers';
import { Database } from './database';
import { EngineServices } from './engine';
import { GatewayService } from './gateway';
import { ApiKeyEncryption } from './keys';
import { LoadtestTask } from './loadtest';
import { MetricsShipping } from './metrics';
import { suppressFindings } from './nag';
import { Network } from './network';
import type { Pair } from './pairs';
import { Streaming } from './streaming';

export interface TradingStackProps extends StackProps {
  readonly config: DeployConfig;
  readonly pairs: readonly Pair[];
}

export class TradingStack extends Stack {
  readonly network: Network;
  readonly streaming: Streaming;
  readonly database: Database;
  readonly gateway: GatewayService;
  readonly engines: EngineServices;
  readonly accounts: AccountsServices;
  readonly transfers: TransferTasks;
  readonly apiKeys: ApiKeyEncryption;
  readonly loadtest?: LoadtestTask;
  readonly alarms: Alarms;

  constructor(scope: Construct, id: string, props: TradingStackProps) {
    super(scope, id, props);
    const { config } = props;
    const logRetention = retentionDays(config.observability.logRetentionDays);

    this.network = new Network(this, 'Network', { config: config.network, logRetention });
    const { vpc } = this.network;
    this.streaming = new Streaming(this, 'Streaming', {
      config: config.kafka,
      stage: config.stage,
      vpc,
      brokerSubnets: this.network.dataSubnets,
      logRetention,
    });
    this.database = new Database(this, 'Database', {
      config: config.database,
      vpc,
      subnets: this.network.dataSubnets,
      availabilityZones: vpc.availabilityZones,
      logRetention,
    });

    const cluster = new ecs.Cluster(this, 'Cluster', {
      vpc,
      containerInsightsV2: ecs.ContainerInsights.ENABLED,
    });
    const app: AppContext = {
      stage: config.stage,
      vpc,
      cluster,
      image: ecs.ContainerImage.fromEcrRepository(
        ecr.Repository.fromRepositoryName(this, 'ImageRepository', config.imageRepository),
        config.imageTag,
      ),
      runtimePlatform: {
        operatingSystemFamily: ecs.OperatingSystemFamily.LINUX,
        cpuArchitecture:
          config.cpuArchitecture === 'ARM64' ? ecs.CpuArchitecture.ARM64 : ecs.CpuArchitecture.X86_64,
      },
      logGroup: new logs.LogGroup(this, 'AppLogs', { retention: logRetention }),
      kafka: this.streaming.client,
      databaseUrl: this.database.url,
      databaseSecrets: this.database.secrets,
      accountShards: config.accounts.shards,
    };
    const metrics = new MetricsShipping(this, 'Metrics', {
      stage: config.stage,
      adotImage: config.observability.adotImage,
      logRetention,
    });
    // ALB access logs and S3 server access logs (ALB logs need S3-managed encryption).
    const accessLogs = new s3.Bucket(this, 'AccessLogs', {
      encryption: s3.BucketEncryption.S3_MANAGED,
      enforceSSL: true,
      blockPublicAccess: s3.BlockPublicAccess.BLOCK_ALL,
      objectOwnership: s3.ObjectOwnership.BUCKET_OWNER_PREFERRED,
      lifecycleRules: [{ expiration: Duration.days(90) }],
      removalPolicy: RemovalPolicy.RETAIN,
    });

    this.engines = new EngineServices(this, 'Engine', {
      app,
      config: config.engine,
      pairs: props.pairs,
      subnets: this.network.appSubnets,
      metrics,
    });
    this.accounts = new AccountsServices(this, 'Accounts', {
      app,
      config: config.accounts,
      subnets: this.network.appSubnets,
      metrics,
      after: this.engines.services.at(-1),
    });
    this.transfers = new TransferTasks(this, 'AccountsTransfer', { app });
    this.apiKeys = new ApiKeyEncryption(this, 'ApiKeys', { app });
    this.gateway = new GatewayService(this, 'Gateway', {
      app,
      config: config.gateway,
      alb: config.alb,
      certificateArn: config.certificateArn,
      albSubnets: this.network.albSubnets,
      gatewaySubnets: this.network.gatewaySubnets,
      idBlock: this.network.gatewayIdBlock,
      accessLogs,
      metrics,
      benchmarkSubnets: config.loadtest.enabled ? this.network.appSubnets : undefined,
      keySecrets: this.apiKeys.secrets,
    });
    const prepare = this.prepareTask(app);

    const clients: [ec2.IConnectable, string][] = [
      [this.engines.securityGroup, 'engine'],
      [this.accounts.securityGroup, 'account stage'],
      [this.gateway.service, 'gateway'],
      [prepare.securityGroup, 'stackctl'],
    ];
    this.database.allowClientsFrom(this.apiKeys.securityGroup, 'gateway keys to PostgreSQL');
    for (const [peer, name] of clients) {
      this.streaming.allowClientsFrom(peer, `${name} to Kafka`);
      this.database.allowClientsFrom(peer, `${name} to PostgreSQL`);
    }
    // A transfer is a line in its account's shard: Kafka only.
    this.streaming.allowClientsFrom(this.transfers.securityGroup, 'account transfers to Kafka');
    if (config.loadtest.enabled) {
      const bench = this.gateway.benchmarkLoadBalancer;
      if (bench === undefined) throw new Error('the benchmark ALB is missing');
      this.loadtest = new LoadtestTask(this, 'Loadtest', {
        app,
        config: config.loadtest,
        gatewayUrl: `ws://${bench.loadBalancerDnsName}/ws`,
        accessLogs,
      });
      bench.connections.allowFrom(this.loadtest.securityGroup, ec2.Port.tcp(80), 'load generators');
      // `gateway provision` writes the generator's accounts, and deposits into them on Kafka.
      this.database.allowClientsFrom(this.loadtest.securityGroup, 'load generator accounts');
      this.streaming.allowClientsFrom(this.loadtest.securityGroup, 'load generator deposits');
    }
    this.alarms = new Alarms(this, 'Alarms', {
      config: config.observability,
      metrics,
      gatewayTargets: this.gateway.targetGroup,
      database: this.database.cluster,
    });
    this.outputs(cluster, prepare);
    suppressFindings(this);
  }

  /** `stackctl` on its own, for an operator (status, or prepare ahead of a deploy). */
  private prepareTask(app: AppContext): { task: ecs.FargateTaskDefinition; securityGroup: ec2.SecurityGroup } {
    const task = new ecs.FargateTaskDefinition(this, 'StackctlTask', {
      cpu: 256,
      memoryLimitMiB: 512,
      runtimePlatform: app.runtimePlatform,
    });
    task.addContainer('stackctl', {
      image: app.image,
      command: ['bash', '-c', 'stackctl wait --timeout-secs 120 && exec stackctl prepare'],
      environment: prepareEnvironment(app),
      secrets: { ...app.kafka.secrets, ...app.databaseSecrets },
      logging: appLogs(app, 'stackctl'),
      readonlyRootFilesystem: true,
    });
    const securityGroup = new ec2.SecurityGroup(this, 'StackctlSg', { vpc: app.vpc, description: 'stackctl one-off tasks' });
    return { task, securityGroup };
  }

  private outputs(cluster: ecs.Cluster, prepare: { task: ecs.FargateTaskDefinition; securityGroup: ec2.SecurityGroup }): void {
    const subnets = this.network.vpc.selectSubnets(this.network.appSubnets).subnetIds.join(',');
    const network = (sg: string): string =>
      `awsvpcConfiguration={subnets=[${subnets}],securityGroups=[${sg}],assignPublicIp=DISABLED}`;
    new CfnOutput(this, 'Endpoint', {
      description: 'Point the DNS name of the certificate at this ALB; clients use wss://<name>/ws',
      value: this.gateway.loadBalancer.loadBalancerDnsName,
    });
    new CfnOutput(this, 'StackctlRunTask', {
      description: 'Runs `stackctl prepare` once by hand (every service task also runs it at start)',
      value:
        `aws ecs run-task --cluster ${cluster.clusterName} --launch-type FARGATE ` +
        `--task-definition ${prepare.task.taskDefinitionArn} ` +
        `--network-configuration '${network(prepare.securityGroup.securityGroupId)}'`,
    });
    for (const [direction, task] of Object.entries(this.transfers.tasks)) {
      const overrides = TRANSFER_VARIABLES.map((name) => `{"name":"${name}","value":"${name.slice('TRANSFER_'.length)}"}`);
      new CfnOutput(this, direction === 'deposit' ? 'AccountsDepositRunTask' : 'AccountsWithdrawRunTask', {
        description: `One ${direction} (accounts ${direction}); TRANSFER_ID unique per transfer, the same when retrying it`,
        value:
          `aws ecs run-task --cluster ${cluster.clusterName} --launch-type FARGATE ` +
          `--task-definition ${task.taskDefinitionArn} ` +
          `--network-configuration '${network(this.transfers.securityGroup.securityGroupId)}' ` +
          `--overrides '{"containerOverrides":[{"name":"accounts","environment":[${overrides.join(',')}]}]}'`,
      });
    }
    new CfnOutput(this, 'ApiKeysEncryptExistingRunTask', {
      description:
        'Seals HMAC API secrets still in clear, re-seals those under a previous key (docs/DEPLOY.md, "API keys")',
      value:
        `aws ecs run-task --cluster ${cluster.clusterName} --launch-type FARGATE ` +
        `--task-definition ${this.apiKeys.encryptExistingTask.taskDefinitionArn} ` +
        `--network-configuration '${network(this.apiKeys.securityGroup.securityGroupId)}'`,
    });
    if (this.loadtest !== undefined) {
      new CfnOutput(this, 'LoadtestRunTask', {
        description: 'N load generators (N <= 10 per call); set the rate per task and a run id',
        value:
          `aws ecs run-task --cluster ${cluster.clusterName} --launch-type FARGATE --count N ` +
          `--task-definition ${this.loadtest.taskDefinition.taskDefinitionArn} ` +
          `--network-configuration '${network(this.loadtest.securityGroup.securityGroupId)}' ` +
          `--overrides '{"containerOverrides":[{"name":"loadtest","environment":[` +
          `{"name":"LOADTEST_RATE_PER_MIN","value":"RATE_PER_TASK"}]},{"name":"upload","environment":[` +
          `{"name":"LOADTEST_RUN_ID","value":"RUN_ID"}]}]}'`,
      });
      new CfnOutput(this, 'LoadtestReports', { value: `s3://${this.loadtest.reports.bucketName}/` });
    }
    new CfnOutput(this, 'AlarmTopic', { value: this.alarms.topic.topicArn });
  }
}

function retentionDays(days: number): logs.RetentionDays {
  const known = Object.values(logs.RetentionDays).filter((v): v is number => typeof v === 'number');
  if (!known.includes(days)) {
    throw new Error(`observability.logRetentionDays: one of ${known.join(', ')}; got ${days}`);
  }
  return days as logs.RetentionDays;
}

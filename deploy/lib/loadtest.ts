// Load benchmarks inside the VPC: a task definition the operator runs as N tasks in parallel
// (`aws ecs run-task --count N`) for rates one generator cannot offer. Each task provisions its
// own accounts through the operator path (`gateway provision`), funds them through the account
// stage (`--fund`: one deposit per account and asset on `accounts`), drives the gateways through
// the internal benchmark ALB (the generator speaks ws://), and an uploader copies its report to
// S3 under the run's id; `loadtest merge REPORT.json...` then adds the N reports into one.
import { Duration, RemovalPolicy } from 'aws-cdk-lib';
import * as ec2 from 'aws-cdk-lib/aws-ec2';
import * as ecs from 'aws-cdk-lib/aws-ecs';
import * as s3 from 'aws-cdk-lib/aws-s3';
import { Construct } from 'constructs';
import type { LoadtestConfig } from './config';
import { ACCOUNTS_TOPIC, type AppContext, appLogs, kafkaEnvironment } from './containers';

const REPORTS = '/reports';

/**
 * What each generator account gets deposited (scripts/run's default): far above what one
 * connection's few small live orders hold or move in minutes, so no place is refused for funds.
 */
export const LOADTEST_FUND = 'EUR=1000000,USD=1000000,GBP=1000000,BTC=20,ETH=400,SOL=10000,XRP=1000000';

export interface LoadtestTaskProps {
  readonly app: AppContext;
  readonly config: LoadtestConfig;
  /** ws:// URL of the gateways as seen from inside the VPC. */
  readonly gatewayUrl: string;
  readonly accessLogs: s3.IBucket;
}

export class LoadtestTask extends Construct {
  readonly taskDefinition: ecs.FargateTaskDefinition;
  readonly securityGroup: ec2.SecurityGroup;
  readonly reports: s3.Bucket;

  constructor(scope: Construct, id: string, props: LoadtestTaskProps) {
    super(scope, id);
    const { app } = props;
    this.securityGroup = new ec2.SecurityGroup(this, 'Sg', { vpc: app.vpc, description: 'load generator tasks' });
    this.reports = new s3.Bucket(this, 'Reports', {
      encryption: s3.BucketEncryption.S3_MANAGED,
      enforceSSL: true,
      blockPublicAccess: s3.BlockPublicAccess.BLOCK_ALL,
      serverAccessLogsBucket: props.accessLogs,
      serverAccessLogsPrefix: 'reports-bucket/',
      lifecycleRules: [{ expiration: Duration.days(90) }],
      removalPolicy: RemovalPolicy.RETAIN,
    });

    const task = new ecs.FargateTaskDefinition(this, 'Task', {
      cpu: props.config.cpu,
      memoryLimitMiB: props.config.memoryMiB,
      runtimePlatform: app.runtimePlatform,
    });
    task.addVolume({ name: 'reports' });
    const mount: ecs.MountPoint = { sourceVolume: 'reports', containerPath: REPORTS, readOnly: false };

    // A fresh task volume belongs to root; the image's user (10001) needs to write into it.
    const init = task.addContainer('init', {
      image: app.image,
      essential: false,
      user: '0',
      command: ['bash', '-c', `chmod 1777 ${REPORTS}`],
      logging: appLogs(app, 'loadtest-init'),
    });
    init.addMountPoints(mount);

    const generator = task.addContainer('loadtest', {
      image: app.image,
      // The uploader runs after it whatever its exit status, so it must not end the task.
      essential: false,
      command: ['bash', '-c', loadtestScript()],
      environment: {
        LOADTEST_URL: props.gatewayUrl,
        DATABASE_URL: app.databaseUrl,
        // `gateway provision --fund` writes the deposits to the account stage's topic.
        ...kafkaEnvironment(app),
        GW_ACCOUNTS_TOPIC: ACCOUNTS_TOPIC,
        LOADTEST_FUND,
        LOADTEST_CONNECTIONS: '200',
        LOADTEST_RATE_PER_MIN: '1600000',
        LOADTEST_WARMUP_S: '20',
        LOADTEST_DURATION_S: '60',
        ...props.config.env,
      },
      secrets: { ...app.kafka.secrets, ...app.databaseSecrets },
      logging: appLogs(app, 'loadtest'),
      readonlyRootFilesystem: true,
    });
    generator.addMountPoints(mount);
    generator.addUlimits({ name: ecs.UlimitName.NOFILE, softLimit: 65_536, hardLimit: 65_536 });
    generator.addContainerDependencies({ container: init, condition: ecs.ContainerDependencyCondition.SUCCESS });

    const upload = task.addContainer('upload', {
      image: ecs.ContainerImage.fromRegistry(props.config.awsCliImage),
      essential: true,
      entryPoint: ['bash', '-c'],
      command: [
        // The accounts file holds API secrets: it stays on the task's disk.
        `aws s3 cp ${REPORTS} "s3://${this.reports.bucketName}/\${LOADTEST_RUN_ID:-unnamed}/" ` +
          `--recursive --exclude '*accounts.jsonl' --only-show-errors`,
      ],
      logging: appLogs(app, 'loadtest-upload'),
    });
    upload.addMountPoints({ ...mount, readOnly: true });
    upload.addContainerDependencies({
      container: generator,
      condition: ecs.ContainerDependencyCondition.COMPLETE,
    });
    this.reports.grantPut(task.taskRole);
    this.taskDefinition = task;
  }
}

/**
 * One generator: funded accounts for its connections (named after a random id, so N tasks never
 * collide), then the run; report.json and the charts land in /reports/<id>/. A deposit is a line
 * in its account's shard before any of that account's places (provision waits for Kafka's
 * acknowledgement), so the stage applies it first: no wait for the deposits is needed.
 */
export function loadtestScript(): string {
  return [
    'set -eu',
    'id=$(cut -c1-8 /proc/sys/kernel/random/uuid)',
    `out=${REPORTS}/$id`,
    'mkdir -p "$out"',
    // Ed25519 keys: this task never holds the key-encryption key HMAC secrets are sealed with.
    'gateway provision --accounts "$LOADTEST_CONNECTIONS" --name-prefix "lt-$id" --key-kind ed25519 ' +
      '--out "$out/accounts.jsonl" --fund "$LOADTEST_FUND"',
    'exec loadtest --accounts-file "$out/accounts.jsonl" --out-dir "$out"',
  ].join('\n');
}

// What every container running the project's image shares: the image, the Kafka and PostgreSQL
// settings, logs, the HTTP health check, and the `prepare` init container.
import { Duration, Size } from 'aws-cdk-lib';
import * as ec2 from 'aws-cdk-lib/aws-ec2';
import * as ecs from 'aws-cdk-lib/aws-ecs';
import * as logs from 'aws-cdk-lib/aws-logs';
import type { KafkaClientSettings } from './streaming';

/** What a service construct needs to run the project's image. */
export interface AppContext {
  readonly stage: string;
  readonly vpc: ec2.IVpc;
  readonly cluster: ecs.ICluster;
  readonly image: ecs.ContainerImage;
  readonly runtimePlatform: ecs.RuntimePlatform;
  readonly logGroup: logs.ILogGroup;
  readonly kafka: KafkaClientSettings;
  readonly databaseUrl: string;
  readonly databaseSecrets: Readonly<Record<string, ecs.Secret>>;
  /** ACCOUNT_SHARDS: the partitions `stackctl prepare` gives `accounts` and `account_events`. */
  readonly accountShards: number;
}

/** The binaries in the image (Dockerfile), each started by name. */
export type Binary = 'engine' | 'gateway' | 'accounts' | 'stackctl' | 'loadtest';

/**
 * The account stage's topics (protocol::accounts): the engine and the gateway name them to turn
 * the stage on; the stage itself uses the same names by default.
 */
export const ACCOUNTS_TOPIC = 'accounts';
export const ACCOUNT_EVENTS_TOPIC = 'account_events';

/** KAFKA_BROKERS and the client overrides (TLS, SCRAM) every Kafka client reads. */
export function kafkaEnvironment(app: AppContext): Record<string, string> {
  return { KAFKA_BROKERS: app.kafka.bootstrapBrokers, ...app.kafka.environment };
}

/** The same /healthz probe as docker-compose.yml: the image has bash but no curl. */
export function healthzCheck(port: number, startPeriod: Duration): ecs.HealthCheck {
  return httpCheck(port, '/healthz', startPeriod);
}

/** HTTP 200 from `GET path` on localhost, over bash's /dev/tcp. */
export function httpCheck(port: number, path: string, startPeriod: Duration): ecs.HealthCheck {
  return {
    command: [
      'CMD',
      'bash',
      '-c',
      `exec 3<>/dev/tcp/127.0.0.1/${port} && printf 'GET ${path} HTTP/1.0\\r\\n\\r\\n' >&3 && head -n1 <&3 | grep -q ' 200 '`,
    ],
    interval: Duration.seconds(10),
    timeout: Duration.seconds(5),
    retries: 3,
    startPeriod,
  };
}

/**
 * Logs to CloudWatch without ever blocking the process: a slow log API drops lines from a
 * bounded buffer instead of stalling a matching actor or the gateway's writes.
 */
export function appLogs(app: AppContext, streamPrefix: string): ecs.LogDriver {
  return ecs.LogDrivers.awsLogs({
    logGroup: app.logGroup,
    streamPrefix,
    mode: ecs.AwsLogDriverMode.NON_BLOCKING,
    maxBufferSize: Size.mebibytes(25),
  });
}

/** What `stackctl prepare` reads: brokers, database, and the account shard count. */
export function prepareEnvironment(app: AppContext): Record<string, string> {
  return { ...kafkaEnvironment(app), DATABASE_URL: app.databaseUrl, ACCOUNT_SHARDS: String(app.accountShards) };
}

/**
 * `stackctl prepare` before the service starts, as docker-compose.yml's init service does: it
 * waits for a real Kafka round trip and SELECT 1, creates or grows `orders` and `events` to one
 * partition per pair of the image's pairs file, creates `accounts` and `account_events` with
 * ACCOUNT_SHARDS partitions (and refuses to go on if they exist with another count), and applies
 * the migrations. It is idempotent and safe to run concurrently (tolerated topic races, sqlx's
 * advisory lock), so every task runs it once at start and a deploy that adds a pair needs no
 * separate step.
 */
export function addPrepareInit(app: AppContext, task: ecs.TaskDefinition): ecs.ContainerDefinition {
  return task.addContainer('prepare', {
    image: app.image,
    essential: false,
    command: ['bash', '-c', 'stackctl wait --timeout-secs 120 && exec stackctl prepare'],
    environment: prepareEnvironment(app),
    secrets: { ...app.kafka.secrets, ...app.databaseSecrets },
    logging: appLogs(app, 'prepare'),
    readonlyRootFilesystem: true,
  });
}

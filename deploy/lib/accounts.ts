// The account stage (`accounts run`, docs/ARCHITECTURE.md "Accounts and balances"): by default
// one ECS service per account shard (ACCOUNTS_SHARDS=N, one task), between the gateways' place
// and amend commands and the engines. As with the engine's pairs, a deploy stops a shard's task
// before starting its successor (minimum healthy 0%, maximum 100%): a shard never has two
// owners (the stage fences on PostgreSQL, so an overlap would be safe, but the second owner's
// work would be thrown away), and the services roll one after another, after the engines', so
// one shard pauses at a time (docs/DEPLOY.md, "Rolling deploys").
//
// Also the operators' transfer tasks (`accounts deposit` / `accounts withdraw`, run by hand like
// the load generator): they only write to the `accounts` topic, so they reach Kafka, not Aurora.
import { Duration } from 'aws-cdk-lib';
import * as ec2 from 'aws-cdk-lib/aws-ec2';
import * as ecs from 'aws-cdk-lib/aws-ecs';
import { Construct } from 'constructs';
import type { AccountsConfig, AccountsLayout } from './config';
import { type AppContext, addPrepareInit, appLogs, httpCheck, kafkaEnvironment } from './containers';
import { FARGATE_STOP_TIMEOUT_MAX_S } from './engine';
import type { MetricsShipping } from './metrics';

/** `accounts run`'s METRICS_ADDR port (its default, 9102, set explicitly). */
export const ACCOUNTS_METRICS_PORT = 9102;

/**
 * The stage's drain on SIGTERM (not configurable; accounts/src, checked by the tests): every
 * shard's actor is its own task, so shards drain side by side under one deadline
 * (`DRAIN_TIMEOUT`, 20 s, accounts/src/lib.rs). A shard finishes the batch it has read: it waits
 * for Kafka to acknowledge its forwards and answers (they never time out on their own:
 * infra/src/kafka.rs, `BatchProducer`), then commits to PostgreSQL. SIGKILL beyond it loses
 * nothing: the uncommitted batch is read again by the next owner and produces the same lines,
 * which the engine and the gateway drop as repeats.
 */
export const ACCOUNTS_DRAIN = { shardsS: 20 } as const;
const STOP_MARGIN_S = 25;

export function accountsDrainBoundS(): number {
  return ACCOUNTS_DRAIN.shardsS;
}

export function accountsStopTimeoutS(): number {
  return Math.min(FARGATE_STOP_TIMEOUT_MAX_S, accountsDrainBoundS() + STOP_MARGIN_S);
}

/** One accounts service: the shards its one task owns. */
export interface ShardGroup {
  readonly id: string;
  readonly shards: readonly number[];
}

export function shardGroups(shards: number, layout: AccountsLayout): ShardGroup[] {
  const all = Array.from({ length: shards }, (_, i) => i);
  switch (layout.kind) {
    case 'per-shard':
      return all.map((s) => ({ id: `Shard${s}`, shards: [s] }));
    case 'groups': {
      const owned = layout.groups.flat();
      const unknown = owned.filter((s) => !all.includes(s));
      const missing = all.filter((s) => !owned.includes(s));
      const twice = owned.filter((s, i) => owned.indexOf(s) !== i);
      if (layout.groups.some((g) => g.length === 0) || unknown.length + missing.length + twice.length > 0) {
        throw new Error(
          `accounts.layout.groups must name every shard 0..${shards - 1} exactly once, in non-empty ` +
            `groups (unknown: ${unknown.join(',') || '-'}; missing: ${missing.join(',') || '-'}; ` +
            `twice: ${twice.join(',') || '-'})`,
        );
      }
      return layout.groups.map((g) => ({ id: `Shards${g.join('x')}`, shards: [...g] }));
    }
  }
}

export interface AccountsServicesProps {
  readonly app: AppContext;
  readonly config: AccountsConfig;
  readonly subnets: ec2.SubnetSelection;
  readonly metrics: MetricsShipping;
  /** The first shard service starts rolling after this one (the last engine service). */
  readonly after?: ecs.FargateService;
}

export class AccountsServices extends Construct {
  readonly services: ecs.FargateService[] = [];
  readonly securityGroup: ec2.SecurityGroup;

  constructor(scope: Construct, id: string, props: AccountsServicesProps) {
    super(scope, id);
    this.securityGroup = new ec2.SecurityGroup(this, 'Sg', {
      vpc: props.app.vpc,
      description: 'account stage tasks (nothing connects to them)',
    });
    let previous = props.after;
    for (const group of shardGroups(props.config.shards, props.config.layout)) {
      const service = this.addService(props, group);
      // One shard pauses at a time during a deploy, and not while a pair does.
      if (previous !== undefined) service.node.addDependency(previous);
      previous = service;
      this.services.push(service);
    }
  }

  private addService(props: AccountsServicesProps, group: ShardGroup): ecs.FargateService {
    const { app } = props;
    const scope = new Construct(this, group.id);
    const task = new ecs.FargateTaskDefinition(scope, 'Task', {
      cpu: props.config.cpu,
      memoryLimitMiB: props.config.memoryMiB,
      runtimePlatform: app.runtimePlatform,
    });
    const prepare = addPrepareInit(app, task);
    const container = task.addContainer('accounts', {
      image: app.image,
      command: ['accounts', 'run'],
      environment: {
        ...kafkaEnvironment(app),
        DATABASE_URL: app.databaseUrl,
        ...props.config.env,
        ACCOUNTS_SHARDS: group.shards.join(','),
        METRICS_ADDR: `0.0.0.0:${ACCOUNTS_METRICS_PORT}`,
      },
      secrets: { ...app.kafka.secrets, ...app.databaseSecrets },
      // /healthz: 200 once the stage has its topic, database and producer and runs its shards,
      // 503 while it starts or drains. It says nothing about each shard: a shard restarting in
      // a loop is the restarts alarm's business.
      healthCheck: httpCheck(ACCOUNTS_METRICS_PORT, '/healthz', Duration.seconds(60)),
      stopTimeout: Duration.seconds(accountsStopTimeoutS()),
      logging: appLogs(app, 'accounts'),
      readonlyRootFilesystem: true,
    });
    container.addContainerDependencies({ container: prepare, condition: ecs.ContainerDependencyCondition.SUCCESS });
    props.metrics.addSidecar(task, 'accounts', ACCOUNTS_METRICS_PORT, appLogs(app, 'accounts-metrics'));
    return new ecs.FargateService(scope, 'Service', {
      cluster: app.cluster,
      taskDefinition: task,
      desiredCount: 1,
      vpcSubnets: props.subnets,
      securityGroups: [this.securityGroup],
      // Stop the shard's owner before starting the next one.
      minHealthyPercent: 0,
      maxHealthyPercent: 100,
      circuitBreaker: { enable: true, rollback: true },
      propagateTags: ecs.PropagatedTagSource.SERVICE,
    });
  }
}

export type TransferDirection = 'deposit' | 'withdraw';

export interface TransferTasksProps {
  readonly app: AppContext;
}

/**
 * `accounts deposit` and `accounts withdraw` as task definitions an operator runs once per
 * transfer, with the account, asset, amount and a transfer id given as environment overrides.
 * The transfer id is required here (the binary would derive one from the clock): the stage
 * applies a transfer once per id, so a run-task repeated after an unclear outcome cannot move
 * the funds twice.
 */
export class TransferTasks extends Construct {
  readonly tasks: Record<TransferDirection, ecs.FargateTaskDefinition>;
  readonly securityGroup: ec2.SecurityGroup;

  constructor(scope: Construct, id: string, props: TransferTasksProps) {
    super(scope, id);
    const { app } = props;
    this.securityGroup = new ec2.SecurityGroup(this, 'Sg', {
      vpc: app.vpc,
      description: 'account transfer one-off tasks (Kafka only)',
    });
    const task = (direction: TransferDirection, name: string): ecs.FargateTaskDefinition => {
      const def = new ecs.FargateTaskDefinition(this, name, {
        cpu: 256,
        memoryLimitMiB: 512,
        runtimePlatform: app.runtimePlatform,
      });
      def.addContainer('accounts', {
        image: app.image,
        command: ['bash', '-c', transferScript(direction)],
        environment: kafkaEnvironment(app),
        secrets: { ...app.kafka.secrets },
        logging: appLogs(app, `accounts-${direction}`),
        readonlyRootFilesystem: true,
      });
      return def;
    };
    this.tasks = { deposit: task('deposit', 'Deposit'), withdraw: task('withdraw', 'Withdraw') };
  }
}

/** The names of the run-task overrides a transfer takes. */
export const TRANSFER_VARIABLES = ['TRANSFER_ACCOUNT', 'TRANSFER_ASSET', 'TRANSFER_AMOUNT', 'TRANSFER_ID'] as const;

export function transferScript(direction: TransferDirection): string {
  const given = (name: string, what: string): string => `"\${${name}:?${name} is required: ${what}}"`;
  return [
    'set -eu',
    `exec accounts ${direction} --account ${given('TRANSFER_ACCOUNT', 'the account id')} ` +
      `--asset ${given('TRANSFER_ASSET', 'an asset symbol such as EUR')} ` +
      `--amount ${given('TRANSFER_AMOUNT', 'a positive decimal amount')} ` +
      `--transfer-id ${given('TRANSFER_ID', 'a number unique per transfer, reused when retrying it')}`,
  ].join('\n');
}

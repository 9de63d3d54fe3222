// Engine services: by default one ECS service per traded pair (static mode, ENGINE_PAIRS=SYMBOL,
// one task), so each pair lives in its own task as in the talk. A deploy stops a pair's task
// before starting its successor (minimum healthy 0%, maximum 100%): a pair never has two owners,
// and the services roll one after another so only one pair pauses at a time (docs/DEPLOY.md,
// "Rolling deploys").
import { Duration } from 'aws-cdk-lib';
import * as ec2 from 'aws-cdk-lib/aws-ec2';
import * as ecs from 'aws-cdk-lib/aws-ecs';
import { Construct } from 'constructs';
import type { EngineConfig, EngineLayout } from './config';
import { ACCOUNTS_TOPIC, type AppContext, addPrepareInit, appLogs, healthzCheck, kafkaEnvironment } from './containers';
import type { MetricsShipping } from './metrics';
import type { Pair } from './pairs';

export const ENGINE_METRICS_PORT = 9100;

/**
 * The engine's drain on SIGTERM (not configurable today; engine/src, checked by the tests):
 * every pair's actor finishes its batch and commits, all side by side under one `drain_timeout`
 * deadline (engine/src/engine.rs `drain`); then the events producer flushes for at most 10 s and
 * the consumer closes within CONSUMER_CLOSE_WAIT (engine/src/lib.rs). The bound does not grow
 * with the pairs a task owns. SIGKILL beyond it loses nothing: what a pair had not committed is
 * applied again by the next owner.
 */
export const ENGINE_DRAIN = { pairsS: 20, producerFlushS: 10, consumerCloseS: 5 } as const;
/** Fargate sends SIGKILL `stopTimeout` after SIGTERM, at most 120 s. */
export const FARGATE_STOP_TIMEOUT_MAX_S = 120;
const STOP_MARGIN_S = 25;

/** Worst-case seconds from SIGTERM to exit for an engine task, whatever pairs it owns. */
export function engineDrainBoundS(): number {
  return ENGINE_DRAIN.pairsS + ENGINE_DRAIN.producerFlushS + ENGINE_DRAIN.consumerCloseS;
}

export function engineStopTimeoutS(): number {
  return Math.min(FARGATE_STOP_TIMEOUT_MAX_S, engineDrainBoundS() + STOP_MARGIN_S);
}

/** One engine service: the pairs its task owns (all of them, shared, in consumer-group mode). */
export interface EngineGroup {
  readonly id: string;
  readonly pairs: readonly string[];
  readonly static: boolean;
  readonly tasks: number;
}

export function engineGroups(pairs: readonly Pair[], layout: EngineLayout): EngineGroup[] {
  const symbols = pairs.map((p) => p.symbol);
  switch (layout.kind) {
    case 'per-pair':
      return symbols.map((s) => ({ id: s, pairs: [s], static: true, tasks: 1 }));
    case 'groups': {
      const owned = layout.groups.flat();
      const unknown = owned.filter((s) => !symbols.includes(s));
      const missing = symbols.filter((s) => !owned.includes(s));
      const twice = owned.filter((s, i) => owned.indexOf(s) !== i);
      if (unknown.length + missing.length + twice.length > 0) {
        throw new Error(
          `engine.layout.groups must name every pair of config/pairs.toml exactly once ` +
            `(unknown: ${unknown.join(',') || '-'}; missing: ${missing.join(',') || '-'}; ` +
            `twice: ${twice.join(',') || '-'})`,
        );
      }
      return layout.groups.map((g) => ({ id: g.join('+'), pairs: [...g], static: true, tasks: 1 }));
    }
    case 'consumer-group':
      return [{ id: 'Group', pairs: symbols, static: false, tasks: layout.tasks }];
  }
}

export interface EngineServicesProps {
  readonly app: AppContext;
  readonly config: EngineConfig;
  readonly pairs: readonly Pair[];
  readonly subnets: ec2.SubnetSelection;
  readonly metrics: MetricsShipping;
}

export class EngineServices extends Construct {
  readonly services: ecs.FargateService[] = [];
  readonly securityGroup: ec2.SecurityGroup;

  constructor(scope: Construct, id: string, props: EngineServicesProps) {
    super(scope, id);
    this.securityGroup = new ec2.SecurityGroup(this, 'Sg', {
      vpc: props.app.vpc,
      description: 'engine tasks (nothing connects to them)',
    });
    let previous: ecs.FargateService | undefined;
    for (const group of engineGroups(props.pairs, props.config.layout)) {
      const service = this.addService(props, group);
      // CloudFormation updates the services one after another, so a deploy pauses one pair at a
      // time instead of every pair at once.
      if (previous !== undefined) service.node.addDependency(previous);
      previous = service;
      this.services.push(service);
    }
  }

  private addService(props: EngineServicesProps, group: EngineGroup): ecs.FargateService {
    const { app } = props;
    const scope = new Construct(this, group.id);
    const task = new ecs.FargateTaskDefinition(scope, 'Task', {
      cpu: props.config.cpu,
      memoryLimitMiB: props.config.memoryMiB,
      runtimePlatform: app.runtimePlatform,
    });
    const prepare = addPrepareInit(app, task);
    const ownership: Record<string, string> = group.static
      ? { ENGINE_PAIRS: group.pairs.join(',') }
      : { ENGINE_GROUP_ID: `${app.stage}-engine` };
    const container = task.addContainer('engine', {
      image: app.image,
      command: ['engine'],
      environment: {
        ...kafkaEnvironment(app),
        DATABASE_URL: app.databaseUrl,
        // Settlements (fills, dones, amends, rejections) to the account shards.
        ENGINE_ACCOUNTS_TOPIC: ACCOUNTS_TOPIC,
        ...ownership,
        ...props.config.env,
      },
      secrets: { ...app.kafka.secrets, ...app.databaseSecrets },
      healthCheck: healthzCheck(ENGINE_METRICS_PORT, Duration.seconds(60)),
      stopTimeout: Duration.seconds(engineStopTimeoutS()),
      logging: appLogs(app, 'engine'),
      readonlyRootFilesystem: true,
    });
    container.addContainerDependencies({ container: prepare, condition: ecs.ContainerDependencyCondition.SUCCESS });
    props.metrics.addSidecar(task, 'engine', ENGINE_METRICS_PORT, appLogs(app, 'engine-metrics'));
    return new ecs.FargateService(scope, 'Service', {
      cluster: app.cluster,
      taskDefinition: task,
      desiredCount: group.tasks,
      vpcSubnets: props.subnets,
      securityGroups: [this.securityGroup],
      // Static mode: stop the pair's owner before starting the next one. Consumer-group mode:
      // the group hands each pair to one member at a time, so tasks may overlap.
      minHealthyPercent: group.static ? 0 : 100,
      maxHealthyPercent: group.static ? 100 : 200,
      circuitBreaker: { enable: true, rollback: true },
      propagateTags: ecs.PropagatedTagSource.SERVICE,
    });
  }
}

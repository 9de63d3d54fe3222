// Alarms: the few signals that mean clients are being hurt or soon will be (docs/METRICS.md
// names each metric). They notify an SNS topic; subscribe a pager or e-mail to it.
import { Duration } from 'aws-cdk-lib';
import * as cloudwatch from 'aws-cdk-lib/aws-cloudwatch';
import * as actions from 'aws-cdk-lib/aws-cloudwatch-actions';
import * as elbv2 from 'aws-cdk-lib/aws-elasticloadbalancingv2';
import * as iam from 'aws-cdk-lib/aws-iam';
import * as kms from 'aws-cdk-lib/aws-kms';
import * as rds from 'aws-cdk-lib/aws-rds';
import * as sns from 'aws-cdk-lib/aws-sns';
import * as subscriptions from 'aws-cdk-lib/aws-sns-subscriptions';
import { Construct } from 'constructs';
import type { ObservabilityConfig } from './config';
import type { MetricsShipping } from './metrics';

export interface AlarmsProps {
  readonly config: ObservabilityConfig;
  readonly metrics: MetricsShipping;
  readonly gatewayTargets: elbv2.ApplicationTargetGroup;
  readonly database: rds.DatabaseCluster;
}

export class Alarms extends Construct {
  readonly topic: sns.Topic;
  readonly alarms: cloudwatch.Alarm[] = [];

  constructor(scope: Construct, id: string, props: AlarmsProps) {
    super(scope, id);
    const { config, metrics } = props;
    const key = new kms.Key(this, 'TopicKey', { description: 'trading alarms topic', enableKeyRotation: true });
    // CloudWatch publishes to an encrypted topic only if the key lets it.
    key.grant(new iam.ServicePrincipal('cloudwatch.amazonaws.com'), 'kms:Decrypt', 'kms:GenerateDataKey*');
    this.topic = new sns.Topic(this, 'Topic', { masterKey: key, enforceSSL: true });
    if (config.alarmEmail !== undefined) {
      this.topic.addSubscription(new subscriptions.EmailSubscription(config.alarmEmail));
    }
    const minute = Duration.minutes(1);

    const shed = metrics.metric('gateway', 'gateway_shed_total', 'Sum', minute);
    const produced = metrics.metric('gateway', 'gateway_commands_produced_total', 'Sum', minute);
    this.add('ShedRate', {
      alarmDescription:
        'Gateways refuse more than the allowed share of trading commands (overloaded / rate_limited): ' +
        'add gateways or engine capacity, or find the client flooding.',
      metric: new cloudwatch.MathExpression({
        expression: '100 * FILL(shed, 0) / (FILL(shed, 0) + FILL(produced, 0) + 1)',
        usingMetrics: { shed, produced },
        period: minute,
        label: 'shed, % of trading commands',
      }),
      threshold: config.shedPercentMax,
      evaluationPeriods: 5,
      datapointsToAlarm: 3,
    });
    this.add('ConsumerLag', {
      alarmDescription:
        'A pair is behind its orders partition (engine_consumer_lag_records, the worst pair): ' +
        'clients wait for verdicts. Look at engine_paused and the engine logs of that pair.',
      metric: metrics.metric('engine', 'engine_consumer_lag_records', 'Maximum', minute),
      threshold: config.consumerLagRecordsMax,
      evaluationPeriods: 3,
    });
    this.add('PairPaused', {
      alarmDescription:
        'A pair has not consumed for 3 minutes (engine_paused = 1): PostgreSQL failing or the actor ' +
        'restarting in a loop. Its clients get no verdicts.',
      metric: metrics.metric('engine', 'engine_paused', 'Maximum', minute),
      threshold: 1,
      comparisonOperator: cloudwatch.ComparisonOperator.GREATER_THAN_OR_EQUAL_TO_THRESHOLD,
      evaluationPeriods: 3,
    });
    this.add('ActorRestarts', {
      alarmDescription:
        'An engine actor restarted (PostgreSQL error, fenced by a second owner, publish failure, panic): ' +
        'engine_actor_restarts_total. Read the ERROR/WARN lines of the engine logs.',
      metric: metrics.metric('engine', 'engine_actor_restarts_total', 'Sum', Duration.minutes(5)),
      threshold: 1,
      comparisonOperator: cloudwatch.ComparisonOperator.GREATER_THAN_OR_EQUAL_TO_THRESHOLD,
      evaluationPeriods: 1,
    });
    this.add('AccountsInconsistent', {
      alarmDescription:
        'The account stage refused a settlement that contradicts its reservations ' +
        '(accounts_inconsistent_total, per shard): the engine and the ledger disagree about an order, ' +
        'and the balances of its accounts are wrong until someone finds out why. Read the ERROR lines ' +
        'of the accounts logs (they name the order and the pair).',
      metric: metrics.metric('accounts', 'accounts_inconsistent_total', 'Sum', minute),
      threshold: 1,
      comparisonOperator: cloudwatch.ComparisonOperator.GREATER_THAN_OR_EQUAL_TO_THRESHOLD,
      evaluationPeriods: 1,
    });
    this.add('AccountsActorRestarts', {
      alarmDescription:
        'An account shard actor restarted (PostgreSQL error, fenced by a second owner, publish failure, ' +
        'panic): accounts_actor_restarts_total. Places and amends of its accounts wait meanwhile. Read ' +
        'the WARN/ERROR lines of the accounts logs.',
      metric: metrics.metric('accounts', 'accounts_actor_restarts_total', 'Sum', Duration.minutes(5)),
      threshold: 1,
      comparisonOperator: cloudwatch.ComparisonOperator.GREATER_THAN_OR_EQUAL_TO_THRESHOLD,
      evaluationPeriods: 1,
    });
    this.add('Target5xx', {
      alarmDescription:
        'Gateways answer HTTP 5xx (503 at upgrade: max connections reached, or not ready).',
      metric: props.gatewayTargets.metrics.httpCodeTarget(elbv2.HttpCodeTarget.TARGET_5XX_COUNT, {
        period: minute,
        statistic: 'Sum',
      }),
      threshold: config.target5xxPerMinuteMax,
      evaluationPeriods: 3,
    });
    this.add('AuroraWriterCpu', {
      alarmDescription:
        'The Aurora writer is CPU-bound: commits slow down, engine_commit_lag grows, then pairs stop ' +
        'reading. Scale the writer up; past the largest size, the next cell (docs/DEPLOY.md).',
      metric: new cloudwatch.Metric({
        namespace: 'AWS/RDS',
        metricName: 'CPUUtilization',
        dimensionsMap: { DBClusterIdentifier: props.database.clusterIdentifier, Role: 'WRITER' },
        statistic: 'Average',
        period: Duration.minutes(5),
      }),
      threshold: config.auroraCpuPercentMax,
      evaluationPeriods: 2,
    });
  }

  private add(id: string, props: Omit<cloudwatch.AlarmProps, 'treatMissingData'>): void {
    const alarm = new cloudwatch.Alarm(this, id, {
      comparisonOperator: cloudwatch.ComparisonOperator.GREATER_THAN_THRESHOLD,
      ...props,
      // No data: no traffic, or no task; ECS restarts tasks, and traffic alarms need traffic.
      treatMissingData: cloudwatch.TreatMissingData.NOT_BREACHING,
    });
    alarm.addAlarmAction(new actions.SnsAction(this.topic));
    alarm.addOkAction(new actions.SnsAction(this.topic));
    this.alarms.push(alarm);
  }
}

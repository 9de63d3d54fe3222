// Metrics shipping: an AWS Distro for OpenTelemetry collector beside each service scrapes its
// Prometheus `/metrics` (docs/METRICS.md) over localhost and writes the series the alarms and
// the scaling policies use to CloudWatch, as embedded-metric-format logs (counters become
// per-interval deltas). Every series carries a `service` dimension; engine series also `pair`,
// the account stage's also `shard`.
import { Duration } from 'aws-cdk-lib';
import * as cloudwatch from 'aws-cdk-lib/aws-cloudwatch';
import * as ecs from 'aws-cdk-lib/aws-ecs';
import * as logs from 'aws-cdk-lib/aws-logs';
import { Construct } from 'constructs';

export type MetricsService = 'gateway' | 'engine' | 'accounts';

/** The series shipped, per service: the ones alarms and scaling read, and their context. */
export const SHIPPED_METRICS: Record<MetricsService, readonly string[]> = {
  gateway: [
    'gateway_connections',
    'gateway_requests_total',
    'gateway_shed_total',
    'gateway_commands_produced_total',
    'gateway_commands_in_flight',
  ],
  engine: [
    'engine_commands_total',
    'engine_consumer_lag_records',
    'engine_paused',
    'engine_actor_restarts_total',
  ],
  accounts: [
    'accounts_lines_total',
    'accounts_refused_total',
    'accounts_inconsistent_total',
    'accounts_actor_restarts_total',
  ],
};

/** The label below `service` that a service's series are also shipped per. */
const DETAIL_LABEL: Record<MetricsService, string | undefined> = {
  gateway: undefined,
  engine: 'pair',
  accounts: 'shard',
};

export interface MetricsShippingProps {
  readonly stage: string;
  readonly adotImage: string;
  readonly logRetention: logs.RetentionDays;
}

export class MetricsShipping extends Construct {
  readonly namespace: string;
  readonly logGroup: logs.LogGroup;
  private readonly image: ecs.ContainerImage;

  constructor(scope: Construct, id: string, props: MetricsShippingProps) {
    super(scope, id);
    this.namespace = `Trading/${props.stage}`;
    this.logGroup = new logs.LogGroup(this, 'EmfLogs', { retention: props.logRetention });
    this.image = ecs.ContainerImage.fromRegistry(props.adotImage);
  }

  /** Adds the collector to `task`, scraping `port` of the app container. */
  addSidecar(task: ecs.TaskDefinition, service: MetricsService, port: number, logging: ecs.LogDriver): void {
    task.addContainer('metrics', {
      image: this.image,
      // Losing metrics must never stop a matching actor or a gateway.
      essential: false,
      environment: { AOT_CONFIG_CONTENT: this.collectorConfig(service, port) },
      logging,
      memoryReservationMiB: 64,
    });
    this.logGroup.grantWrite(task.taskRole);
  }

  /** The collector's configuration (YAML is a superset of JSON). */
  collectorConfig(service: MetricsService, port: number): string {
    const detail = DETAIL_LABEL[service];
    const dimensions = detail === undefined ? [['service']] : [['service'], ['service', detail]];
    return JSON.stringify({
      receivers: {
        prometheus: {
          config: {
            scrape_configs: [
              {
                job_name: service,
                scrape_interval: '15s',
                static_configs: [{ targets: [`127.0.0.1:${port}`], labels: { service } }],
              },
            ],
          },
        },
      },
      processors: { batch: { timeout: '15s' } },
      exporters: {
        awsemf: {
          namespace: this.namespace,
          log_group_name: this.logGroup.logGroupName,
          log_stream_name: `${service}/{TaskId}`,
          dimension_rollup_option: 'NoDimensionRollup',
          metric_declarations: [
            // Anchored at the start only: a `$` would be read as a variable by the collector.
            { dimensions, metric_name_selectors: SHIPPED_METRICS[service].map((m) => `^${m}`) },
          ],
        },
      },
      service: {
        pipelines: { metrics: { receivers: ['prometheus'], processors: ['batch'], exporters: ['awsemf'] } },
      },
    });
  }

  /** A shipped series summed or maxed over every task of `service` (and every pair or shard). */
  metric(service: MetricsService, name: string, statistic: string, period: Duration): cloudwatch.Metric {
    if (!SHIPPED_METRICS[service].includes(name)) {
      throw new Error(`${name} is not shipped for ${service} (metrics.ts SHIPPED_METRICS)`);
    }
    return new cloudwatch.Metric({
      namespace: this.namespace,
      metricName: name,
      dimensionsMap: { service },
      statistic,
      period,
    });
  }
}

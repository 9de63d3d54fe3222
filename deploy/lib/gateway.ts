// Gateway service: the WebSocket API behind an internet-facing ALB (HTTPS only), spread over the
// three AZs, scaled on CPU and on open connections per task. The ALB's idle timeout stays well
// above the gateway's ping interval, so a ping never races the ALB closing an idle connection.
import { Duration } from 'aws-cdk-lib';
import * as ec2 from 'aws-cdk-lib/aws-ec2';
import * as ecs from 'aws-cdk-lib/aws-ecs';
import * as elbv2 from 'aws-cdk-lib/aws-elasticloadbalancingv2';
import * as s3 from 'aws-cdk-lib/aws-s3';
import { Construct } from 'constructs';
import type { AlbConfig, GatewayConfig } from './config';
import {
  ACCOUNT_EVENTS_TOPIC,
  ACCOUNTS_TOPIC,
  type AppContext,
  addPrepareInit,
  appLogs,
  healthzCheck,
  kafkaEnvironment,
} from './containers';
import type { MetricsShipping } from './metrics';
import type { GatewayIdBlock } from './network';

export const GATEWAY_PORT = 8080;
/** Rolling deploys start the new task before stopping the old one. */
const MAX_HEALTHY_PERCENT = 200;

export interface GatewayServiceProps {
  readonly app: AppContext;
  readonly config: GatewayConfig;
  readonly alb: AlbConfig;
  readonly certificateArn: string;
  readonly albSubnets: ec2.SubnetSelection;
  readonly gatewaySubnets: ec2.SubnetSelection;
  readonly idBlock: GatewayIdBlock;
  readonly accessLogs: s3.IBucket;
  readonly metrics: MetricsShipping;
  /** An internal plain-HTTP listener for load generators inside the VPC (they speak ws://). */
  readonly benchmarkSubnets?: ec2.SubnetSelection;
  /** GW_KEY_ENCRYPTION_KEY and its previous keys, from Secrets Manager (keys.ts). */
  readonly keySecrets: Readonly<Record<string, ecs.Secret>>;
}

export class GatewayService extends Construct {
  readonly service: ecs.FargateService;
  readonly loadBalancer: elbv2.ApplicationLoadBalancer;
  readonly targetGroup: elbv2.ApplicationTargetGroup;
  readonly benchmarkLoadBalancer?: elbv2.ApplicationLoadBalancer;

  constructor(scope: Construct, id: string, props: GatewayServiceProps) {
    super(scope, id);
    const { app, config } = props;
    if (config.maxTasks * (MAX_HEALTHY_PERCENT / 100) > props.idBlock.usableAddresses) {
      throw new Error(
        `gateway.maxTasks ${config.maxTasks}: a rolling deploy at ${MAX_HEALTHY_PERCENT}% needs ` +
          `more addresses than the gateway subnets hold (${props.idBlock.usableAddresses})`,
      );
    }
    const task = new ecs.FargateTaskDefinition(this, 'Task', {
      cpu: config.cpu,
      memoryLimitMiB: config.memoryMiB,
      runtimePlatform: app.runtimePlatform,
    });
    const prepare = addPrepareInit(app, task);
    const container = task.addContainer('gateway', {
      image: app.image,
      command: ['bash', '-c', gatewayStartScript(props.idBlock)],
      environment: {
        ...kafkaEnvironment(app),
        DATABASE_URL: app.databaseUrl,
        // The account stage on: place and amend reserve funds first, `balances` answers.
        GW_ACCOUNTS_TOPIC: ACCOUNTS_TOPIC,
        GW_ACCOUNT_EVENTS_TOPIC: ACCOUNT_EVENTS_TOPIC,
        ...config.env,
      },
      secrets: { ...app.kafka.secrets, ...app.databaseSecrets, ...props.keySecrets },
      portMappings: [{ containerPort: GATEWAY_PORT, protocol: ecs.Protocol.TCP }],
      healthCheck: healthzCheck(GATEWAY_PORT, Duration.seconds(60)),
      stopTimeout: Duration.seconds(config.stopTimeoutS),
      logging: appLogs(app, 'gateway'),
      readonlyRootFilesystem: true,
    });
    container.addUlimits({ name: ecs.UlimitName.NOFILE, softLimit: config.nofile, hardLimit: config.nofile });
    container.addContainerDependencies({ container: prepare, condition: ecs.ContainerDependencyCondition.SUCCESS });
    props.metrics.addSidecar(task, 'gateway', GATEWAY_PORT, appLogs(app, 'gateway-metrics'));

    this.service = new ecs.FargateService(this, 'Service', {
      cluster: app.cluster,
      taskDefinition: task,
      desiredCount: config.minTasks,
      vpcSubnets: props.gatewaySubnets,
      securityGroups: [new ec2.SecurityGroup(this, 'Sg', { vpc: app.vpc, description: 'gateway tasks' })],
      minHealthyPercent: 100,
      maxHealthyPercent: MAX_HEALTHY_PERCENT,
      circuitBreaker: { enable: true, rollback: true },
      // Start-up: prepare, then the book replica catches up with `events` before /readyz is 200.
      healthCheckGracePeriod: Duration.seconds(180),
      availabilityZoneRebalancing: ecs.AvailabilityZoneRebalancing.ENABLED,
      propagateTags: ecs.PropagatedTagSource.SERVICE,
    });

    this.loadBalancer = this.publicLoadBalancer(props);
    this.targetGroup = this.attach(this.loadBalancer, props, 443);
    if (props.benchmarkSubnets !== undefined) {
      this.benchmarkLoadBalancer = new elbv2.ApplicationLoadBalancer(this, 'BenchmarkAlb', {
        vpc: app.vpc,
        internetFacing: false,
        vpcSubnets: props.benchmarkSubnets,
        idleTimeout: Duration.seconds(props.alb.idleTimeoutS),
        dropInvalidHeaderFields: true,
        securityGroup: new ec2.SecurityGroup(this, 'BenchmarkAlbSg', {
          vpc: app.vpc,
          description: 'internal ALB for load generators in the VPC',
          allowAllOutbound: false,
        }),
      });
      this.benchmarkLoadBalancer.logAccessLogs(props.accessLogs, 'alb-benchmark');
      this.attach(this.benchmarkLoadBalancer, props, 80);
    }

    const scaling = this.service.autoScaleTaskCount({ minCapacity: config.minTasks, maxCapacity: config.maxTasks });
    // Scaling in closes the connections of the task it stops (clients reconnect), so it waits.
    scaling.scaleOnCpuUtilization('Cpu', {
      targetUtilizationPercent: config.cpuTargetPercent,
      scaleInCooldown: Duration.minutes(15),
      scaleOutCooldown: Duration.minutes(1),
    });
    scaling.scaleToTrackCustomMetric('Connections', {
      metric: props.metrics.metric('gateway', 'gateway_connections', 'Average', Duration.minutes(1)),
      targetValue: config.connectionsTargetPerTask,
      scaleInCooldown: Duration.minutes(15),
      scaleOutCooldown: Duration.minutes(1),
    });
  }

  private publicLoadBalancer(props: GatewayServiceProps): elbv2.ApplicationLoadBalancer {
    const sg = new ec2.SecurityGroup(this, 'AlbSg', {
      vpc: props.app.vpc,
      description: 'public ALB: HTTPS (WebSocket over TLS) only',
      allowAllOutbound: false,
    });
    for (const cidr of props.alb.allowedCidrs) {
      sg.addIngressRule(ec2.Peer.ipv4(cidr), ec2.Port.tcp(443), 'trading clients, wss://');
    }
    const alb = new elbv2.ApplicationLoadBalancer(this, 'Alb', {
      vpc: props.app.vpc,
      internetFacing: true,
      vpcSubnets: props.albSubnets,
      securityGroup: sg,
      idleTimeout: Duration.seconds(props.alb.idleTimeoutS),
      dropInvalidHeaderFields: true,
    });
    alb.logAccessLogs(props.accessLogs, 'alb');
    return alb;
  }

  /** A listener on `port` forwarding to the gateway tasks (HTTPS on 443, plain HTTP otherwise). */
  private attach(alb: elbv2.ApplicationLoadBalancer, props: GatewayServiceProps, port: number): elbv2.ApplicationTargetGroup {
    const https = port === 443;
    const listener = alb.addListener(`Listener${port}`, {
      port,
      protocol: https ? elbv2.ApplicationProtocol.HTTPS : elbv2.ApplicationProtocol.HTTP,
      certificates: https ? [elbv2.ListenerCertificate.fromArn(props.certificateArn)] : undefined,
      sslPolicy: https ? elbv2.SslPolicy.RECOMMENDED_TLS : undefined,
      // Ingress is the security group's business: the allowed CIDRs above, or the load generators.
      open: false,
    });
    return listener.addTargets(`Gateway${port}`, {
      port: GATEWAY_PORT,
      protocol: elbv2.ApplicationProtocol.HTTP,
      targets: [this.service.loadBalancerTarget({ containerName: 'gateway', containerPort: GATEWAY_PORT })],
      deregistrationDelay: Duration.seconds(props.alb.deregistrationDelayS),
      healthCheck: {
        path: '/readyz',
        healthyHttpCodes: '200',
        interval: Duration.seconds(10),
        timeout: Duration.seconds(5),
        healthyThresholdCount: 2,
        unhealthyThresholdCount: 3,
      },
    });
  }
}

/**
 * The gateway container's command: derive GW_GATEWAY_ID from the task's address (see
 * GatewayIdBlock in network.ts), then exec the gateway so it gets SIGTERM directly.
 */
export function gatewayStartScript(block: GatewayIdBlock): string {
  const last = block.firstOctet + 63;
  return [
    'set -eu',
    'for ip in $(hostname -I); do',
    `  case $ip in ${block.prefix}*)`,
    '    octet=${ip##*.}',
    `    if [ "$octet" -ge ${block.firstOctet} ] && [ "$octet" -le ${last} ]; then GW_GATEWAY_ID=$((octet - ${block.firstOctet})); fi ;;`,
    '  esac',
    'done',
    `[ -n "\${GW_GATEWAY_ID:-}" ] || { echo "no address in ${block.cidr}, the gateway subnets: $(hostname -I)" >&2; exit 1; }`,
    'export GW_GATEWAY_ID',
    'exec gateway',
  ].join('\n');
}

// The template checks linters cannot make, each paired with a way to break a template so that the
// check must fail: a check that accepts anything would be worse than none. Each `run` throws an
// AssertionError naming what is wrong; each `breakIt` changes a good template in one place.
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import * as path from 'node:path';
import { ACCOUNTS_METRICS_PORT, accountsDrainBoundS } from '../../lib/accounts';
import { engineDrainBoundS, FARGATE_STOP_TIMEOUT_MAX_S } from '../../lib/engine';
import { KEY_ENCRYPTION_KEY_ENV, KEY_ENCRYPTION_KEY_PREVIOUS_ENV } from '../../lib/keys';
import { gatewayIdBlock } from '../../lib/network';
import { MIN_INSYNC_REPLICAS, MSK_SCRAM_PORT, REPLICATION_FACTOR } from '../../lib/streaming';
import type { Pair } from '../../lib/pairs';
import { type BinaryName, type BinarySpec, effective } from './cli';
import { REPO_DIR, type TemplateJson } from './synth';
import {
  appContainers,
  attribute,
  type Container,
  containers,
  type Resource,
  resource,
  resources,
  serviceOf,
} from './template';

export interface CheckContext {
  readonly pairs: readonly Pair[];
  readonly specs: ReadonlyMap<BinaryName, BinarySpec>;
  readonly repository: string;
}

export interface Check {
  readonly name: string;
  run(json: TemplateJson, ctx: CheckContext): void;
  breakIt(json: TemplateJson): void;
  /** Further single breaks the check must catch, for the parts `breakIt` does not reach. */
  readonly moreBreaks?: readonly { readonly name: string; breakIt(json: TemplateJson): void }[];
}

type Props = Record<string, unknown>;

const engines = (json: TemplateJson, ctx: CheckContext): Container[] =>
  appContainers(json, ctx.repository).filter((c) => c.name === 'engine');
const gateway = (json: TemplateJson, ctx: CheckContext): Container => {
  const found = appContainers(json, ctx.repository).filter((c) => c.name === 'gateway');
  assert.equal(found.length, 1, 'one gateway container');
  return found[0]!;
};
const containerDef = (json: TemplateJson, name: string, nth = 0): Props => {
  const c = containers(json).filter((x) => x.name === name)[nth];
  assert.ok(c !== undefined, `no container ${name} #${nth}`);
  return c.raw;
};
const groupOf = (subnet: Props): string | undefined =>
  (subnet.Tags as { Key: string; Value: string }[] | undefined)?.find((t) => t.Key === 'aws-cdk:subnet-name')?.Value;
const ref = (value: unknown): string | undefined => {
  const v = value as { Ref?: string; 'Fn::GetAtt'?: [string, string] } | undefined;
  return v?.Ref ?? v?.['Fn::GetAtt']?.[0];
};
/** Subnets whose route tables send 0.0.0.0/0 somewhere (an internet or NAT gateway). */
const routedSubnets = (json: TemplateJson): Set<string> => {
  const tables = new Set(
    resources(json, 'AWS::EC2::Route')
      .filter((r) => r.props.DestinationCidrBlock === '0.0.0.0/0')
      .map((r) => ref(r.props.RouteTableId)!),
  );
  return new Set(
    resources(json, 'AWS::EC2::SubnetRouteTableAssociation')
      .filter((a) => tables.has(ref(a.props.RouteTableId)!))
      .map((a) => ref(a.props.SubnetId)!),
  );
};
/** `accounts run` containers: the account stage's shard owners. */
const stage = (json: TemplateJson, ctx: CheckContext): Container[] =>
  appContainers(json, ctx.repository).filter((c) => c.command[0] === 'accounts' && c.command[1] === 'run');
const stageDefs = (json: TemplateJson): Props[] =>
  containers(json)
    .filter((c) => c.command[0] === 'accounts' && c.command[1] === 'run')
    .map((c) => c.raw);
/** Containers running `stackctl prepare` (the init containers and the standalone task). */
const prepares = (json: TemplateJson, ctx: CheckContext): Container[] =>
  appContainers(json, ctx.repository).filter((c) => /\bstackctl prepare\b/.test(c.command.join(' ')));
/** Containers whose script starts `accounts deposit` or `accounts withdraw`. */
const transfers = (json: TemplateJson, ctx: CheckContext): Container[] =>
  appContainers(json, ctx.repository).filter((c) => /\baccounts (deposit|withdraw)\b/.test(c.command.join(' ')));
const envEntry = (c: Props, name: string): { Name: string; Value: unknown } | undefined =>
  (c.Environment as { Name: string; Value: unknown }[]).find((e) => e.Name === name);
const securityGroupsOf = (service: Resource): string[] =>
  (((service.props.NetworkConfiguration as Props).AwsvpcConfiguration as Props).SecurityGroups as unknown[]).map(
    (x) => ref(x)!,
  );
/** A rule's port: a number, or an Aurora cluster's `Endpoint.Port` (its `Port` property). */
const portOf = (json: TemplateJson, value: unknown): number => {
  const att = (value as { 'Fn::GetAtt'?: [string, string] } | undefined)?.['Fn::GetAtt'];
  if (att?.[1] === 'Endpoint.Port') return Number(resource(json, att[0]).props.Port);
  return Number(value);
};
/** Ingress rules into `group` from other security groups: [source, port]; ranges are refused. */
const ingressFrom = (json: TemplateJson, group: string): [string, number][] =>
  resources(json, 'AWS::EC2::SecurityGroupIngress')
    .filter((r) => ref(r.props.GroupId) === group && r.props.SourceSecurityGroupId !== undefined)
    .map((r) => {
      const [from, to] = [portOf(json, r.props.FromPort), portOf(json, r.props.ToPort)];
      assert.equal(from, to, `${r.id}: ports ${from} to ${to}`);
      return [ref(r.props.SourceSecurityGroupId)!, from];
    });
/** A topic name the Rust side defines (protocol/src/accounts.rs), as stackctl prepare creates it. */
const protocolTopic = (constant: string): string => {
  const source = readFileSync(path.join(REPO_DIR, 'protocol', 'src', 'accounts.rs'), 'utf8');
  const m = new RegExp(`pub const ${constant}: &str = "([^"]+)"`).exec(source);
  assert.ok(m !== null, `protocol/src/accounts.rs defines no ${constant}`);
  return m[1]!;
};
const drainMs = (json: TemplateJson, ctx: CheckContext): number =>
  Number(effective(ctx.specs, 'gateway', 'GW_DRAIN_TIMEOUT_MS', gateway(json, ctx).environment));

export const CHECKS: readonly Check[] = [
  {
    name: 'three distinct availability zones, each subnet group in all three',
    run(json) {
      const subnets = resources(json, 'AWS::EC2::Subnet');
      const azs = new Set(subnets.map((s) => s.props.AvailabilityZone as string));
      assert.equal(azs.size, 3, `subnets span ${[...azs].join(', ')}`);
      for (const az of azs) assert.ok(!/dummy/.test(az), `placeholder AZ ${az}: cdk.context.json lacks this account/region`);
      const groups = new Map<string, Set<string>>();
      for (const s of subnets) {
        const g = groupOf(s.props) ?? '?';
        groups.set(g, (groups.get(g) ?? new Set()).add(s.props.AvailabilityZone as string));
      }
      for (const [g, set] of groups) assert.equal(set.size, 3, `subnet group ${g} spans ${[...set].join(', ')}`);
    },
    breakIt(json) {
      const [a, b] = resources(json, 'AWS::EC2::Subnet');
      json.Resources[b!.id]!.Properties!.AvailabilityZone = a!.props.AvailabilityZone;
    },
  },
  {
    name: 'every pair of config/pairs.toml owned by exactly one engine service',
    run(json, ctx) {
      const owners = new Map<string, string[]>();
      const list = engines(json, ctx);
      assert.ok(list.length > 0, 'no engine container');
      for (const c of list) {
        const service = serviceOf(json, c.taskId);
        assert.ok(service !== undefined, `${c.taskId} runs in no service`);
        const pairs = c.environment.ENGINE_PAIRS;
        if (pairs === undefined) {
          assert.equal(list.length, 1, 'consumer-group mode is one service owning every pair');
          for (const p of ctx.pairs) owners.set(p.symbol, [service.id]);
          continue;
        }
        assert.equal(service.props.DesiredCount, 1, `${service.id}: a static owner runs one task`);
        for (const symbol of String(pairs).split(',')) owners.set(symbol, [...(owners.get(symbol) ?? []), service.id]);
      }
      for (const p of ctx.pairs) assert.equal(owners.get(p.symbol)?.length, 1, `${p.symbol} owners: ${owners.get(p.symbol)?.join(', ') ?? 'none'}`);
      const known = new Set(ctx.pairs.map((p) => p.symbol));
      for (const symbol of owners.keys()) assert.ok(known.has(symbol), `${symbol} is not in config/pairs.toml`);
    },
    breakIt(json) {
      const list = containers(json).filter((c) => c.name === 'engine');
      const env = (list[1]!.raw.Environment as { Name: string; Value: unknown }[]).find((e) => e.Name === 'ENGINE_PAIRS')!;
      env.Value = list[0]!.environment.ENGINE_PAIRS;
    },
  },
  {
    name: "stop timeouts within Fargate's 120 s and above each drain bound",
    run(json, ctx) {
      const list = engines(json, ctx);
      for (const c of list) {
        const bound = engineDrainBoundS();
        assert.ok(c.stopTimeout !== undefined, `${c.taskId}: no stopTimeout (Fargate's default 30 s)`);
        assert.ok(c.stopTimeout <= FARGATE_STOP_TIMEOUT_MAX_S, `${c.taskId}: stopTimeout ${c.stopTimeout} s`);
        assert.ok(c.stopTimeout > bound, `${c.taskId}: stopTimeout ${c.stopTimeout} s, drain bound ${bound} s`);
      }
      const gw = gateway(json, ctx);
      assert.ok(gw.stopTimeout !== undefined && gw.stopTimeout <= FARGATE_STOP_TIMEOUT_MAX_S);
      assert.ok(gw.stopTimeout * 1000 > drainMs(json, ctx), `gateway stopTimeout ${gw.stopTimeout} s vs GW_DRAIN_TIMEOUT_MS`);
    },
    breakIt(json) {
      containerDef(json, 'engine').StopTimeout = 30;
    },
  },
  {
    name: "ALB idle timeouts at least three of the gateway's ping intervals",
    run(json, ctx) {
      const pingMs = Number(effective(ctx.specs, 'gateway', 'GW_PING_INTERVAL_MS', gateway(json, ctx).environment));
      const albs = resources(json, 'AWS::ElasticLoadBalancingV2::LoadBalancer');
      assert.ok(albs.length > 0);
      for (const alb of albs) {
        const idleS = Number(attribute(alb, 'idle_timeout.timeout_seconds') ?? 60);
        assert.ok(idleS * 1000 >= 3 * pingMs, `${alb.id}: idle timeout ${idleS} s, ping every ${pingMs} ms`);
      }
    },
    breakIt(json) {
      const alb = resources(json, 'AWS::ElasticLoadBalancingV2::LoadBalancer')[0]!;
      const attrs = json.Resources[alb.id]!.Properties!.LoadBalancerAttributes as { Key: string; Value: string }[];
      attrs.find((a) => a.Key === 'idle_timeout.timeout_seconds')!.Value = '30';
    },
  },
  {
    name: "deregistration delay within the gateway's stop timeout",
    run(json, ctx) {
      const stop = gateway(json, ctx).stopTimeout!;
      const groups = resources(json, 'AWS::ElasticLoadBalancingV2::TargetGroup');
      assert.ok(groups.length > 0);
      for (const tg of groups) {
        const delay = Number(attribute(tg, 'deregistration_delay.timeout_seconds') ?? 300);
        assert.ok(delay <= stop, `${tg.id}: deregistration delay ${delay} s > stopTimeout ${stop} s`);
      }
    },
    breakIt(json) {
      const tg = resources(json, 'AWS::ElasticLoadBalancingV2::TargetGroup')[0]!;
      const attrs = json.Resources[tg.id]!.Properties!.TargetGroupAttributes as { Key: string; Value: string }[];
      attrs.find((a) => a.Key === 'deregistration_delay.timeout_seconds')!.Value = '300';
    },
  },
  {
    name: 'MSK: brokers a multiple of 3, RF 3, min.insync.replicas 2, no unclean election, TLS, SCRAM, isolated',
    run(json) {
      const [cluster] = resources(json, 'AWS::MSK::Cluster');
      assert.ok(cluster !== undefined, 'no MSK cluster');
      const brokers = Number(cluster.props.NumberOfBrokerNodes);
      assert.ok(brokers >= 3 && brokers % 3 === 0, `${brokers} brokers`);
      const config = resources(json, 'AWS::MSK::Configuration')[0]!.props.ServerProperties as string;
      for (const line of [
        `default.replication.factor=${REPLICATION_FACTOR}`,
        `min.insync.replicas=${MIN_INSYNC_REPLICAS}`,
        'unclean.leader.election.enable=false',
        'auto.create.topics.enable=false',
      ]) {
        assert.ok(config.split('\n').includes(line), `server.properties lacks ${line}`);
      }
      assert.equal(REPLICATION_FACTOR, 3);
      assert.equal(MIN_INSYNC_REPLICAS, 2);
      assert.deepEqual(cluster.props.EncryptionInfo, { EncryptionInTransit: { ClientBroker: 'TLS', InCluster: true } });
      assert.deepEqual(cluster.props.ClientAuthentication, {
        Sasl: { Scram: { Enabled: true } },
        Unauthenticated: { Enabled: false },
      });
      const subnets = ((cluster.props.BrokerNodeGroupInfo as Props).ClientSubnets as unknown[]).map(ref);
      assert.equal(new Set(subnets.map((s) => resource(json, s!).props.AvailabilityZone)).size, 3, 'brokers in 3 AZs');
      const routed = routedSubnets(json);
      for (const s of subnets) assert.ok(!routed.has(s!), `broker subnet ${s} routes to the internet`);
    },
    breakIt(json) {
      json.Resources[resources(json, 'AWS::MSK::Cluster')[0]!.id]!.Properties!.NumberOfBrokerNodes = 4;
    },
  },
  {
    name: 'database not public, encrypted, backed up, protected; writer and reader in different AZs',
    run(json) {
      const [cluster] = resources(json, 'AWS::RDS::DBCluster');
      assert.ok(cluster !== undefined);
      assert.equal(cluster.props.StorageEncrypted, true);
      assert.equal(cluster.props.DeletionProtection, true);
      assert.ok(Number(cluster.props.BackupRetentionPeriod) >= 1, 'backups');
      const instances = resources(json, 'AWS::RDS::DBInstance');
      assert.ok(instances.length >= 2, 'a writer and a reader');
      for (const i of instances) assert.equal(i.props.PubliclyAccessible, false, `${i.id} public`);
      const azs = instances.map((i) => i.props.AvailabilityZone);
      assert.equal(new Set(azs).size, instances.length, `instances in ${azs.join(', ')}`);
      const group = resource(json, ref(cluster.props.DBSubnetGroupName)!);
      const routed = routedSubnets(json);
      for (const s of (group.props.SubnetIds as unknown[]).map(ref)) {
        assert.ok(!routed.has(s!), `database subnet ${s} routes to the internet`);
      }
    },
    breakIt(json) {
      const [writer, reader] = resources(json, 'AWS::RDS::DBInstance');
      json.Resources[reader!.id]!.Properties!.AvailabilityZone = writer!.props.AvailabilityZone;
    },
  },
  {
    name: 'database refuses connections without TLS (rds.force_ssl 1)',
    run(json) {
      const [cluster] = resources(json, 'AWS::RDS::DBCluster');
      assert.ok(cluster !== undefined);
      const group = ref(cluster.props.DBClusterParameterGroupName);
      assert.ok(group !== undefined, 'the cluster has no parameter group of its own');
      const parameters = resource(json, group).props.Parameters as Props;
      assert.equal(parameters['rds.force_ssl'], '1', 'rds.force_ssl');
    },
    breakIt(json) {
      const group = resources(json, 'AWS::RDS::DBClusterParameterGroup')[0]!;
      (json.Resources[group.id]!.Properties!.Parameters as Props)['rds.force_ssl'] = '0';
    },
  },
  {
    name: "every DATABASE_URL verifies the writer endpoint's certificate (verify-full, RDS CA bundle)",
    run(json) {
      const [cluster] = resources(json, 'AWS::RDS::DBCluster');
      const urls = containers(json).filter((c) => c.environment.DATABASE_URL !== undefined);
      assert.ok(urls.length > 0, 'no container sets DATABASE_URL');
      for (const c of urls) {
        // An Fn::Join of strings and the endpoint's GetAtt; the host must be the writer endpoint.
        const value = c.environment.DATABASE_URL as { 'Fn::Join'?: [string, unknown[]] } | string;
        const parts = typeof value === 'string' ? [value] : (value['Fn::Join']?.[1] ?? []);
        const text = parts.map((p) => (typeof p === 'string' ? p : `<${JSON.stringify(p)}>`)).join('');
        const where = `${c.taskId}/${c.name}`;
        assert.ok(
          text.startsWith(`postgres://<${JSON.stringify({ 'Fn::GetAtt': [cluster!.id, 'Endpoint.Address'] })}>:`),
          `${where}: DATABASE_URL does not name the writer endpoint: ${text}`,
        );
        const query = new URLSearchParams(text.split('?')[1] ?? '');
        assert.equal(query.get('sslmode'), 'verify-full', `${where}: sslmode in ${text}`);
        assert.equal(query.get('sslrootcert'), '/etc/ssl/certs/rds-global-bundle.pem', `${where}: sslrootcert in ${text}`);
      }
    },
    breakIt(json) {
      const env = (containerDef(json, 'gateway').Environment as { Name: string; Value: unknown }[]).find(
        (e) => e.Name === 'DATABASE_URL',
      )!;
      env.Value = JSON.parse(JSON.stringify(env.Value).replace('sslmode=verify-full&', ''));
    },
  },
  {
    name: "no security group open to the internet but the public ALB's 443",
    run(json) {
      const publicAlbSgs = new Set(
        resources(json, 'AWS::ElasticLoadBalancingV2::LoadBalancer')
          .filter((lb) => lb.props.Scheme === 'internet-facing')
          .flatMap((lb) => (lb.props.SecurityGroups as unknown[]).map(ref)),
      );
      const rules: { sg: string; rule: Props }[] = [
        ...resources(json, 'AWS::EC2::SecurityGroup').flatMap((sg) =>
          ((sg.props.SecurityGroupIngress as Props[] | undefined) ?? []).map((rule) => ({ sg: sg.id, rule })),
        ),
        ...resources(json, 'AWS::EC2::SecurityGroupIngress').map((r) => ({ sg: ref(r.props.GroupId)!, rule: r.props })),
      ];
      for (const { sg, rule } of rules) {
        if (rule.CidrIp !== '0.0.0.0/0' && rule.CidrIpv6 !== '::/0') continue;
        assert.ok(publicAlbSgs.has(sg), `${sg} is open to the internet`);
        assert.ok(rule.IpProtocol === 'tcp' && rule.FromPort === 443 && rule.ToPort === 443, `${sg}: ${JSON.stringify(rule)}`);
      }
    },
    breakIt(json) {
      const sg = resources(json, 'AWS::EC2::SecurityGroup').find((s) => /^GatewaySg/.test(s.id))!;
      const props = json.Resources[sg.id]!.Properties!;
      props.SecurityGroupIngress = [{ CidrIp: '0.0.0.0/0', IpProtocol: 'tcp', FromPort: 22, ToPort: 22 }];
    },
  },
  {
    name: 'gateway: HTTPS listener, /readyz behind the ALB, /healthz in the container, nofile raised',
    run(json, ctx) {
      for (const tg of resources(json, 'AWS::ElasticLoadBalancingV2::TargetGroup')) {
        assert.equal(tg.props.HealthCheckPath, '/readyz', tg.id);
      }
      const publicAlb = resources(json, 'AWS::ElasticLoadBalancingV2::LoadBalancer').find((lb) => lb.props.Scheme === 'internet-facing')!;
      const listeners = resources(json, 'AWS::ElasticLoadBalancingV2::Listener').filter((l) => ref(l.props.LoadBalancerArn) === publicAlb.id);
      assert.deepEqual(listeners.map((l) => [l.props.Protocol, l.props.Port]), [['HTTPS', 443]]);
      const gw = gateway(json, ctx).raw;
      assert.match((gw.HealthCheck as { Command: string[] }).Command.join(' '), /\/dev\/tcp\/127\.0\.0\.1\/8080.*GET \/healthz/);
      const nofile = (gw.Ulimits as { Name: string; SoftLimit: number }[] | undefined)?.find((u) => u.Name === 'nofile');
      assert.ok(nofile !== undefined && nofile.SoftLimit > 65_535, `nofile ${JSON.stringify(nofile)}: Fargate's default is 65,535`);
    },
    breakIt(json) {
      const tg = resources(json, 'AWS::ElasticLoadBalancingV2::TargetGroup')[0]!;
      json.Resources[tg.id]!.Properties!.HealthCheckPath = '/healthz';
    },
  },
  {
    name: 'gateway scales on CPU and on connections per task',
    run(json) {
      const policies = resources(json, 'AWS::ApplicationAutoScaling::ScalingPolicy').map(
        (p) => p.props.TargetTrackingScalingPolicyConfiguration as Props,
      );
      const cpu = policies.some(
        (p) => (p.PredefinedMetricSpecification as Props | undefined)?.PredefinedMetricType === 'ECSServiceAverageCPUUtilization',
      );
      const connections = policies.some(
        (p) => (p.CustomizedMetricSpecification as Props | undefined)?.MetricName === 'gateway_connections',
      );
      assert.ok(cpu, 'no CPU target tracking');
      assert.ok(connections, 'no connections-per-task target tracking');
    },
    breakIt(json) {
      for (const p of resources(json, 'AWS::ApplicationAutoScaling::ScalingPolicy')) {
        if (JSON.stringify(p.props).includes('gateway_connections')) delete json.Resources[p.id];
      }
    },
  },
  {
    name: 'engine deploys never run two owners of a pair, and roll one service at a time',
    run(json, ctx) {
      const list = engines(json, ctx).filter((c) => c.environment.ENGINE_PAIRS !== undefined);
      const services = list.map((c) => serviceOf(json, c.taskId)!);
      for (const s of services) {
        const d = s.props.DeploymentConfiguration as Props;
        assert.equal(d.MinimumHealthyPercent, 0, s.id);
        assert.ok(Number(d.MaximumPercent) <= 100, `${s.id}: maximum ${String(d.MaximumPercent)}%`);
      }
      for (let i = 1; i < services.length; i++) {
        const deps = json.Resources[services[i]!.id]!.DependsOn;
        assert.ok(([] as unknown[]).concat(deps ?? []).includes(services[i - 1]!.id), `${services[i]!.id} rolls in parallel`);
      }
    },
    breakIt(json) {
      const s = resources(json, 'AWS::ECS::Service').find((x) => /Engine/.test(x.id))!;
      (json.Resources[s.id]!.Properties!.DeploymentConfiguration as Props).MaximumPercent = 200;
    },
  },
  {
    name: 'service tasks start after stackctl prepare succeeded',
    run(json, ctx) {
      assert.ok(stage(json, ctx).length > 0, 'no account stage container');
      for (const c of [...engines(json, ctx), ...stage(json, ctx), gateway(json, ctx)]) {
        const prepare = containers(json).find((x) => x.taskId === c.taskId && x.name === 'prepare');
        assert.ok(prepare !== undefined, `${c.taskId}: no prepare container`);
        assert.match(prepare.command.join(' '), /stackctl prepare/);
        assert.equal(prepare.essential, false);
        assert.deepEqual(c.raw.DependsOn, [{ ContainerName: 'prepare', Condition: 'SUCCESS' }], `${c.taskId}/${c.name}`);
      }
    },
    breakIt(json) {
      delete containerDef(json, 'gateway').DependsOn;
    },
    moreBreaks: [
      {
        name: 'an account shard owner starting without prepare',
        breakIt(json) {
          delete stageDefs(json)[0]!.DependsOn;
        },
      },
    ],
  },
  {
    name: "gateway ids: gateway tasks alone in the gateway subnets, which share one /26",
    run(json, ctx) {
      const gw = gateway(json, ctx);
      const service = serviceOf(json, gw.taskId)!;
      const subnetsOf = (s: Props): string[] =>
        (((s.NetworkConfiguration as Props).AwsvpcConfiguration as Props).Subnets as unknown[]).map((x) => ref(x)!);
      const mine = subnetsOf(service.props);
      const cidrs = mine.map((s) => resource(json, s).props.CidrBlock as string);
      const block = gatewayIdBlock(cidrs);
      for (const other of resources(json, 'AWS::ECS::Service').filter((s) => s.id !== service.id)) {
        for (const s of subnetsOf(other.props)) assert.ok(!mine.includes(s), `${other.id} runs in gateway subnet ${s}`);
      }
      const script = gw.command[2] ?? '';
      assert.match(script, /GW_GATEWAY_ID=\$\(\(octet - \d+\)\)/);
      assert.ok(script.includes(block.prefix), `the start script does not match ${block.cidr}`);
      const max = Number(resources(json, 'AWS::ApplicationAutoScaling::ScalableTarget')[0]!.props.MaxCapacity);
      const surge = Number((service.props.DeploymentConfiguration as Props).MaximumPercent) / 100;
      assert.ok(max * surge <= block.usableAddresses, `${max} tasks x ${surge} > ${block.usableAddresses} addresses`);
    },
    breakIt(json) {
      const gwService = resources(json, 'AWS::ECS::Service').find((s) => /GatewayService/.test(s.id))!;
      const engine = resources(json, 'AWS::ECS::Service').find((s) => /Engine/.test(s.id))!;
      (json.Resources[engine.id]!.Properties!.NetworkConfiguration as Props).AwsvpcConfiguration = structuredClone(
        (gwService.props.NetworkConfiguration as Props).AwsvpcConfiguration,
      );
    },
  },
  {
    name: 'every log group keeps its logs for a bounded time',
    run(json) {
      for (const lg of resources(json, 'AWS::Logs::LogGroup')) assert.ok(Number(lg.props.RetentionInDays) > 0, lg.id);
      for (const lr of resources(json, 'Custom::LogRetention')) assert.ok(Number(lr.props.RetentionInDays) > 0, lr.id);
    },
    breakIt(json) {
      delete json.Resources[resources(json, 'AWS::Logs::LogGroup')[0]!.id]!.Properties!.RetentionInDays;
    },
  },
  {
    name:
      'metrics shipped from every service task; alarms on shed rate, lag, paused, restarts, 5xx, ' +
      'Aurora CPU, inconsistent settlements and shard restarts',
    run(json, ctx) {
      assert.ok(stage(json, ctx).length > 0, 'no account stage container');
      for (const c of [...engines(json, ctx), ...stage(json, ctx), gateway(json, ctx)]) {
        const sidecar = containers(json).find((x) => x.taskId === c.taskId && x.name === 'metrics');
        assert.ok(sidecar !== undefined, `${c.taskId}: no metrics collector`);
        // The configuration embeds the log group's name, so the template holds it as an Fn::Join.
        const config = JSON.stringify(sidecar.environment.AOT_CONFIG_CONTENT);
        const port = { engine: 9100, accounts: ACCOUNTS_METRICS_PORT }[c.name] ?? 8080;
        assert.ok(config.includes(`127.0.0.1:${port}`), `${c.taskId}: scrapes another port`);
        assert.ok(config.includes('awsemf'), `${c.taskId}: ships nowhere`);
      }
      const alarms = resources(json, 'AWS::CloudWatch::Alarm');
      const named = alarms.map((a) => JSON.stringify(a.props));
      for (const metric of [
        'gateway_shed_total',
        'engine_consumer_lag_records',
        'engine_paused',
        'engine_actor_restarts_total',
        'HTTPCode_Target_5XX_Count',
        'CPUUtilization',
        'accounts_inconsistent_total',
        'accounts_actor_restarts_total',
      ]) {
        assert.ok(named.some((a) => a.includes(`"${metric}"`)), `no alarm on ${metric}`);
      }
      for (const a of alarms) assert.ok((a.props.AlarmActions as unknown[] | undefined)?.length, `${a.id} notifies nobody`);
    },
    breakIt(json) {
      for (const a of resources(json, 'AWS::CloudWatch::Alarm')) {
        if (JSON.stringify(a.props).includes('"engine_paused"')) delete json.Resources[a.id];
      }
    },
    moreBreaks: [
      ...['accounts_inconsistent_total', 'accounts_actor_restarts_total'].map((metric) => ({
        name: `no alarm on ${metric}`,
        breakIt(json: TemplateJson) {
          for (const a of resources(json, 'AWS::CloudWatch::Alarm')) {
            if (JSON.stringify(a.props).includes(`"${metric}"`)) delete json.Resources[a.id];
          }
        },
      })),
      {
        name: 'an account shard owner without its collector',
        breakIt(json: TemplateJson) {
          const task = resources(json, 'AWS::ECS::TaskDefinition').find((t) => /^AccountsShard/.test(t.id))!;
          const defs = json.Resources[task.id]!.Properties!.ContainerDefinitions as Props[];
          defs.splice(defs.findIndex((d) => d.Name === 'metrics'), 1);
        },
      },
    ],
  },
  {
    name: 'every account shard owned by exactly one service of one task, out of the ACCOUNT_SHARDS every prepare creates',
    run(json, ctx) {
      const counts = new Set(prepares(json, ctx).map((c) => c.environment.ACCOUNT_SHARDS));
      assert.ok(prepares(json, ctx).length > 0, 'no stackctl prepare');
      assert.equal(counts.size, 1, `prepare containers disagree on ACCOUNT_SHARDS: ${[...counts].join(', ')}`);
      const shards = Number([...counts][0]);
      assert.ok(Number.isInteger(shards) && shards > 0, `ACCOUNT_SHARDS ${String([...counts][0])}`);
      const owners = new Map<number, string[]>();
      const list = stage(json, ctx);
      assert.ok(list.length > 0, 'no account stage container');
      for (const c of list) {
        const service = serviceOf(json, c.taskId);
        assert.ok(service !== undefined, `${c.taskId} runs in no service`);
        assert.equal(service.props.DesiredCount, 1, `${service.id}: a shard owner runs one task`);
        // Explicit, so the owners can be checked here (absent would mean every partition).
        const owned = c.environment.ACCOUNTS_SHARDS;
        assert.ok(typeof owned === 'string', `${c.taskId}: ACCOUNTS_SHARDS unset (it would own every shard)`);
        for (const s of owned.split(',').map(Number)) owners.set(s, [...(owners.get(s) ?? []), service.id]);
      }
      for (let s = 0; s < shards; s++) {
        assert.equal(owners.get(s)?.length, 1, `shard ${s} owners: ${owners.get(s)?.join(', ') ?? 'none'}`);
      }
      for (const s of owners.keys()) assert.ok(Number.isInteger(s) && s >= 0 && s < shards, `shard ${s} of ${shards}`);
    },
    breakIt(json) {
      const [first, second] = stageDefs(json);
      envEntry(second!, 'ACCOUNTS_SHARDS')!.Value = envEntry(first!, 'ACCOUNTS_SHARDS')!.Value;
    },
    moreBreaks: [
      {
        name: 'one prepare creating another shard count',
        breakIt(json) {
          envEntry(containerDef(json, 'stackctl'), 'ACCOUNT_SHARDS')!.Value = '8';
        },
      },
      {
        name: 'a shard owner without ACCOUNTS_SHARDS (every shard)',
        breakIt(json) {
          const env = stageDefs(json)[0]!.Environment as { Name: string }[];
          env.splice(env.findIndex((e) => e.Name === 'ACCOUNTS_SHARDS'), 1);
        },
      },
    ],
  },
  {
    name: 'engines, gateways, transfers and load generators use the account stage, on the topics it reads and writes',
    run(json, ctx) {
      const list = stage(json, ctx);
      assert.ok(list.length > 0, 'no account stage container');
      const topic = (env: string): string => {
        const values = new Set(list.map((c) => effective(ctx.specs, 'accounts', env, c.environment, 'run')));
        assert.equal(values.size, 1, `shard owners disagree on ${env}: ${[...values].join(', ')}`);
        return [...values][0]!;
      };
      const accounts = topic('ACCOUNTS_TOPIC');
      const events = topic('ACCOUNT_EVENTS_TOPIC');
      const orders = topic('ORDERS_TOPIC');
      // The topics `stackctl prepare` creates with ACCOUNT_SHARDS partitions.
      assert.equal(accounts, protocolTopic('ACCOUNTS_TOPIC'));
      assert.equal(events, protocolTopic('ACCOUNT_EVENTS_TOPIC'));
      for (const c of engines(json, ctx)) {
        assert.equal(c.environment.ENGINE_ACCOUNTS_TOPIC, accounts, `${c.taskId}: ENGINE_ACCOUNTS_TOPIC (settlements)`);
        assert.equal(effective(ctx.specs, 'engine', 'ORDERS_TOPIC', c.environment), orders, `${c.taskId}: ORDERS_TOPIC`);
      }
      const gw = gateway(json, ctx);
      assert.equal(gw.environment.GW_ACCOUNTS_TOPIC, accounts, 'gateway: GW_ACCOUNTS_TOPIC (the stage on)');
      assert.equal(gw.environment.GW_ACCOUNT_EVENTS_TOPIC, events, 'gateway: GW_ACCOUNT_EVENTS_TOPIC');
      assert.equal(effective(ctx.specs, 'gateway', 'GW_ORDERS_TOPIC', gw.environment), orders, 'gateway: GW_ORDERS_TOPIC');
      const ops = transfers(json, ctx);
      assert.deepEqual(
        ops.map((c) => /\baccounts (deposit|withdraw)\b/.exec(c.command.join(' '))![1]).sort(),
        ['deposit', 'withdraw'],
        'one deposit and one withdraw task',
      );
      for (const c of ops) {
        assert.equal(effective(ctx.specs, 'accounts', 'ACCOUNTS_TOPIC', c.environment), accounts, `${c.taskId}: ACCOUNTS_TOPIC`);
      }
      for (const c of appContainers(json, ctx.repository).filter((x) => /gateway provision .*--fund/.test(x.command.join(' ')))) {
        assert.equal(c.environment.GW_ACCOUNTS_TOPIC, accounts, `${c.taskId}/${c.name}: deposits to GW_ACCOUNTS_TOPIC`);
      }
    },
    breakIt(json) {
      envEntry(containerDef(json, 'engine', 1), 'ENGINE_ACCOUNTS_TOPIC')!.Value = 'acounts';
    },
    moreBreaks: [
      {
        name: 'the gateway without the stage',
        breakIt(json) {
          const env = containerDef(json, 'gateway').Environment as { Name: string }[];
          env.splice(env.findIndex((e) => e.Name === 'GW_ACCOUNTS_TOPIC'), 1);
        },
      },
      {
        name: 'the gateway reading answers from another topic',
        breakIt(json) {
          envEntry(containerDef(json, 'gateway'), 'GW_ACCOUNT_EVENTS_TOPIC')!.Value = 'events';
        },
      },
      {
        name: 'a shard owner forwarding to another orders topic',
        breakIt(json) {
          (stageDefs(json)[2]!.Environment as { Name: string; Value: unknown }[]).push({ Name: 'ORDERS_TOPIC', Value: 'orders2' });
        },
      },
    ],
  },
  {
    name: 'account stage deploys never run two owners of a shard, roll one service at a time after the engines, and stop after the drain',
    run(json, ctx) {
      const list = stage(json, ctx);
      assert.ok(list.length > 0, 'no account stage container');
      const services = list.map((c) => serviceOf(json, c.taskId)!);
      for (const [i, s] of services.entries()) {
        const d = s.props.DeploymentConfiguration as Props;
        assert.equal(d.MinimumHealthyPercent, 0, s.id);
        assert.ok(Number(d.MaximumPercent) <= 100, `${s.id}: maximum ${String(d.MaximumPercent)}%`);
        const c = list[i]!;
        assert.ok(c.stopTimeout !== undefined, `${c.taskId}: no stopTimeout (Fargate's default 30 s)`);
        assert.ok(c.stopTimeout <= FARGATE_STOP_TIMEOUT_MAX_S, `${c.taskId}: stopTimeout ${c.stopTimeout} s`);
        assert.ok(c.stopTimeout > accountsDrainBoundS(), `${c.taskId}: stopTimeout ${c.stopTimeout} s, drain ${accountsDrainBoundS()} s`);
      }
      const dependsOn = (id: string): unknown[] => ([] as unknown[]).concat(json.Resources[id]!.DependsOn ?? []);
      const engineServices = engines(json, ctx).map((c) => serviceOf(json, c.taskId)!.id);
      assert.ok(
        dependsOn(services[0]!.id).some((d) => engineServices.includes(String(d))),
        `${services[0]!.id} rolls beside the engines`,
      );
      for (let i = 1; i < services.length; i++) {
        assert.ok(dependsOn(services[i]!.id).includes(services[i - 1]!.id), `${services[i]!.id} rolls in parallel`);
      }
    },
    breakIt(json) {
      const s = resources(json, 'AWS::ECS::Service').find((x) => /^Accounts/.test(x.id))!;
      (json.Resources[s.id]!.Properties!.DeploymentConfiguration as Props).MaximumPercent = 200;
    },
    moreBreaks: [
      {
        name: 'a stop timeout below the drain',
        breakIt(json) {
          stageDefs(json)[1]!.StopTimeout = 15;
        },
      },
      {
        name: 'two shard services rolling at once',
        breakIt(json) {
          const s = resources(json, 'AWS::ECS::Service').filter((x) => /^Accounts/.test(x.id))[2]!;
          const deps = ([] as unknown[]).concat(json.Resources[s.id]!.DependsOn ?? []);
          json.Resources[s.id]!.DependsOn = deps.filter((d) => !/^AccountsShard\d+Service/.test(String(d)));
        },
      },
    ],
  },
  {
    name: "account stage: its health check asks /healthz on METRICS_ADDR's port",
    run(json, ctx) {
      for (const c of stage(json, ctx)) {
        const port = Number(/:(\d+)$/.exec(effective(ctx.specs, 'accounts', 'METRICS_ADDR', c.environment, 'run'))?.[1]);
        assert.equal(port, ACCOUNTS_METRICS_PORT, `${c.taskId}: METRICS_ADDR`);
        const check = (c.raw.HealthCheck as { Command: string[] } | undefined)?.Command.join(' ') ?? '';
        assert.match(check, new RegExp(`/dev/tcp/127\\.0\\.0\\.1/${port} .*GET /healthz HTTP.*' 200 '`), `${c.taskId}: ${check}`);
      }
    },
    breakIt(json) {
      envEntry(stageDefs(json)[0]!, 'METRICS_ADDR')!.Value = '0.0.0.0:9200';
    },
  },
  {
    name:
      'account stage reaches Kafka and Aurora only on their ports; transfer tasks reach Kafka, not Aurora; ' +
      'load generators reach Kafka (deposits)',
    run(json, ctx) {
      const [msk] = resources(json, 'AWS::MSK::Cluster');
      assert.ok(msk !== undefined, 'no MSK cluster');
      const mskGroups = ((msk.props.BrokerNodeGroupInfo as Props).SecurityGroups as unknown[]).map((x) => ref(x)!);
      const [db] = resources(json, 'AWS::RDS::DBCluster');
      const dbGroups = (db!.props.VpcSecurityGroupIds as unknown[]).map((x) => ref(x)!);
      const dbPort = Number(db!.props.Port);
      assert.ok(dbPort > 0, 'the Aurora cluster names no port');
      const reaches = (groups: string[], source: string, port: number): boolean =>
        groups.some((g) => ingressFrom(json, g).some(([s, p]) => s === source && p === port));
      const anyRule = (groups: string[], source: string): [string, number][] =>
        groups.flatMap((g) => ingressFrom(json, g)).filter(([s]) => s === source);
      for (const c of stage(json, ctx)) {
        for (const sg of securityGroupsOf(serviceOf(json, c.taskId)!)) {
          assert.ok(reaches(mskGroups, sg, MSK_SCRAM_PORT), `${c.taskId}: ${sg} cannot reach the brokers on ${MSK_SCRAM_PORT}`);
          assert.ok(reaches(dbGroups, sg, dbPort), `${c.taskId}: ${sg} cannot reach Aurora on ${dbPort}`);
          for (const [, p] of anyRule(mskGroups, sg)) assert.equal(p, MSK_SCRAM_PORT, `${sg} to the brokers on ${p}`);
        }
      }
      // The operator's run-task commands name the one-off tasks' security groups.
      const outputs = json.Outputs as Record<string, { Value: unknown }>;
      for (const name of ['AccountsDepositRunTask', 'AccountsWithdrawRunTask', 'LoadtestRunTask']) {
        assert.ok(outputs[name] !== undefined, `no output ${name}`);
        const sgs = [...JSON.stringify(outputs[name].Value).matchAll(/"Fn::GetAtt":\["([^"]+)","GroupId"\]/g)].map((m) => m[1]!);
        assert.equal(sgs.length, 1, `${name}: ${sgs.join(', ')}`);
        assert.ok(reaches(mskGroups, sgs[0]!, MSK_SCRAM_PORT), `${name}: ${sgs[0]} cannot reach the brokers`);
        if (name !== 'LoadtestRunTask') assert.deepEqual(anyRule(dbGroups, sgs[0]!), [], `${name}: ${sgs[0]} reaches Aurora`);
      }
    },
    breakIt(json) {
      const sg = resources(json, 'AWS::EC2::SecurityGroup').find((x) => /^AccountsSg/.test(x.id))!;
      for (const r of resources(json, 'AWS::EC2::SecurityGroupIngress')) {
        if (ref(r.props.SourceSecurityGroupId) === sg.id && portOf(json, r.props.FromPort) === 5432) delete json.Resources[r.id];
      }
    },
    moreBreaks: [
      {
        name: 'transfer tasks let into Aurora',
        breakIt(json) {
          const sg = resources(json, 'AWS::EC2::SecurityGroup').find((x) => /^AccountsTransferSg/.test(x.id))!;
          const db = resources(json, 'AWS::RDS::DBCluster')[0]!;
          json.Resources.BrokenTransferToAurora = {
            Type: 'AWS::EC2::SecurityGroupIngress',
            Properties: {
              GroupId: (db.props.VpcSecurityGroupIds as unknown[])[0],
              SourceSecurityGroupId: { 'Fn::GetAtt': [sg.id, 'GroupId'] },
              IpProtocol: 'tcp',
              FromPort: 5432,
              ToPort: 5432,
            },
          };
        },
      },
      {
        name: 'load generators kept out of the brokers (their deposits would fail)',
        breakIt(json) {
          const sg = resources(json, 'AWS::EC2::SecurityGroup').find((x) => /^LoadtestSg/.test(x.id))!;
          for (const r of resources(json, 'AWS::EC2::SecurityGroupIngress')) {
            if (ref(r.props.SourceSecurityGroupId) === sg.id && portOf(json, r.props.FromPort) === MSK_SCRAM_PORT) {
              delete json.Resources[r.id];
            }
          }
        },
      },
      {
        name: 'the stage let into the brokers on another port too',
        breakIt(json) {
          const sg = resources(json, 'AWS::EC2::SecurityGroup').find((x) => /^AccountsSg/.test(x.id))!;
          const rule = resources(json, 'AWS::EC2::SecurityGroupIngress').find(
            (r) => ref(r.props.SourceSecurityGroupId) === sg.id && Number(r.props.FromPort) === MSK_SCRAM_PORT,
          )!;
          json.Resources.BrokenStageToBrokers = {
            Type: 'AWS::EC2::SecurityGroupIngress',
            Properties: { ...rule.props, FromPort: 9092, ToPort: 9092 },
          };
        },
      },
    ],
  },
  {
    name:
      'the key-encryption key reaches only the gateway and `gateway keys`, as ECS secrets from one retained ' +
      'Secrets Manager secret; the load generator provisions Ed25519 keys without it',
    run(json, ctx) {
      const names = [KEY_ENCRYPTION_KEY_ENV, KEY_ENCRYPTION_KEY_PREVIOUS_ENV];
      const secrets = resources(json, 'AWS::SecretsManager::Secret').filter((r) =>
        JSON.stringify(r.props.GenerateSecretString ?? {}).includes('"GenerateStringKey":"current"'),
      );
      assert.equal(secrets.length, 1, 'one generated key-encryption secret');
      const secret = secrets[0]!;
      assert.equal(json.Resources[secret.id]!.DeletionPolicy, 'Retain', 'deleting the stack must keep the key');
      const holders: string[] = [];
      for (const c of containers(json)) {
        for (const name of names) {
          assert.ok(!(name in c.environment), `${c.taskId}/${c.name}: ${name} as a plain environment value`);
        }
        const given = ((c.raw.Secrets as { Name: string; ValueFrom: unknown }[] | undefined) ?? []).filter((x) =>
          names.includes(x.Name),
        );
        if (given.length === 0) continue;
        assert.deepEqual(given.map((x) => x.Name).sort(), [...names].sort(), `${c.taskId}/${c.name}: both keys`);
        for (const x of given) {
          assert.ok(JSON.stringify(x.ValueFrom).includes(`"Ref":"${secret.id}"`), `${c.taskId}/${c.name}: ${x.Name} from elsewhere`);
        }
        holders.push([c.name, ...c.command.filter((w) => !w.includes('\n'))].join(' '));
      }
      assert.deepEqual(holders.sort(), ['gateway bash -c', 'gateway-keys gateway keys encrypt-existing'], holders.join('; '));
      assert.ok(gateway(json, ctx).secrets.includes(KEY_ENCRYPTION_KEY_ENV));
      const loadtest = appContainers(json, ctx.repository).find((c) => c.name === 'loadtest');
      if (loadtest !== undefined) assert.match(loadtest.command.join(' '), /gateway provision .*--key-kind ed25519/);
      const outputs = json.Outputs as Record<string, { Value: unknown }>;
      assert.ok(outputs.ApiKeysEncryptExistingRunTask !== undefined, 'no run-task command for encrypt-existing');
    },
    breakIt(json) {
      // The key written into the gateway's task definition in clear.
      const c = containerDef(json, 'gateway');
      c.Secrets = (c.Secrets as { Name: string }[]).filter((x) => x.Name !== KEY_ENCRYPTION_KEY_ENV);
      (c.Environment as { Name: string; Value: unknown }[]).push({ Name: KEY_ENCRYPTION_KEY_ENV, Value: 'ab'.repeat(32) });
    },
    moreBreaks: [
      {
        name: 'the key given to the load generator too',
        breakIt(json) {
          const gw = containerDef(json, 'gateway');
          const key = (gw.Secrets as { Name: string }[]).filter((x) => x.Name.startsWith('GW_KEY_ENCRYPTION_KEY'));
          const lt = containerDef(json, 'loadtest');
          lt.Secrets = [...((lt.Secrets as unknown[] | undefined) ?? []), ...key];
        },
      },
      {
        name: 'the key-encryption secret deleted with the stack',
        breakIt(json) {
          const secret = resources(json, 'AWS::SecretsManager::Secret').find((r) =>
            JSON.stringify(r.props.GenerateSecretString ?? {}).includes('"GenerateStringKey":"current"'),
          )!;
          json.Resources[secret.id]!.DeletionPolicy = 'Delete';
        },
      },
      {
        name: 'the gateway without the key',
        breakIt(json) {
          const c = containerDef(json, 'gateway');
          c.Secrets = (c.Secrets as { Name: string }[]).filter((x) => !x.Name.startsWith('GW_KEY_ENCRYPTION_KEY'));
        },
      },
    ],
  },
];

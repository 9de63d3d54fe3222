// The app's parameters and options: what it refuses, the engine layouts, an existing VPC with
// existing brokers, and cdk-nag failing the synthesis on a finding nobody acknowledged.
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import * as path from 'node:path';
import { describe, test } from 'node:test';
import * as s3 from 'aws-cdk-lib/aws-s3';
import { ACCOUNTS_DRAIN, accountsDrainBoundS, accountsStopTimeoutS } from '../lib/accounts';
import { configFromContext } from '../lib/config';
import { ENGINE_DRAIN, engineDrainBoundS, engineStopTimeoutS } from '../lib/engine';
import { gatewayIdBlock } from '../lib/network';
import { parsePairs } from '../lib/pairs';
import { binarySpecs } from './support/cli';
import { CHECKS } from './support/checks';
import { environmentProblems } from './support/environment';
import { PLACEHOLDERS, REPO_DIR, synth } from './support/synth';
import { containers, resources } from './support/template';

const config = (extra: Record<string, unknown>) =>
  configFromContext((key) => ({ ...PLACEHOLDERS, ...extra })[key]);

describe('parameters', () => {
  test('the placeholders give the default sizes', () => {
    const c = config({});
    assert.equal(c.stage, 'prod');
    assert.equal(c.engine.layout.kind, 'per-pair');
    assert.equal(c.gateway.minTasks, 3);
  });

  test('a section may come as a JSON string, merged over the defaults', () => {
    const c = config({ gateway: '{"minTasks": 6, "env": {"GW_MAX_CONNECTIONS": "50000"}}' });
    assert.equal(c.gateway.minTasks, 6);
    assert.equal(c.gateway.maxTasks, 12);
    assert.deepEqual(c.gateway.env, { GW_MAX_CONNECTIONS: '50000' });
  });

  for (const [why, extra, message] of [
    ['no certificate', { certificateArn: undefined }, /'certificateArn' is required/],
    ['a mutable image tag', { imageTag: 'latest' }, /immutable tag/],
    ['a typo in a key', { alb: { idleTimeoutSeconds: 100 } }, /unknown key/],
    ['a wrong type', { gateway: { minTasks: '3' } }, /expected number, got string/],
    ['fewer gateways than AZs', { gateway: { minTasks: 2 } }, /one per availability zone/],
    ['a deregistration delay above the stop timeout', { alb: { deregistrationDelayS: 60 } }, /deregistrationDelayS/],
    ['not a certificate ARN', { certificateArn: 'arn:aws:iam::123456789012:role/x' }, /not an ACM certificate/],
    ['no account shards', { accounts: { shards: 0 } }, /accounts\.shards must be a whole number >= 1/],
    ['shard ownership set through env', { accounts: { env: { ACCOUNTS_SHARDS: '0' } } }, /set by the accounts layout/],
  ] as const) {
    test(`refuses ${why}`, () => assert.throws(() => config(extra as Record<string, unknown>), message));
  }
});

describe('the engine drain bound is the one engine/src implements', () => {
  const source = (file: string) => readFileSync(path.join(REPO_DIR, 'engine', 'src', file), 'utf8');
  const seconds = (text: string, pattern: RegExp, what: string): number => {
    const m = pattern.exec(text);
    assert.ok(m !== null, `cannot find ${what}; update ENGINE_DRAIN in deploy/lib/engine.ts`);
    return Number(m[1]);
  };

  test('pairs side by side, producer flush, consumer close', () => {
    assert.equal(seconds(source('lib.rs'), /drain_timeout: Duration::from_secs\((\d+)\)/, 'drain_timeout'), ENGINE_DRAIN.pairsS);
    assert.equal(seconds(source('engine.rs'), /producer\.flush\(Duration::from_secs\((\d+)\)\)/, 'the flush'), ENGINE_DRAIN.producerFlushS);
    assert.equal(
      seconds(source('lib.rs'), /CONSUMER_CLOSE_WAIT: Duration = Duration::from_secs\((\d+)\)/, 'CONSUMER_CLOSE_WAIT'),
      ENGINE_DRAIN.consumerCloseS,
    );
    // One deadline for every pair: the bound does not grow with the pairs a task owns.
    assert.match(
      source('engine.rs'),
      /let deadline = tokio::time::Instant::now\(\) \+ self\.config\.drain_timeout;\s*for slot in slots \{\s*if tokio::time::timeout_at\(deadline, slot\.supervisor\)/,
    );
  });

  test('a task drains within 35 s and stops after 60 s, whatever the pairs it owns', () => {
    assert.equal(engineDrainBoundS(), 35);
    assert.equal(engineStopTimeoutS(), 60);
  });
});

describe('the account stage drain bound is the one accounts/src and infra/src implement', () => {
  const source = (...file: string[]) => readFileSync(path.join(REPO_DIR, ...file), 'utf8');
  const number = (text: string, pattern: RegExp, what: string): number => {
    const m = pattern.exec(text);
    assert.ok(m !== null, `cannot find ${what}; update ACCOUNTS_DRAIN in deploy/lib/accounts.ts`);
    return Number(m[1]);
  };

  test('one deadline for the shards, side by side', () => {
    const lib = source('accounts', 'src', 'lib.rs');
    assert.equal(
      number(lib, /DRAIN_TIMEOUT: std::time::Duration = std::time::Duration::from_secs\((\d+)\)/, 'DRAIN_TIMEOUT'),
      ACCOUNTS_DRAIN.shardsS,
    );
    // Each shard's actor is a task of its own, waited for under one deadline, so the bound does
    // not grow with the shards a task owns.
    assert.match(lib, /for shard in owned \{\s*tasks\.push\(tokio::spawn\(actor::supervise\(/);
    assert.match(lib, /let deadline = tokio::time::Instant::now\(\) \+ DRAIN_TIMEOUT;\s*for t in tasks \{\s*if tokio::time::timeout_at\(deadline, t\)/);
    // On SIGTERM a shard's decider stops after its batch; its committer then waits for the
    // deliveries already sent and commits what is left at once (no commit interval once the
    // decider is gone), then it stops.
    const actor = source('accounts', 'src', 'actor.rs');
    assert.match(actor, /_ = stop\.cancelled\(\) => return Ok\(\(\)\),/);
    assert.match(
      actor,
      /acknowledged\(&mut first\)\.await\?;\s*[^]*?if !waiting\.is_closed\(\) \{\s*tokio::time::sleep_until\(last_commit \+ interval\)\.await;\s*\}[^]*?store::persist\([^;]*\)\s*\.await\?;/,
    );
  });

  test('drains within 20 s and stops after 45 s, whatever the shards per task', () => {
    assert.equal(accountsDrainBoundS(), 20);
    assert.equal(accountsStopTimeoutS(), 45);
  });
});

describe('layouts and options', () => {
  const pairs = parsePairs(readFileSync(path.join(REPO_DIR, 'config', 'pairs.toml'), 'utf8'));
  const ownershipCheck = CHECKS.find((c) => /owned by exactly one/.test(c.name))!;
  const stopCheck = CHECKS.find((c) => /stop timeouts/.test(c.name))!;

  test('pair groups: one service per group, ENGINE_PAIRS lists the group', () => {
    const groups = [pairs.slice(0, 4).map((p) => p.symbol), pairs.slice(4).map((p) => p.symbol)];
    const s = synth({ engine: { layout: { kind: 'groups', groups } } });
    const engines = containers(s.json).filter((c) => c.name === 'engine');
    assert.deepEqual(engines.map((c) => c.environment.ENGINE_PAIRS), groups.map((g) => g.join(',')));
    const ctx = { pairs, specs: binarySpecs(), repository: PLACEHOLDERS.imageRepository! };
    ownershipCheck.run(s.json, ctx);
    stopCheck.run(s.json, ctx);
    assert.deepEqual(environmentProblems(s.json, ctx.repository, ctx.specs), []);
  });

  test('account shard groups: one service per group, ACCOUNTS_SHARDS lists the group', () => {
    const s = synth({ accounts: { layout: { kind: 'groups', groups: [[0, 1], [2, 3]] } } });
    const owners = containers(s.json).filter((c) => c.command.join(' ') === 'accounts run');
    assert.deepEqual(owners.map((c) => c.environment.ACCOUNTS_SHARDS), ['0,1', '2,3']);
    const ctx = { pairs, specs: binarySpecs(), repository: PLACEHOLDERS.imageRepository! };
    for (const check of CHECKS.filter((c) => /account/.test(c.name))) check.run(s.json, ctx);
    assert.deepEqual(environmentProblems(s.json, ctx.repository, ctx.specs), []);
  });

  test('account shard groups must name every shard exactly once', () => {
    assert.throws(() => synth({ accounts: { layout: { kind: 'groups', groups: [[0, 1], [2]] } } }), /missing: 3/);
    assert.throws(() => synth({ accounts: { layout: { kind: 'groups', groups: [[0, 1], [1, 2, 3]] } } }), /twice: 1/);
  });

  test('eight account shards: eight services, and every prepare creates eight partitions', () => {
    const s = synth({ accounts: { shards: 8 } });
    const owners = containers(s.json).filter((c) => c.command.join(' ') === 'accounts run');
    assert.deepEqual(owners.map((c) => c.environment.ACCOUNTS_SHARDS), ['0', '1', '2', '3', '4', '5', '6', '7']);
    const prepares = containers(s.json).filter((c) => /stackctl prepare/.test(c.command.join(' ')));
    assert.ok(prepares.length > owners.length);
    for (const c of prepares) assert.equal(c.environment.ACCOUNT_SHARDS, '8', `${c.taskId}/${c.name}`);
  });

  test('pair groups must name every pair exactly once', () => {
    const groups = [pairs.slice(1).map((p) => p.symbol)];
    assert.throws(() => synth({ engine: { layout: { kind: 'groups', groups } } }), /missing: BTC-EUR/);
  });

  test('consumer-group mode: one service of N tasks, no ENGINE_PAIRS', () => {
    const s = synth({ engine: { layout: { kind: 'consumer-group', tasks: 2 } } });
    const engines = containers(s.json).filter((c) => c.name === 'engine');
    assert.equal(engines.length, 1);
    assert.equal(engines[0]!.environment.ENGINE_PAIRS, undefined);
    assert.equal(engines[0]!.environment.ENGINE_GROUP_ID, 'prod-engine');
    const ctx = { pairs, specs: binarySpecs(), repository: PLACEHOLDERS.imageRepository! };
    ownershipCheck.run(s.json, ctx);
    stopCheck.run(s.json, ctx);
    assert.deepEqual(environmentProblems(s.json, ctx.repository, ctx.specs), []);
  });

  test('an existing VPC and existing brokers: no VPC or MSK created, SCRAM from the given secret', () => {
    const secretArn = 'arn:aws:secretsmanager:eu-west-1:123456789012:secret:AmazonMSK_kafka-AbCdEf';
    const s = synth({
      network: {
        existing: {
          vpcId: 'vpc-0123456789abcdef0',
          vpcCidr: '10.20.0.0/16',
          availabilityZones: ['eu-west-1a', 'eu-west-1b', 'eu-west-1c'],
          publicSubnetIds: ['subnet-0a000000000000001', 'subnet-0a000000000000002', 'subnet-0a000000000000003'],
          privateSubnetIds: ['subnet-0b000000000000001', 'subnet-0b000000000000002', 'subnet-0b000000000000003'],
          isolatedSubnetIds: ['subnet-0c000000000000001', 'subnet-0c000000000000002', 'subnet-0c000000000000003'],
          gatewaySubnetIds: ['subnet-0d000000000000001', 'subnet-0d000000000000002', 'subnet-0d000000000000003'],
          gatewaySubnetCidrs: ['10.20.9.64/28', '10.20.9.80/28', '10.20.9.96/28'],
        },
      },
      kafka: { bootstrapBrokers: 'b-1.kafka:9096,b-2.kafka:9096,b-3.kafka:9096', scramSecretArn: secretArn },
    });
    assert.equal(resources(s.json, 'AWS::EC2::VPC').length, 0);
    assert.equal(resources(s.json, 'AWS::MSK::Cluster').length, 0);
    const gw = containers(s.json).find((c) => c.name === 'gateway')!;
    assert.equal(gw.environment.KAFKA_BROKERS, 'b-1.kafka:9096,b-2.kafka:9096,b-3.kafka:9096');
    assert.equal(gw.environment.KAFKA_CFG_SECURITY_PROTOCOL, 'SASL_SSL');
    assert.ok(gw.secrets.includes('KAFKA_CFG_SASL_PASSWORD'));
    assert.match(gw.command[2]!, /10\.20\.9\.\*\)/);
    assert.match(gw.command[2]!, /GW_GATEWAY_ID=\$\(\(octet - 64\)\)/);
  });

  test('gateway subnets outside one /26 are refused', () => {
    assert.throws(() => gatewayIdBlock(['10.0.3.0/28', '10.0.3.16/28', '10.0.3.64/28']), /do not lie in one \/26/);
    assert.equal(gatewayIdBlock(['10.0.3.0/28', '10.0.3.16/28', '10.0.3.32/28']).usableAddresses, 33);
  });
});

describe('cdk-nag', () => {
  test('the default deployment has no unacknowledged finding (synth throws otherwise)', () => {
    synth();
  });

  test('fails the synthesis on a finding nobody acknowledged', () => {
    // A bucket without access logs or TLS-only policy: AwsSolutions-S1 and -S10.
    let message = '';
    assert.throws(
      () => synth({}, (stack) => void new s3.Bucket(stack, 'Unreviewed')),
      (err: Error) => ((message = err.message), /Validation failed/.test(err.message)),
    );
    const report = /found in: (\S+)/.exec(message)?.[1];
    assert.ok(report !== undefined, message);
    const text = readFileSync(report, 'utf8');
    for (const rule of ['AwsSolutions-S1', 'AwsSolutions-S10']) {
      assert.match(text, new RegExp(`${rule}[^]*Unreviewed|Unreviewed[^]*${rule}`), `${rule} on the new bucket`);
    }
  });
});

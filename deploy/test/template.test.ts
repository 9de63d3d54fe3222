// The default deployment, synthesized once and read as a reviewer would. Every check runs on the
// real template and on a copy broken in one place, where it must fail.
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { chmodSync, mkdtempSync, readFileSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import * as path from 'node:path';
import { before, describe, test } from 'node:test';
import { RDS_CA_BUNDLE } from '../lib/database';
import { binarySpecs } from './support/cli';
import { type CheckContext, CHECKS } from './support/checks';
import { environmentProblems, invocations } from './support/environment';
import { copy, PLACEHOLDERS, REPO_DIR, type Synthesized, synth } from './support/synth';
import { appContainers, containers } from './support/template';

let base: Synthesized;
let ctx: CheckContext;

before(() => {
  base = synth();
  ctx = { pairs: base.pairs, specs: binarySpecs(), repository: PLACEHOLDERS.imageRepository! };
});

describe('template checks', () => {
  for (const check of CHECKS) {
    test(check.name, () => check.run(base.json, ctx));
    test(`${check.name}: fails on a broken template`, () => {
      const broken = copy(base.json);
      check.breakIt(broken);
      assert.throws(() => check.run(broken, ctx), assert.AssertionError);
    });
    for (const more of check.moreBreaks ?? []) {
      test(`${check.name}: fails on ${more.name}`, () => {
        const broken = copy(base.json);
        more.breakIt(broken);
        assert.throws(() => check.run(broken, ctx), assert.AssertionError);
      });
    }
  }
});

describe('task definitions set exactly the settings the binaries read', () => {
  test('every app container: nothing unknown set, nothing required missing', () => {
    assert.deepEqual(environmentProblems(base.json, ctx.repository, ctx.specs), []);
    const names = appContainers(base.json, ctx.repository).map((c) => c.name);
    for (const expected of ['engine', 'gateway', 'accounts', 'prepare', 'stackctl', 'loadtest']) {
      assert.ok(names.includes(expected), `no ${expected} container was checked`);
    }
    // Each command checked against its own --help, subcommands included.
    const commands = new Set(
      appContainers(base.json, ctx.repository).flatMap((c) =>
        invocations(c, ctx.specs).map((r) => [r.command.binary, r.command.subcommand].filter(Boolean).join(' ')),
      ),
    );
    for (const expected of [
      'engine',
      'gateway',
      'gateway provision',
      'gateway keys encrypt-existing',
      'accounts run',
      'accounts deposit',
      'accounts withdraw',
      'stackctl wait',
      'stackctl prepare',
      'loadtest',
    ]) {
      assert.ok(commands.has(expected), `no container runs ${expected} (checked: ${[...commands].join(', ')})`);
    }
  });

  const broken = (
    edit: (env: { Name: string; Value: unknown }[], name: string) => void,
    container: string,
    command?: RegExp,
  ): string[] => {
    const json = copy(base.json);
    const c = containers(json).find((x) => x.name === container && (command === undefined || command.test(x.command.join(' '))))!;
    edit(c.raw.Environment as { Name: string; Value: unknown }[], container);
    return environmentProblems(json, ctx.repository, ctx.specs);
  };
  const without = (name: string) => (env: { Name: string }[]) => env.splice(env.findIndex((e) => e.Name === name), 1);

  test('accounts run: fails without its database, on a misspelt setting, or on a setting of the engine', () => {
    const noDb = broken(without('DATABASE_URL'), 'accounts', /^accounts run$/);
    assert.ok(noDb.some((p) => /accounts run requires DATABASE_URL/.test(p)), noDb.join('\n'));
    const typo = broken((env) => env.push({ Name: 'ACCOUNTS_SHARD', Value: '0' }), 'accounts', /^accounts run$/);
    assert.equal(typo.length, 1, typo.join('\n'));
    assert.match(typo[0]!, /sets ACCOUNTS_SHARD, which none of accounts run reads/);
    const engines = broken((env) => env.push({ Name: 'ENGINE_ACCOUNTS_TOPIC', Value: 'accounts' }), 'accounts', /^accounts run$/);
    assert.match(engines.join('\n'), /sets ENGINE_ACCOUNTS_TOPIC, which none of accounts run reads/);
  });

  test('accounts deposit: fails without brokers (its default is none)', () => {
    const problems = broken(without('KAFKA_BROKERS'), 'accounts', /accounts deposit/);
    assert.ok(problems.some((p) => /accounts deposit would use KAFKA_BROKERS=""; set it/.test(p)), problems.join('\n'));
  });

  test('ACCOUNT_SHARDS: read by stackctl prepare only, and only a positive count', () => {
    const gw = broken((env) => env.push({ Name: 'ACCOUNT_SHARDS', Value: '4' }), 'gateway');
    assert.match(gw.join('\n'), /sets ACCOUNT_SHARDS, which none of gateway reads/);
    const zero = broken((env) => {
      env.find((e) => e.Name === 'ACCOUNT_SHARDS')!.Value = '0';
    }, 'stackctl');
    assert.match(zero.join('\n'), /ACCOUNT_SHARDS="0" is not what stackctl prepare accepts/);
  });

  test('fails on a setting no binary reads (a typo)', () => {
    const problems = broken((env) => env.push({ Name: 'GW_PING_INTERVALL_MS', Value: '20000' }), 'gateway');
    assert.equal(problems.length, 1);
    assert.match(problems[0]!, /sets GW_PING_INTERVALL_MS, which none of gateway reads/);
  });

  test('fails on a required setting missing', () => {
    const problems = broken((env) => env.splice(env.findIndex((e) => e.Name === 'KAFKA_BROKERS'), 1), 'engine');
    assert.ok(problems.some((p) => /engine requires KAFKA_BROKERS/.test(p)), problems.join('\n'));
  });

  test('fails on a connection setting left at its localhost default', () => {
    const problems = broken((env) => env.splice(env.findIndex((e) => e.Name === 'LOADTEST_URL'), 1), 'loadtest');
    assert.ok(problems.some((p) => /would use LOADTEST_URL=ws:\/\/127\.0\.0\.1/.test(p)), problems.join('\n'));
  });

  test('fails on a librdkafka property that does not exist, or a value it refuses', () => {
    const unknown = broken((env) => env.push({ Name: 'KAFKA_CFG_SASL_MECHANISMZ', Value: 'x' }), 'gateway');
    assert.ok(unknown.some((p) => /librdkafka has no property sasl\.mechanismz/.test(p)), unknown.join('\n'));
    const value = broken((env) => {
      env.find((e) => e.Name === 'KAFKA_CFG_SECURITY_PROTOCOL')!.Value = 'SASL_TLS';
    }, 'gateway');
    assert.ok(value.some((p) => /security\.protocol takes .*sasl_ssl.*, not SASL_TLS/.test(p)), value.join('\n'));
  });
});

describe('the gateway start script derives a unique GW_GATEWAY_ID', () => {
  /** Runs the synthesized script with `hostname -I` answering `addresses`. */
  const run = (addresses: string): { status: number; out: string } => {
    const gw = containers(base.json).find((c) => c.name === 'gateway')!;
    const dir = mkdtempSync(path.join(tmpdir(), 'gateway-id-'));
    writeFileSync(path.join(dir, 'hostname'), `#!/bin/sh\necho "${addresses} "\n`);
    writeFileSync(path.join(dir, 'gateway'), '#!/bin/sh\necho "id=$GW_GATEWAY_ID"\n');
    chmodSync(path.join(dir, 'hostname'), 0o755);
    chmodSync(path.join(dir, 'gateway'), 0o755);
    try {
      const out = execFileSync('bash', ['-c', gw.command[2]!], {
        env: { PATH: `${dir}:${process.env.PATH ?? ''}` },
        stdio: ['ignore', 'pipe', 'pipe'],
      }).toString();
      return { status: 0, out };
    } catch (err) {
      const e = err as { status: number; stderr: Buffer };
      return { status: e.status, out: e.stderr.toString() };
    }
  };

  test('the offset of the address in the gateway /26, ignoring other interfaces', () => {
    // The default VPC puts the gateway subnets at 10.0.3.0/28, .16/28 and .32/28.
    assert.deepEqual(run('169.254.172.2 10.0.3.37 fe80::1'), { status: 0, out: 'id=37\n' });
    assert.deepEqual(run('10.0.3.4'), { status: 0, out: 'id=4\n' });
  });

  test('refuses to start outside the gateway subnets', () => {
    const outside = run('10.0.16.7');
    assert.notEqual(outside.status, 0);
    assert.match(outside.out, /no address in 10\.0\.3\.0\/26/);
  });
});

describe("the image: every binary the tasks start, and Aurora's CA as DATABASE_URL expects", () => {
  // sqlx's native-tls backend adds only the first certificate of sslrootcert; the RDS bundle holds
  // one per region and CA, so it must reach OpenSSL's system store: a local CA that
  // update-ca-certificates adds to the system bundle and links as /etc/ssl/certs/<name>.pem.
  const problems = (dockerfile: string): string[] => {
    // The runtime stage, its continued lines joined.
    const runtime = dockerfile.slice(dockerfile.lastIndexOf('\nFROM ')).replace(/\s*\\\n\s*/g, ' ');
    const local = `/usr/local/share/ca-certificates/${path.basename(RDS_CA_BUNDLE, '.pem')}.crt`;
    const url = 'https://truststore.pki.rds.amazonaws.com/global/global-bundle.pem';
    const out: string[] = [];
    if (!runtime.includes(`\nADD --chmod=644 ${url} ${local}\n`)) out.push(`the runtime stage does not add ${url} as ${local}`);
    const link = `&& update-ca-certificates && test -s ${RDS_CA_BUNDLE} `;
    if (!runtime.includes(link)) out.push(`the runtime stage does not run "${link}"`);
    return out;
  };
  const dockerfile = readFileSync(path.join(REPO_DIR, 'Dockerfile'), 'utf8');

  test('the RDS bundle is a local CA of the runtime image, linked where sslrootcert points', () => {
    assert.deepEqual(problems(dockerfile), []);
  });

  /** Binaries some task definition starts that the image does not build and copy. */
  const missingBinaries = (text: string): string[] => {
    const build = text.replace(/\s*\\\n\s*/g, ' ');
    const started = new Set(
      appContainers(base.json, ctx.repository).flatMap((c) => invocations(c, ctx.specs).map((r) => r.command.binary)),
    );
    return [...started].filter(
      (b) => !new RegExp(`cargo build [^\\n]*--bin ${b}\\b`).test(build) || !new RegExp(`cp [^\\n]*target/release/${b}\\b[^\\n]* /out/`).test(build),
    );
  };

  test('the image builds every binary a task definition starts', () => {
    assert.deepEqual(missingBinaries(dockerfile), []);
  });

  test('fails on a binary the image leaves out', () => {
    const broken = dockerfile.replace('--bin accounts ', '');
    assert.notEqual(broken, dockerfile);
    assert.deepEqual(missingBinaries(broken), ['accounts']);
  });

  test('fails on the bundle copied straight to sslrootcert, outside the system store', () => {
    const broken = dockerfile.replace(/\/usr\/local\/share\/ca-certificates\/rds-global-bundle\.crt/, RDS_CA_BUNDLE);
    assert.notEqual(broken, dockerfile);
    assert.equal(problems(broken).length, 1, problems(broken).join('\n'));
  });
});

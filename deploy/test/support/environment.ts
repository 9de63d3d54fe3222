// "The task definitions set exactly the settings the binaries read." For every container running
// the project's image: which binaries (and subcommands) its command starts, and whether its
// environment, secrets and script exports match what those binaries accept (--help) plus the few
// variables their libraries read (each checked against that library's own source).
import { execFileSync } from 'node:child_process';
import { readFileSync } from 'node:fs';
import * as path from 'node:path';
import { BINARIES, type BinaryName, type BinarySpec, type CommandSpec } from './cli';
import { REPO_DIR, type TemplateJson } from './synth';
import { appContainers, type Container } from './template';

/** Connection settings: a deployment must always name them (their defaults are localhost). */
const CONNECTION_SETTINGS = ['KAFKA_BROKERS', 'DATABASE_URL'];

/**
 * Variables a binary reads itself, outside clap (so not in its --help): which binary and
 * subcommand, the source file that must still read it, and what a value must look like.
 */
const SOURCE_VARIABLES: readonly {
  readonly name: string;
  readonly binary: BinaryName;
  readonly subcommand: string;
  readonly file: string;
  readonly value: RegExp;
}[] = [
  // The account shard count `stackctl prepare` creates `accounts` and `account_events` with.
  { name: 'ACCOUNT_SHARDS', binary: 'stackctl', subcommand: 'prepare', file: 'infra/src/bin/stackctl.rs', value: /^[1-9]\d*$/ },
];

export interface Invocation {
  readonly command: CommandSpec;
  readonly flags: readonly string[];
}

/** The binaries a container's command starts: `engine`, or each line of a `bash -c` script. */
export function invocations(c: Container, specs: ReadonlyMap<BinaryName, BinarySpec>): Invocation[] {
  const words = c.command[0] === 'bash' && c.command[1] === '-c' ? null : c.command;
  const segments = words !== null ? [words.join(' ')] : (c.command[2] ?? '').split(/\n|&&|\|\||;/);
  const out: Invocation[] = [];
  for (const segment of segments) {
    const tokens = segment.trim().replace(/^exec\s+/, '').split(/\s+/);
    const binary = BINARIES.find((b) => b === tokens[0]);
    if (binary === undefined) continue;
    const spec = specs.get(binary)!;
    const sub =
      tokens[1] === undefined
        ? undefined
        : (spec.subcommands.get(`${tokens[1]} ${tokens[2] ?? ''}`) ?? spec.subcommands.get(tokens[1]));
    out.push({ command: sub ?? spec.root, flags: tokens.filter((t) => t.startsWith('--')) });
  }
  return out;
}

/** Variables a container's own script reads (`$NAME`, `${NAME...}`) or exports. */
function scriptVariables(c: Container): { read: Set<string>; exported: Set<string> } {
  const script = c.command[0] === 'bash' ? (c.command[2] ?? '') : '';
  const read = new Set([...script.matchAll(/\$\{?([A-Z][A-Z0-9_]*)/g)].map((m) => m[1]!));
  const exported = new Set([...script.matchAll(/export ([A-Z][A-Z0-9_]*)/g)].map((m) => m[1]!));
  return { read, exported };
}

/** Problems with one template's app containers; empty when every setting is right. */
export function environmentProblems(
  json: TemplateJson,
  repository: string,
  specs: ReadonlyMap<BinaryName, BinarySpec>,
  library: LibraryVariables = libraryVariables(),
): string[] {
  const problems: string[] = [];
  for (const c of appContainers(json, repository)) {
    const where = `${c.taskId}/${c.name}`;
    const runs = invocations(c, specs);
    if (runs.length === 0) {
      // A helper (the load generator's volume setup): it must not carry settings either.
      for (const name of [...Object.keys(c.environment), ...c.secrets]) {
        problems.push(`${where}: sets ${name} but starts none of ${BINARIES.join(', ')}`);
      }
      continue;
    }
    const script = scriptVariables(c);
    const set = new Set([...Object.keys(c.environment), ...c.secrets, ...script.exported]);
    const accepted = new Set(runs.flatMap((r) => r.command.settings.map((s) => s.env)));
    for (const name of set) {
      if (accepted.has(name) || script.read.has(name)) continue;
      const own = SOURCE_VARIABLES.find(
        (v) => v.name === name && runs.some((r) => r.command.binary === v.binary && r.command.subcommand === v.subcommand),
      );
      if (own !== undefined) {
        const source = readFileSync(path.join(REPO_DIR, own.file), 'utf8');
        const value = c.environment[name];
        if (!source.includes(`env::var("${name}")`)) problems.push(`${where}: ${own.file} no longer reads ${name}`);
        else if (typeof value !== 'string' || !own.value.test(value)) {
          problems.push(`${where}: ${name}=${JSON.stringify(value)} is not what ${own.binary} ${own.subcommand} accepts`);
        }
        continue;
      }
      const why = library.explain(name, c.environment[name]);
      if (why === undefined) {
        problems.push(`${where}: sets ${name}, which none of ${describe(runs)} reads`);
      } else if (why !== true) {
        problems.push(`${where}: ${name}: ${why}`);
      }
    }
    for (const run of runs) {
      for (const s of run.command.settings) {
        const given = set.has(s.env) || run.flags.includes(s.flag);
        const localDefault = s.defaultValue !== undefined && /127\.0\.0\.1|localhost/.test(s.defaultValue);
        if (given) continue;
        if (s.required) problems.push(`${where}: ${describe([run])} requires ${s.env} (${s.flag}), not set`);
        else if (CONNECTION_SETTINGS.includes(s.env) || localDefault) {
          problems.push(`${where}: ${describe([run])} would use ${s.env}=${s.defaultValue ?? '(none)'}; set it`);
        }
      }
      for (const flag of run.command.requiredFlags) {
        const setting = run.command.settings.find((s) => s.flag === flag);
        if (setting === undefined && !run.flags.includes(flag)) {
          problems.push(`${where}: ${describe([run])} requires ${flag}, not given`);
        }
      }
    }
  }
  return problems;
}

function describe(runs: Invocation[]): string {
  return runs.map((r) => [r.command.binary, r.command.subcommand].filter(Boolean).join(' ')).join(', ');
}

/**
 * Variables read by libraries rather than by clap. `explain` returns true when `name` is one of
 * them and its value is acceptable, a problem sentence when the value is not, undefined when no
 * library reads it.
 */
export interface LibraryVariables {
  explain(name: string, value: unknown): true | string | undefined;
}

export function libraryVariables(): LibraryVariables {
  const sources = crateSources(['rdkafka-sys', 'sqlx-postgres', 'tokio']);
  const telemetry = readFileSync(path.join(REPO_DIR, 'infra', 'src', 'telemetry.rs'), 'utf8');
  const kafkaRs = readFileSync(path.join(REPO_DIR, 'infra', 'src', 'kafka.rs'), 'utf8');
  const librdkafka = rdkafkaProperties(path.join(sources['rdkafka-sys']!, 'librdkafka', 'CONFIGURATION.md'));
  const sqlxOptions = readFileSync(path.join(sources['sqlx-postgres']!, 'src', 'options', 'mod.rs'), 'utf8');
  return {
    explain(name, value) {
      const kafka = /^(KAFKA_CFG_|KAFKA_PRODUCER_CFG_|KAFKA_CONSUMER_CFG_)([A-Z0-9_]+)$/.exec(name);
      if (kafka !== null) {
        if (!kafkaRs.includes(`"${kafka[1]}"`)) return `infra/src/kafka.rs no longer reads ${kafka[1]}*`;
        const property = kafka[2]!.toLowerCase().replaceAll('_', '.');
        const known = librdkafka.get(property);
        if (known === undefined) return `librdkafka has no property ${property}`;
        if (typeof value === 'string' && known.length > 0 && !known.includes(value.toLowerCase())) {
          return `librdkafka's ${property} takes ${known.join(', ')}, not ${value}`;
        }
        return true;
      }
      if (/^PG[A-Z]+$/.test(name)) {
        return sqlxOptions.includes(`var("${name}")`) ? true : `sqlx-postgres does not read ${name}`;
      }
      if (name === 'RUST_LOG') return telemetry.includes('from_default_env') ? true : 'RUST_LOG is not read';
      if (name === 'LOG_FORMAT') return telemetry.includes('"LOG_FORMAT"') ? true : 'LOG_FORMAT is not read';
      if (name === 'TOKIO_WORKER_THREADS') return true;
      return undefined;
    },
  };
}

/** librdkafka property -> its allowed values (empty: free-form), from CONFIGURATION.md. */
function rdkafkaProperties(file: string): Map<string, string[]> {
  const out = new Map<string, string[]>();
  for (const line of readFileSync(file, 'utf8').split('\n')) {
    const cells = line.split('|').map((c) => c.trim());
    if (cells.length < 5 || !/^[a-z][a-z0-9.]*$/.test(cells[0]!)) continue;
    const range = cells[2]!;
    const values = /^[a-z0-9_]+(, [a-z0-9_]+)+$/i.test(range) ? range.toLowerCase().split(', ') : [];
    out.set(cells[0]!, values);
  }
  return out;
}

/**
 * Source directories of crates in the workspace's lock file (cargo metadata, offline). Only the
 * host's packages: `cargo build` downloads no others (native-tls's macOS and Windows backends),
 * and without the filter cargo metadata wants every package of the lock file.
 */
function crateSources(names: string[]): Record<string, string> {
  const host = /^host: (\S+)$/m.exec(execFileSync('rustc', ['-vV']).toString())![1]!;
  const metadata = JSON.parse(
    execFileSync('cargo', ['metadata', '--format-version', '1', '--offline', '--filter-platform', host], {
      cwd: REPO_DIR,
      maxBuffer: 64 * 1024 * 1024,
    }).toString(),
  ) as { packages: { name: string; manifest_path: string }[] };
  const out: Record<string, string> = {};
  for (const name of names) {
    const pkg = metadata.packages.find((p) => p.name === name);
    if (pkg === undefined) throw new Error(`cargo metadata lists no ${name}`);
    out[name] = path.dirname(pkg.manifest_path);
  }
  return out;
}

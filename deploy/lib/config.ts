// Every parameter of a deployment, read from CDK context (`-c key=value`, cdk.json, or a
// cdk.context.json of the operator's). Nothing account-, region- or secret-specific has a default:
// the same app synthesizes for any account, region and stage. docs/DEPLOY.md lists each key.
//
// Identity keys are flat strings (`account`, `region`, `stage`, `certificateArn`,
// `imageRepository`, `imageTag`, `cpuArchitecture`). Each section (`network`, `kafka`, `database`,
// `engine`, `accounts`, `gateway`, `alb`, `observability`, `loadtest`) is an object, or a JSON
// string of one on the command line, merged over the defaults below; an unknown key is an error,
// so a typo never silently falls back to a default.

export type EngineLayout =
  /** One ECS service per pair (static mode, `ENGINE_PAIRS=SYMBOL`), as in the talk. */
  | { readonly kind: 'per-pair' }
  /** One service per group of pairs (static mode, `ENGINE_PAIRS=A,B`). */
  | { readonly kind: 'groups'; readonly groups: readonly (readonly string[])[] }
  /** One service of `tasks` tasks sharing every pair through the `engine` consumer group. */
  | { readonly kind: 'consumer-group'; readonly tasks: number };

export type AccountsLayout =
  /** One ECS service per account shard (`ACCOUNTS_SHARDS=N`, one task), as engines per pair. */
  | { readonly kind: 'per-shard' }
  /** One service per group of shards (`ACCOUNTS_SHARDS=0,1`). */
  | { readonly kind: 'groups'; readonly groups: readonly (readonly number[])[] };

export interface ExistingVpcConfig {
  readonly vpcId: string;
  readonly vpcCidr: string;
  readonly availabilityZones: readonly string[];
  readonly publicSubnetIds: readonly string[];
  readonly privateSubnetIds: readonly string[];
  readonly isolatedSubnetIds: readonly string[];
  /** Subnets for gateway tasks only, one per AZ, together inside one /26 (see network.ts). */
  readonly gatewaySubnetIds: readonly string[];
  readonly gatewaySubnetCidrs: readonly string[];
}

export interface NetworkConfig {
  readonly vpcCidr: string;
  /** One per AZ, so losing an AZ never cuts the others' egress (image pulls, AWS APIs). */
  readonly natGateways: number;
  readonly existing?: ExistingVpcConfig;
}

export interface KafkaConfig {
  /** Existing brokers instead of an MSK cluster created here. */
  readonly bootstrapBrokers?: string;
  /** With `bootstrapBrokers`: a secret `{username, password}` turns on SASL_SSL + SCRAM-SHA-512. */
  readonly scramSecretArn?: string;
  readonly instanceType: string;
  readonly brokersPerAz: number;
  readonly volumeGiB: number;
  readonly kafkaVersion: string;
}

export interface DatabaseConfig {
  /** Without the `db.` prefix. */
  readonly instanceType: string;
  readonly readers: number;
  readonly backupRetentionDays: number;
  readonly engineVersion: string;
  /** Aurora I/O-Optimized: no per-I/O charge; cheaper at this write rate (docs/DEPLOY.md). */
  readonly ioOptimized: boolean;
}

export interface EngineConfig {
  readonly layout: EngineLayout;
  readonly cpu: number;
  readonly memoryMiB: number;
  /** Extra settings, e.g. `ENGINE_COMMIT_INTERVAL_MS`; checked against `engine --help` by the tests. */
  readonly env: Readonly<Record<string, string>>;
}

export interface AccountsConfig {
  /**
   * ACCOUNT_SHARDS: partitions of the `accounts` and `account_events` topics, which `stackctl
   * prepare` creates once. An account's shard is its id modulo this count, so it never changes
   * after the first deploy (prepare refuses another count, and every new task with it).
   */
  readonly shards: number;
  readonly layout: AccountsLayout;
  readonly cpu: number;
  readonly memoryMiB: number;
  /** Extra `ACCOUNTS_*` settings; checked against `accounts run --help` by the tests. */
  readonly env: Readonly<Record<string, string>>;
}

export interface GatewayConfig {
  readonly minTasks: number;
  readonly maxTasks: number;
  readonly cpu: number;
  readonly memoryMiB: number;
  readonly cpuTargetPercent: number;
  readonly connectionsTargetPerTask: number;
  /** Open files per task: one per WebSocket plus Kafka and PostgreSQL sockets. */
  readonly nofile: number;
  readonly stopTimeoutS: number;
  /** Extra `GW_*` settings; checked against `gateway --help` by the tests. */
  readonly env: Readonly<Record<string, string>>;
}

export interface AlbConfig {
  readonly idleTimeoutS: number;
  readonly deregistrationDelayS: number;
  readonly allowedCidrs: readonly string[];
}

export interface ObservabilityConfig {
  readonly logRetentionDays: number;
  readonly adotImage: string;
  readonly alarmEmail?: string;
  readonly shedPercentMax: number;
  readonly consumerLagRecordsMax: number;
  readonly target5xxPerMinuteMax: number;
  readonly auroraCpuPercentMax: number;
}

export interface LoadtestConfig {
  readonly enabled: boolean;
  readonly cpu: number;
  readonly memoryMiB: number;
  readonly awsCliImage: string;
  readonly env: Readonly<Record<string, string>>;
}

export interface DeployConfig {
  readonly stage: string;
  readonly account: string;
  readonly region: string;
  readonly certificateArn: string;
  readonly imageRepository: string;
  readonly imageTag: string;
  readonly cpuArchitecture: 'X86_64' | 'ARM64';
  readonly network: NetworkConfig;
  readonly kafka: KafkaConfig;
  readonly database: DatabaseConfig;
  readonly engine: EngineConfig;
  readonly accounts: AccountsConfig;
  readonly gateway: GatewayConfig;
  readonly alb: AlbConfig;
  readonly observability: ObservabilityConfig;
  readonly loadtest: LoadtestConfig;
}

/** Sizes for the design load of 1.6M events/min (docs/DEPLOY.md, "What it costs"). */
export const DEFAULTS = {
  network: { vpcCidr: '10.0.0.0/16', natGateways: 3 } satisfies NetworkConfig,
  kafka: {
    instanceType: 'kafka.m7g.large',
    brokersPerAz: 1,
    volumeGiB: 100,
    kafkaVersion: '3.9.x',
  } satisfies KafkaConfig,
  database: {
    instanceType: 'r7g.large',
    readers: 1,
    backupRetentionDays: 7,
    engineVersion: '16.13',
    ioOptimized: true,
  } satisfies DatabaseConfig,
  engine: {
    layout: { kind: 'per-pair' },
    cpu: 512,
    memoryMiB: 1024,
    env: {},
  } satisfies EngineConfig,
  accounts: {
    shards: 4,
    layout: { kind: 'per-shard' },
    cpu: 512,
    memoryMiB: 1024,
    env: {},
  } satisfies AccountsConfig,
  gateway: {
    minTasks: 3,
    maxTasks: 12,
    cpu: 1024,
    memoryMiB: 2048,
    cpuTargetPercent: 50,
    connectionsTargetPerTask: 5000,
    nofile: 1_048_576,
    stopTimeoutS: 30,
    env: {},
  } satisfies GatewayConfig,
  alb: {
    idleTimeoutS: 120,
    deregistrationDelayS: 10,
    allowedCidrs: ['0.0.0.0/0'],
  } satisfies AlbConfig,
  observability: {
    logRetentionDays: 30,
    adotImage: 'public.ecr.aws/aws-observability/aws-otel-collector:v0.49.0',
    shedPercentMax: 1,
    consumerLagRecordsMax: 10_000,
    target5xxPerMinuteMax: 10,
    auroraCpuPercentMax: 80,
  } satisfies ObservabilityConfig,
  loadtest: {
    enabled: true,
    cpu: 2048,
    memoryMiB: 4096,
    awsCliImage: 'public.ecr.aws/aws-cli/aws-cli:2.31.39',
    env: {},
  } satisfies LoadtestConfig,
} as const;

/** Keys a section accepts beyond its defaults (no default: absent means "not used"). */
const OPTIONAL_KEYS: Record<keyof typeof DEFAULTS, Record<string, 'string' | 'object'>> = {
  network: { existing: 'object' },
  kafka: { bootstrapBrokers: 'string', scramSecretArn: 'string' },
  database: {},
  engine: {},
  accounts: {},
  gateway: {},
  alb: {},
  observability: { alarmEmail: 'string' },
  loadtest: {},
};

/** Reads context values; `node.tryGetContext` in the app, a plain object in tests. */
export type ContextReader = (key: string) => unknown;

export function configFromContext(get: ContextReader): DeployConfig {
  const required = (key: string): string => {
    const value = get(key);
    if (typeof value !== 'string' || value.trim() === '') {
      throw new Error(`context '${key}' is required (cdk synth -c ${key}=...; docs/DEPLOY.md)`);
    }
    return value;
  };
  const account = required('account');
  if (!/^\d{12}$/.test(account)) throw new Error(`context 'account': 12 digits, got '${account}'`);
  const region = required('region');
  const stage = typeof get('stage') === 'string' ? String(get('stage')) : 'prod';
  if (!/^[a-z][a-z0-9-]{0,15}$/.test(stage)) {
    throw new Error(`context 'stage': lower-case letters, digits and '-', at most 16, got '${stage}'`);
  }
  const cpuArchitecture = get('cpuArchitecture') ?? 'X86_64';
  if (cpuArchitecture !== 'X86_64' && cpuArchitecture !== 'ARM64') {
    throw new Error(`context 'cpuArchitecture': X86_64 or ARM64, got '${String(cpuArchitecture)}'`);
  }
  const imageTag = required('imageTag');
  if (imageTag === 'latest') {
    throw new Error("context 'imageTag': name an immutable tag (a commit), not 'latest'");
  }
  const config: DeployConfig = {
    stage,
    account,
    region,
    certificateArn: required('certificateArn'),
    imageRepository: required('imageRepository'),
    imageTag,
    cpuArchitecture,
    network: section(get, 'network'),
    kafka: section(get, 'kafka'),
    database: section(get, 'database'),
    engine: section(get, 'engine'),
    accounts: section(get, 'accounts'),
    gateway: section(get, 'gateway'),
    alb: section(get, 'alb'),
    observability: section(get, 'observability'),
    loadtest: section(get, 'loadtest'),
  };
  validate(config);
  return config;
}

interface Sections {
  network: NetworkConfig;
  kafka: KafkaConfig;
  database: DatabaseConfig;
  engine: EngineConfig;
  accounts: AccountsConfig;
  gateway: GatewayConfig;
  alb: AlbConfig;
  observability: ObservabilityConfig;
  loadtest: LoadtestConfig;
}

function section<K extends keyof Sections>(get: ContextReader, name: K): Sections[K] {
  const defaults: Record<string, unknown> = DEFAULTS[name];
  let raw: unknown = get(name) ?? {};
  if (typeof raw === 'string') {
    try {
      raw = JSON.parse(raw) as unknown;
    } catch (err) {
      throw new Error(`context '${name}': not JSON: ${(err as Error).message}`, { cause: err });
    }
  }
  if (typeof raw !== 'object' || raw === null || Array.isArray(raw)) {
    throw new Error(`context '${name}': expected an object`);
  }
  const merged: Record<string, unknown> = { ...defaults };
  for (const [key, value] of Object.entries(raw as Record<string, unknown>)) {
    const expected = key in defaults ? kindOf(defaults[key]) : OPTIONAL_KEYS[name][key];
    if (expected === undefined) {
      const known = [...Object.keys(defaults), ...Object.keys(OPTIONAL_KEYS[name])];
      throw new Error(`context '${name}.${key}': unknown key (known: ${known.join(', ')})`);
    }
    if (kindOf(value) !== expected) {
      throw new Error(`context '${name}.${key}': expected ${expected}, got ${kindOf(value)}`);
    }
    merged[key] = value;
  }
  return merged as unknown as Sections[K];
}

function kindOf(value: unknown): string {
  if (Array.isArray(value)) return 'array';
  if (value === null) return 'null';
  return typeof value;
}

function validate(c: DeployConfig): void {
  const fail = (msg: string): never => {
    throw new Error(`invalid deployment parameters: ${msg}`);
  };
  if (!/^arn:aws[a-z-]*:acm:[a-z0-9-]+:\d{12}:certificate\/[\w-]+$/.test(c.certificateArn)) {
    fail(`certificateArn is not an ACM certificate ARN: ${c.certificateArn}`);
  }
  if (c.kafka.scramSecretArn !== undefined && c.kafka.bootstrapBrokers === undefined) {
    fail('kafka.scramSecretArn is for existing brokers: set kafka.bootstrapBrokers too');
  }
  if (c.kafka.brokersPerAz < 1 || !Number.isInteger(c.kafka.brokersPerAz)) {
    fail('kafka.brokersPerAz must be a whole number >= 1 (brokers = 3 x brokersPerAz)');
  }
  if (c.database.readers < 1) fail('database.readers must be >= 1: the writer fails over to a reader');
  if (c.database.backupRetentionDays < 1) fail('database.backupRetentionDays must be >= 1');
  if (c.gateway.minTasks < 3) fail('gateway.minTasks must be >= 3 (one per availability zone)');
  if (c.gateway.maxTasks < c.gateway.minTasks) fail('gateway.maxTasks is below gateway.minTasks');
  if (c.gateway.stopTimeoutS > 120) fail('gateway.stopTimeoutS: Fargate allows at most 120 s');
  if (c.alb.deregistrationDelayS > c.gateway.stopTimeoutS) {
    fail('alb.deregistrationDelayS must not exceed gateway.stopTimeoutS');
  }
  if (c.alb.allowedCidrs.length === 0) fail('alb.allowedCidrs is empty: nobody could connect');
  if (c.engine.layout.kind === 'consumer-group' && !(c.engine.layout.tasks >= 1)) {
    fail('engine.layout.tasks must be >= 1');
  }
  if (!['per-pair', 'groups', 'consumer-group'].includes(c.engine.layout.kind)) {
    fail(`engine.layout.kind: per-pair, groups or consumer-group, got '${c.engine.layout.kind}'`);
  }
  if (!Number.isInteger(c.accounts.shards) || c.accounts.shards < 1) {
    fail('accounts.shards must be a whole number >= 1 (partitions of `accounts`, fixed at the first deploy)');
  }
  if (!['per-shard', 'groups'].includes(c.accounts.layout.kind)) {
    fail(`accounts.layout.kind: per-shard or groups, got '${c.accounts.layout.kind}'`);
  }
  // The construct owns these: shard ownership comes from the layout, and the health check and
  // the metrics collector use the port the construct sets.
  for (const owned of ['ACCOUNTS_SHARDS', 'METRICS_ADDR']) {
    if (owned in c.accounts.env) fail(`accounts.env.${owned}: set by the accounts layout, not by env`);
  }
  for (const [name, env] of [
    ['engine', c.engine.env],
    ['accounts', c.accounts.env],
    ['gateway', c.gateway.env],
    ['loadtest', c.loadtest.env],
  ] as const) {
    for (const [key, value] of Object.entries(env)) {
      if (!/^[A-Z][A-Z0-9_]*$/.test(key) || typeof value !== 'string') {
        fail(`${name}.env.${key}: names are upper-case, values strings`);
      }
    }
  }
}

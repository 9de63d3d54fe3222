// The operations strip's figures from `GET /ops/metrics` (docs/API.md, "Operator endpoints"):
// the Prometheus text of the gateway and of the services behind it, turned into rates between
// two polls. Metric names as in docs/METRICS.md.

export interface Sample {
  name: string;
  labels: Record<string, string>;
  value: number;
}

/** Prometheus text exposition: one sample per line, comments skipped. */
export function parseProm(text: string): Sample[] {
  const out: Sample[] = [];
  for (const line of text.split('\n')) {
    if (line === '' || line.startsWith('#')) continue;
    const m = /^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})?\s+(\S+)/.exec(line);
    if (!m?.[1] || m[3] === undefined) continue;
    const labels: Record<string, string> = {};
    for (const l of (m[2] ?? '').matchAll(/([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"/g)) {
      if (l[1] !== undefined && l[2] !== undefined) labels[l[1]] = l[2];
    }
    out.push({ name: m[1], labels, value: Number(m[3]) });
  }
  return out;
}

export interface OpsSource {
  name: string;
  text?: string;
  error?: string;
}

export interface Reading {
  tsMs: number;
  produced: number;
  shed: number;
  verdictSum: number;
  verdictCount: number;
  verdictP99S: number | null;
  engineLag: number | null;
  accountsLag: number | null;
  errors: string[];
}

function sum(samples: Sample[], name: string): number | null {
  const hits = samples.filter((s) => s.name === name && Number.isFinite(s.value));
  return hits.length === 0 ? null : hits.reduce((a, s) => a + s.value, 0);
}

export function reading(tsMs: number, sources: OpsSource[]): Reading {
  const samples = sources.flatMap((s) => (s.text ? parseProm(s.text) : []));
  const p99 = samples.find((s) => s.name === 'gateway_verdict_seconds' && s.labels.quantile === '0.99');
  return {
    tsMs,
    produced: sum(samples, 'gateway_commands_produced_total') ?? 0,
    shed: sum(samples, 'gateway_shed_total') ?? 0,
    verdictSum: sum(samples, 'gateway_verdict_seconds_sum') ?? 0,
    verdictCount: sum(samples, 'gateway_verdict_seconds_count') ?? 0,
    verdictP99S: p99 && Number.isFinite(p99.value) ? p99.value : null,
    engineLag: sum(samples, 'engine_consumer_lag_records'),
    accountsLag: sum(samples, 'accounts_consumer_lag_records'),
    errors: sources.filter((s) => s.error).map((s) => `${s.name}: ${s.error ?? ''}`),
  };
}

export interface Strip {
  commandsPerS: number;
  shedPerS: number;
  /** Share of commands refused (shed / (shed + produced)) over the interval, 0..1. */
  shedShare: number;
  verdictMeanMs: number | null;
  verdictP99Ms: number | null;
  engineLag: number | null;
  accountsLag: number | null;
}

/** Rates between two readings (counters that went down, after a restart, count from zero). */
export function strip(prev: Reading, cur: Reading): Strip {
  const dtS = Math.max((cur.tsMs - prev.tsMs) / 1000, 0.001);
  const inc = (a: number, b: number) => (b >= a ? b - a : b);
  const produced = inc(prev.produced, cur.produced);
  const shed = inc(prev.shed, cur.shed);
  const count = inc(prev.verdictCount, cur.verdictCount);
  const verdictS = inc(prev.verdictSum, cur.verdictSum);
  return {
    commandsPerS: produced / dtS,
    shedPerS: shed / dtS,
    shedShare: produced + shed > 0 ? shed / (produced + shed) : 0,
    verdictMeanMs: count > 0 ? (verdictS / count) * 1000 : null,
    verdictP99Ms: cur.verdictP99S === null ? null : cur.verdictP99S * 1000,
    engineLag: cur.engineLag,
    accountsLag: cur.accountsLag,
  };
}

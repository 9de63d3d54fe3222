// What the binaries accept, read from their own clap definitions: `<binary> [subcommand] --help`
// prints `[env: NAME=]` and `[default: ...]` beside every flag that has them, and the usage line
// names the required flags. No list here is kept by hand.
import { execFileSync } from 'node:child_process';
import { existsSync } from 'node:fs';
import * as path from 'node:path';
import { REPO_DIR } from './synth';

export const BINARIES = ['engine', 'gateway', 'accounts', 'stackctl', 'loadtest'] as const;
export type BinaryName = (typeof BINARIES)[number];

export interface Setting {
  readonly env: string;
  readonly flag: string;
  readonly defaultValue?: string;
  /** Named in the usage line outside brackets: clap refuses to start without it. */
  readonly required: boolean;
}

export interface CommandSpec {
  readonly binary: BinaryName;
  readonly subcommand?: string;
  readonly settings: readonly Setting[];
  readonly requiredFlags: readonly string[];
}

export interface BinarySpec {
  readonly root: CommandSpec;
  readonly subcommands: ReadonlyMap<string, CommandSpec>;
}

export function binDir(): string {
  return process.env.TRADING_BIN_DIR ?? path.join(REPO_DIR, 'target', 'debug');
}

function help(binary: BinaryName, args: string[]): string {
  const file = path.join(binDir(), binary);
  if (!existsSync(file)) {
    throw new Error(`${file} is missing: build the binaries first (cargo build --bins)`);
  }
  // A clean environment: clap would print the values of variables that happen to be set.
  return execFileSync(file, [...args, '--help'], { env: { PATH: process.env.PATH ?? '/usr/bin:/bin' } }).toString();
}

/** The parts of one `--help` text the checks need. */
export function parseHelp(text: string): { settings: Setting[]; requiredFlags: string[]; subcommands: string[] } {
  const lines = text.split('\n');
  const usageStart = lines.findIndex((l) => l.startsWith('Usage:'));
  const usage: string[] = [];
  for (let i = usageStart; i >= 0 && i < lines.length && lines[i]!.trim() !== ''; i++) usage.push(lines[i]!);
  // Flags outside [...] in the usage line are required.
  const requiredFlags = [...usage.join(' ').replace(/\[[^\]]*\]/g, '').matchAll(/(--[a-z0-9-]+)/g)].map((m) => m[1]!);

  const subcommands: string[] = [];
  const commandsAt = lines.findIndex((l) => l.trim() === 'Commands:');
  for (let i = commandsAt + 1; commandsAt >= 0 && i < lines.length && lines[i]!.trim() !== ''; i++) {
    const name = /^\s{2}([a-z][a-z0-9-]*)\s/.exec(lines[i]!)?.[1];
    if (name !== undefined && name !== 'help') subcommands.push(name);
  }

  // Each option's block runs from its `--flag` line to the next one.
  const settings: Setting[] = [];
  let block: string[] = [];
  const flush = (): void => {
    const text = block.join(' ');
    const flag = /^\s*(?:-\w, )?(--[a-z0-9-]+)/.exec(block[0] ?? '')?.[1];
    const env = /\[env: ([A-Z][A-Z0-9_]*)(?:=[^\]]*)?\]/.exec(text)?.[1];
    if (flag !== undefined && env !== undefined) {
      const defaultValue = /\[default: ([^\]]*)\]/.exec(text)?.[1];
      settings.push({
        env,
        flag,
        required: requiredFlags.includes(flag),
        ...(defaultValue === undefined ? {} : { defaultValue }),
      });
    }
    block = [];
  };
  for (const line of lines) {
    if (/^\s{2,}(?:-\w, )?--[a-z0-9-]+/.test(line) || /^\S/.test(line)) flush();
    if (/^\s{2,}(?:-\w, )?--[a-z0-9-]+/.test(line) || block.length > 0) block.push(line);
  }
  flush();
  return { settings, requiredFlags, subcommands };
}

let cache: ReadonlyMap<BinaryName, BinarySpec> | undefined;

/** Every binary's settings, root command and subcommands, from the built binaries. */
export function binarySpecs(): ReadonlyMap<BinaryName, BinarySpec> {
  if (cache !== undefined) return cache;
  const specs = new Map<BinaryName, BinarySpec>();
  for (const binary of BINARIES) {
    const root = parseHelp(help(binary, []));
    const subcommands = new Map<string, CommandSpec>();
    for (const sub of root.subcommands) {
      const parsed = parseHelp(help(binary, [sub]));
      subcommands.set(sub, { binary, subcommand: sub, settings: parsed.settings, requiredFlags: parsed.requiredFlags });
      // One level further (`gateway keys encrypt-existing`), named with its parent.
      for (const nested of parsed.subcommands) {
        const inner = parseHelp(help(binary, [sub, nested]));
        const name = `${sub} ${nested}`;
        subcommands.set(name, { binary, subcommand: name, settings: inner.settings, requiredFlags: inner.requiredFlags });
      }
    }
    specs.set(binary, {
      root: { binary, settings: root.settings, requiredFlags: root.requiredFlags },
      subcommands,
    });
  }
  cache = specs;
  return specs;
}

/**
 * A setting's value as the binary (or its `subcommand`) would see it: the task's, else the clap
 * default.
 */
export function effective(
  specs: ReadonlyMap<BinaryName, BinarySpec>,
  binary: BinaryName,
  env: string,
  taskEnv: Readonly<Record<string, unknown>>,
  subcommand?: string,
): string {
  const set = taskEnv[env];
  if (typeof set === 'string') return set;
  const spec = specs.get(binary);
  const command = subcommand === undefined ? spec?.root : spec?.subcommands.get(subcommand);
  const value = command?.settings.find((s) => s.env === env)?.defaultValue;
  const name = [binary, subcommand].filter(Boolean).join(' ');
  if (value === undefined) throw new Error(`${name} has no default for ${env} (--help)`);
  return value;
}

// Synthesizes the app in-process, as `cdk synth` does: the same feature flags (cdk.json), the same
// cached availability zones (cdk.context.json), placeholder parameters, and cdk-nag.
import { readFileSync } from 'node:fs';
import * as path from 'node:path';
import { App } from 'aws-cdk-lib';
import { Template } from 'aws-cdk-lib/assertions';
import { configFromContext } from '../../lib/config';
import { applyNag } from '../../lib/nag';
import { loadPairs, type Pair } from '../../lib/pairs';
import { TradingStack } from '../../lib/stack';

export const DEPLOY_DIR = path.resolve(__dirname, '..', '..');
export const REPO_DIR = path.resolve(DEPLOY_DIR, '..');

/** The placeholder parameters CI synthesizes with (scripts/test passes the same ones). */
export const PLACEHOLDERS: Readonly<Record<string, string>> = {
  account: '123456789012',
  region: 'eu-west-1',
  certificateArn: 'arn:aws:acm:eu-west-1:123456789012:certificate/00000000-0000-0000-0000-000000000000',
  imageRepository: 'trading-engine',
  imageTag: 'ci',
};

export interface Synthesized {
  readonly stack: TradingStack;
  readonly template: Template;
  /** The template as CloudFormation reads it. */
  readonly json: TemplateJson;
  readonly pairs: readonly Pair[];
}

export interface TemplateJson {
  Resources: Record<string, { Type: string; Properties?: Record<string, unknown>; DependsOn?: unknown; DeletionPolicy?: string }>;
  [key: string]: unknown;
}

function jsonFile(name: string): Record<string, unknown> {
  return JSON.parse(readFileSync(path.join(DEPLOY_DIR, name), 'utf8')) as Record<string, unknown>;
}

export function pairsOfRepo(): Pair[] {
  return loadPairs(path.join(REPO_DIR, 'config', 'pairs.toml'));
}

/**
 * Builds the app with `context` over the placeholders; `extend` may add constructs before
 * synthesis (to show a check rejecting something). Throws when cdk-nag reports an error.
 */
export function synth(
  context: Record<string, unknown> = {},
  extend?: (stack: TradingStack) => void,
  pairs: readonly Pair[] = pairsOfRepo(),
): Synthesized {
  const cdkJson = jsonFile('cdk.json');
  const app = new App({
    context: {
      ...(cdkJson.context as Record<string, unknown>),
      ...jsonFile('cdk.context.json'),
      ...PLACEHOLDERS,
      ...context,
    },
  });
  const config = configFromContext((key) => app.node.tryGetContext(key));
  const stack = new TradingStack(app, `Trading-${config.stage}`, {
    config,
    pairs,
    env: { account: config.account, region: config.region },
  });
  extend?.(stack);
  applyNag(app);
  const assembly = app.synth();
  const json = assembly.getStackByName(stack.stackName).template as TemplateJson;
  return { stack, template: Template.fromJSON(json), json, pairs };
}

/** A deep copy to break in a test. */
export function copy(json: TemplateJson): TemplateJson {
  return structuredClone(json);
}

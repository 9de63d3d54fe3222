// The CDK app: parameters from context (lib/config.ts, docs/DEPLOY.md), pairs from the repository's
// config/pairs.toml, cdk-nag's AwsSolutions rules over everything (an unsuppressed finding is an
// error, and `cdk synth` fails on errors).
import * as path from 'node:path';
import { App } from 'aws-cdk-lib';
import { configFromContext } from '../lib/config';
import { applyNag } from '../lib/nag';
import { loadPairs } from '../lib/pairs';
import { TradingStack } from '../lib/stack';

const app = new App();
const config = configFromContext((key) => app.node.tryGetContext(key));
const pairs = loadPairs(path.join(__dirname, '..', '..', 'config', 'pairs.toml'));
new TradingStack(app, `Trading-${config.stage}`, {
  config,
  pairs,
  env: { account: config.account, region: config.region },
  description: `Trading engine (${config.stage}): gateway, engine per pair, account stage, MSK, Aurora on ECS Fargate`,
});
applyNag(app);

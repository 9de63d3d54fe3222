// cdk-nag's AwsSolutions rules run over the whole app; an unacknowledged finding is an error and
// `cdk synth` fails on it. Every acknowledgement below names the exact construct (never the whole
// stack) and says why the finding is accepted. docs/DEPLOY.md, "Security", repeats the list.
import { type App, CfnElement, type Stack, Validations } from 'aws-cdk-lib';
import * as ecs from 'aws-cdk-lib/aws-ecs';
import type { IConstruct } from 'constructs';
import { AwsSolutionsChecks } from 'cdk-nag';

export function applyNag(app: App): void {
  Validations.of(app).addPlugins(new AwsSolutionsChecks(app, { verbose: true }));
}

function acknowledge(scope: IConstruct | undefined, id: string, reason: string): void {
  if (scope === undefined) throw new Error(`nothing to acknowledge ${id} on`);
  Validations.of(scope).acknowledge({ id, reason });
}

/** Finds a construct by its path below `stack` (e.g. `Database/Cluster/Secret`). */
function at(stack: Stack, path: string): IConstruct | undefined {
  return stack.node.tryFindChild(path.split('/')[0]!) === undefined
    ? undefined
    : path.split('/').reduce<IConstruct | undefined>((node, part) => node?.node.tryFindChild(part), stack);
}

export function suppressFindings(stack: Stack): void {
  for (const task of stack.node.findAll().filter((c): c is ecs.TaskDefinition => c instanceof ecs.TaskDefinition)) {
    acknowledge(
      task,
      'AwsSolutions-ECS2',
      'The environment holds configuration only (broker and database addresses, pair ownership, ' +
        'GW_*/ENGINE_* limits), which the services read from the environment by design ' +
        '(docs/ARCHITECTURE.md); every credential comes from Secrets Manager as an ECS secret.',
    );
    acknowledge(
      task.executionRole,
      'AwsSolutions-IAM5[Resource::*]',
      'ecr:GetAuthorizationToken has no resource-level permissions (IAM reference for Amazon ECR): ' +
        'it must be granted on "*". The image pull itself is limited to the one repository.',
    );
  }
  acknowledge(
    at(stack, 'Gateway/AlbSg'),
    'AwsSolutions-EC23',
    'The public ALB is the trading API: port 443 (TLS) is open to alb.allowedCidrs, the internet by ' +
      'default. No other port and no other security group is open to the internet (tested).',
  );
  acknowledge(
    at(stack, 'Database/Cluster/Secret'),
    'AwsSolutions-SMG4',
    'The services read the database password once, at task start (ECS secrets); a rotation would ' +
      'break new connections of running tasks until they restart. Rotate by hand with a rolling ' +
      'redeploy (docs/DEPLOY.md, "Secrets").',
  );
  acknowledge(
    at(stack, 'ApiKeys/Secret'),
    'AwsSolutions-SMG4',
    'The key-encryption key cannot rotate by itself: the sealed HMAC secrets must be re-sealed ' +
      '(`gateway keys encrypt-existing`) between the two redeploys of a rotation, which the operator ' +
      'runs (docs/DEPLOY.md, "API keys").',
  );
  const scram = at(stack, 'Streaming/ScramSecret'); // absent with existing brokers
  if (scram !== undefined) {
    acknowledge(
      scram,
      'AwsSolutions-SMG4',
      'Same as the database secret: read at task start; rotate by hand with a rolling redeploy.',
    );
  }
  acknowledge(
    at(stack, 'Database/Cluster'),
    'AwsSolutions-RDS6',
    'sqlx, the services\' PostgreSQL client, has no IAM token authentication; the password lives in ' +
      'Secrets Manager and the cluster is reachable only from the services\' security groups.',
  );
  // aws-cdk-lib's own CloudFormation validation warns on every literal availability zone.
  for (const instance of ['Writer', 'Reader1']) {
    const db = at(stack, `Database/Cluster/${instance}`);
    if (db === undefined) continue;
    Validations.of(db).acknowledge({
      id: 'CloudFormation-Validate::W3010',
      reason:
        'Writer and reader are placed in different AZs on purpose (an AZ loss leaves the other); ' +
        'the zones come from the context lookup (cdk.context.json), never typed into the code.',
    });
  }
  const loadtestRole = at(stack, 'Loadtest/Task/TaskRole');
  const reports = at(stack, 'Loadtest/Reports/Resource');
  if (loadtestRole !== undefined && reports instanceof CfnElement) {
    acknowledge(
      loadtestRole,
      'AwsSolutions-IAM5[Action::s3:Abort*]',
      'Multipart uploads of report files (grantPut); the role can only write into the reports bucket.',
    );
    acknowledge(
      loadtestRole,
      `AwsSolutions-IAM5[Resource::<${stack.getLogicalId(reports)}.Arn>/*]`,
      'Reports land under <run id>/<task id>/, chosen at run time: the role writes objects of this ' +
        'one bucket, no other bucket, and reads nothing.',
    );
  }
  // Lambda functions CDK adds for deploy-time work: the MSK bootstrap-broker lookup
  // (AwsCustomResource) and the log retention of Aurora's exported logs.
  for (const id of ['AWS679f53fac002430cb0da5b7982bd2287', 'LogRetentionaae0aa3c5b4d4f87b02d85b201efdd8a']) {
    const provider = stack.node.tryFindChild(id);
    if (provider === undefined) continue;
    acknowledge(
      provider,
      'AwsSolutions-IAM4[Policy::arn:<AWS::Partition>:iam::aws:policy/service-role/AWSLambdaBasicExecutionRole]',
      'A deploy-time Lambda of aws-cdk-lib writing its own CloudWatch logs with the AWS basic ' +
        'execution policy; it runs only during CloudFormation deployments.',
    );
  }
  const logRetention = stack.node.tryFindChild('LogRetentionaae0aa3c5b4d4f87b02d85b201efdd8a');
  if (logRetention !== undefined) {
    acknowledge(
      logRetention,
      'AwsSolutions-IAM5[Resource::*]',
      'aws-cdk-lib\'s log-retention Lambda sets the retention of Aurora\'s exported log group, whose ' +
        'name RDS derives at deploy time; it may only call logs:PutRetentionPolicy/DeleteRetentionPolicy.',
    );
  }
}

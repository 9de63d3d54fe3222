// API keys (docs/DEPLOY.md, "API keys"): the key-encryption key that seals HMAC API secrets in
// PostgreSQL lives in Secrets Manager and reaches the gateway and `gateway keys encrypt-existing`
// as ECS secrets, never as a plain environment value. Ed25519 keys need nothing here: the
// database holds only their public keys.
//
// The secret is JSON, {"current": KEY, "previous": "KEY,KEY" or ""}; the stack generates
// `current` once (64 hex digits: 32 random bytes) and keeps the secret when the stack is deleted,
// since without it no sealed HMAC secret opens. Rotation is the operator's: put the old key in
// `previous` and a new one in `current`, redeploy, run the EncryptExisting task, empty
// `previous`, redeploy.
import { RemovalPolicy } from 'aws-cdk-lib';
import * as ec2 from 'aws-cdk-lib/aws-ec2';
import * as ecs from 'aws-cdk-lib/aws-ecs';
import * as secretsmanager from 'aws-cdk-lib/aws-secretsmanager';
import { Construct } from 'constructs';
import { type AppContext, appLogs } from './containers';

export const KEY_ENCRYPTION_KEY_ENV = 'GW_KEY_ENCRYPTION_KEY';
export const KEY_ENCRYPTION_KEY_PREVIOUS_ENV = 'GW_KEY_ENCRYPTION_KEY_PREVIOUS';

export interface ApiKeyEncryptionProps {
  readonly app: AppContext;
}

export class ApiKeyEncryption extends Construct {
  readonly secret: secretsmanager.Secret;
  /** The ECS secrets of every container that seals or opens HMAC secrets. */
  readonly secrets: Readonly<Record<string, ecs.Secret>>;
  /** `gateway keys encrypt-existing`, run by hand (docs/DEPLOY.md, "API keys"). */
  readonly encryptExistingTask: ecs.FargateTaskDefinition;
  readonly securityGroup: ec2.SecurityGroup;

  constructor(scope: Construct, id: string, props: ApiKeyEncryptionProps) {
    super(scope, id);
    const { app } = props;
    this.secret = new secretsmanager.Secret(this, 'Secret', {
      description: 'Key-encryption key for HMAC API secrets at rest (current, previous)',
      generateSecretString: {
        secretStringTemplate: JSON.stringify({ previous: '' }),
        generateStringKey: 'current',
        // 64 hex digits: only 0-9 and a-f are left to choose from.
        passwordLength: 64,
        excludeUppercase: true,
        excludePunctuation: true,
        includeSpace: false,
        excludeCharacters: 'ghijklmnopqrstuvwxyz',
      },
      removalPolicy: RemovalPolicy.RETAIN,
    });
    this.secrets = {
      [KEY_ENCRYPTION_KEY_ENV]: ecs.Secret.fromSecretsManager(this.secret, 'current'),
      [KEY_ENCRYPTION_KEY_PREVIOUS_ENV]: ecs.Secret.fromSecretsManager(this.secret, 'previous'),
    };

    this.securityGroup = new ec2.SecurityGroup(this, 'Sg', {
      vpc: app.vpc,
      description: 'gateway keys one-off tasks (PostgreSQL only)',
    });
    this.encryptExistingTask = new ecs.FargateTaskDefinition(this, 'EncryptExisting', {
      cpu: 256,
      memoryLimitMiB: 512,
      runtimePlatform: app.runtimePlatform,
    });
    this.encryptExistingTask.addContainer('gateway-keys', {
      image: app.image,
      command: ['gateway', 'keys', 'encrypt-existing'],
      environment: { DATABASE_URL: app.databaseUrl },
      secrets: { ...app.databaseSecrets, ...this.secrets },
      logging: appLogs(app, 'gateway-keys'),
      readonlyRootFilesystem: true,
    });
  }
}

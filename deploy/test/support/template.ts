// Reading a synthesized template as a reviewer would: resources by type, and the containers of
// every task definition with their environment, secrets and commands.
import type { TemplateJson } from './synth';

export interface Resource {
  readonly id: string;
  readonly type: string;
  readonly props: Record<string, unknown>;
}

export function resources(json: TemplateJson, type: string): Resource[] {
  return Object.entries(json.Resources)
    .filter(([, r]) => r.Type === type)
    .map(([id, r]) => ({ id, type: r.Type, props: r.Properties ?? {} }));
}

export function resource(json: TemplateJson, id: string): Resource {
  const r = json.Resources[id];
  if (r === undefined) throw new Error(`no resource ${id}`);
  return { id, type: r.Type, props: r.Properties ?? {} };
}

export interface Container {
  readonly taskId: string;
  readonly name: string;
  readonly image: unknown;
  readonly command: readonly string[];
  readonly entryPoint: readonly string[];
  /** Plain values are strings; values CloudFormation fills in at deploy time are objects. */
  readonly environment: Record<string, unknown>;
  readonly secrets: readonly string[];
  readonly stopTimeout?: number;
  readonly essential: boolean;
  readonly raw: Record<string, unknown>;
}

export function containers(json: TemplateJson): Container[] {
  return resources(json, 'AWS::ECS::TaskDefinition').flatMap((task) =>
    (task.props.ContainerDefinitions as Record<string, unknown>[]).map((c) => ({
      taskId: task.id,
      name: c.Name as string,
      image: c.Image,
      command: (c.Command as string[] | undefined) ?? [],
      entryPoint: (c.EntryPoint as string[] | undefined) ?? [],
      environment: Object.fromEntries(
        ((c.Environment as { Name: string; Value: unknown }[] | undefined) ?? []).map((e) => [e.Name, e.Value]),
      ),
      secrets: ((c.Secrets as { Name: string }[] | undefined) ?? []).map((s) => s.Name),
      ...(typeof c.StopTimeout === 'number' ? { stopTimeout: c.StopTimeout } : {}),
      essential: c.Essential !== false,
      raw: c,
    })),
  );
}

/** Containers running the project's image (its ECR repository), not the sidecars'. */
export function appContainers(json: TemplateJson, repository: string): Container[] {
  return containers(json).filter((c) => JSON.stringify(c.image).includes(`repository/${repository}`) || JSON.stringify(c.image).includes(`/${repository}:`));
}

/** The ECS service whose task definition is `taskId`. */
export function serviceOf(json: TemplateJson, taskId: string): Resource | undefined {
  return resources(json, 'AWS::ECS::Service').find(
    (s) => JSON.stringify(s.props.TaskDefinition) === JSON.stringify({ Ref: taskId }),
  );
}

/** A load balancer / target group attribute, e.g. `idle_timeout.timeout_seconds`. */
export function attribute(r: Resource, key: string): string | undefined {
  const attrs = (r.props.LoadBalancerAttributes ?? r.props.TargetGroupAttributes) as
    | { Key: string; Value: string }[]
    | undefined;
  return attrs?.find((a) => a.Key === key)?.Value;
}

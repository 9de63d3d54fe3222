// Network: a VPC over three availability zones. Public subnets hold only the ALB and the NAT
// gateways; tasks run in private subnets; Aurora and the MSK brokers sit in isolated subnets
// with no route to the internet. Gateway tasks get subnets of their own (see GatewayIdBlock).
import { Annotations } from 'aws-cdk-lib';
import * as ec2 from 'aws-cdk-lib/aws-ec2';
import * as logs from 'aws-cdk-lib/aws-logs';
import { Construct } from 'constructs';
import type { NetworkConfig } from './config';

export const AZ_COUNT = 3;

/**
 * `GW_GATEWAY_ID` (0-63) must differ between gateways writing to the same `orders` topic: it is
 * the top of every command id (gateway/src/ids.rs). An autoscaled ECS service has no per-task
 * ordinal, so the id comes from the task's address: the gateway subnets, one small subnet per
 * AZ used by nothing else, lie inside one /26, and an address's offset in that /26 (0-63) is
 * unique among the tasks running at one time. A later task that reuses an address starts its ids
 * at a later second, which is exactly a gateway restart (ids.rs keeps those apart).
 */
export interface GatewayIdBlock {
  /** The /26 holding every gateway subnet, e.g. 10.0.3.0/26. */
  readonly cidr: string;
  /** Its first three octets with the dot, e.g. `10.0.3.`. */
  readonly prefix: string;
  /** Its first last-octet, e.g. 0 (a /26 starts at 0, 64, 128 or 192). */
  readonly firstOctet: number;
  /** Addresses AWS leaves to tasks: 16 per /28 minus the 5 it reserves, per subnet. */
  readonly usableAddresses: number;
}

export interface NetworkProps {
  readonly config: NetworkConfig;
  readonly logRetention: logs.RetentionDays;
}

export class Network extends Construct {
  readonly vpc: ec2.IVpc;
  readonly albSubnets: ec2.SubnetSelection;
  readonly appSubnets: ec2.SubnetSelection;
  readonly gatewaySubnets: ec2.SubnetSelection;
  readonly dataSubnets: ec2.SubnetSelection;
  readonly gatewayIdBlock: GatewayIdBlock;

  constructor(scope: Construct, id: string, props: NetworkProps) {
    super(scope, id);
    const existing = props.config.existing;
    if (existing === undefined) {
      const vpc = new ec2.Vpc(this, 'Vpc', {
        ipAddresses: ec2.IpAddresses.cidr(props.config.vpcCidr),
        maxAzs: AZ_COUNT,
        natGateways: props.config.natGateways,
        // Order matters: the /28 gateway subnets come right after the /24s, so they are
        // allocated side by side inside one aligned /26 (checked below).
        subnetConfiguration: [
          { name: 'public', subnetType: ec2.SubnetType.PUBLIC, cidrMask: 24, mapPublicIpOnLaunch: false },
          { name: 'gateway', subnetType: ec2.SubnetType.PRIVATE_WITH_EGRESS, cidrMask: 28 },
          { name: 'app', subnetType: ec2.SubnetType.PRIVATE_WITH_EGRESS, cidrMask: 20 },
          { name: 'data', subnetType: ec2.SubnetType.PRIVATE_ISOLATED, cidrMask: 24 },
        ],
        // Image layers come from S3; the gateway endpoint keeps them off the NAT bill.
        gatewayEndpoints: { S3: { service: ec2.GatewayVpcEndpointAwsService.S3 } },
      });
      if (vpc.availabilityZones.length !== AZ_COUNT) {
        throw new Error(
          `the region offers ${vpc.availabilityZones.length} availability zones in context; ` +
            `${AZ_COUNT} are needed (cdk.context.json: availability-zones:account=...:region=...)`,
        );
      }
      vpc.addFlowLog('FlowLog', {
        destination: ec2.FlowLogDestination.toCloudWatchLogs(
          new logs.LogGroup(this, 'FlowLogGroup', { retention: props.logRetention }),
        ),
        trafficType: ec2.FlowLogTrafficType.ALL,
      });
      this.vpc = vpc;
      this.albSubnets = { subnetGroupName: 'public' };
      this.appSubnets = { subnetGroupName: 'app' };
      this.gatewaySubnets = { subnetGroupName: 'gateway' };
      this.dataSubnets = { subnetGroupName: 'data' };
      const cidrs = vpc.selectSubnets(this.gatewaySubnets).subnets.map((s) => s.ipv4CidrBlock);
      this.gatewayIdBlock = gatewayIdBlock(cidrs);
    } else {
      if (existing.availabilityZones.length !== AZ_COUNT) {
        throw new Error(`network.existing.availabilityZones: exactly ${AZ_COUNT} are needed`);
      }
      this.vpc = ec2.Vpc.fromVpcAttributes(this, 'Vpc', {
        vpcId: existing.vpcId,
        vpcCidrBlock: existing.vpcCidr,
        availabilityZones: [...existing.availabilityZones],
        publicSubnetIds: [...existing.publicSubnetIds],
        privateSubnetIds: [...existing.privateSubnetIds],
        isolatedSubnetIds: [...existing.isolatedSubnetIds],
      });
      if (existing.gatewaySubnetIds.length !== existing.gatewaySubnetCidrs.length) {
        throw new Error('network.existing: one gatewaySubnetCidrs entry per gatewaySubnetIds entry');
      }
      const gatewaySubnets = existing.gatewaySubnetIds.map((subnetId, i) =>
        ec2.Subnet.fromSubnetAttributes(this, `GatewaySubnet${i}`, {
          subnetId,
          availabilityZone: existing.availabilityZones[i % AZ_COUNT],
          ipv4CidrBlock: existing.gatewaySubnetCidrs[i],
        }),
      );
      // The stack never reads the imported subnets' route tables, so none are asked for.
      Annotations.of(this).acknowledgeWarning(
        '@aws-cdk/aws-ec2:noSubnetRouteTableId',
        'routes of an existing VPC are its owner\'s; nothing here reads them',
      );
      this.albSubnets = { subnetType: ec2.SubnetType.PUBLIC };
      this.appSubnets = { subnetType: ec2.SubnetType.PRIVATE_WITH_EGRESS };
      this.gatewaySubnets = { subnets: gatewaySubnets };
      this.dataSubnets = { subnetType: ec2.SubnetType.PRIVATE_ISOLATED };
      this.gatewayIdBlock = gatewayIdBlock([...existing.gatewaySubnetCidrs]);
    }
  }
}

/** The /26 that holds every gateway subnet; throws when they do not share one. */
export function gatewayIdBlock(cidrs: string[]): GatewayIdBlock {
  if (cidrs.length !== AZ_COUNT) {
    throw new Error(`gateway subnets: one per availability zone (${AZ_COUNT}), got ${cidrs.length}`);
  }
  let usable = 0;
  const blocks = new Set<number>();
  for (const cidr of cidrs) {
    const [address, maskText] = cidr.split('/');
    const mask = Number(maskText);
    if (address === undefined || !(mask >= 26 && mask <= 28)) {
      throw new Error(`gateway subnet ${cidr}: a /26 to /28 inside the gateway id block`);
    }
    const value = ipv4ToNumber(address);
    blocks.add(Math.floor(value / 64));
    usable += 2 ** (32 - mask) - 5;
  }
  if (blocks.size !== 1) {
    throw new Error(`gateway subnets ${cidrs.join(', ')} do not lie in one /26 (see GatewayIdBlock)`);
  }
  const base = [...blocks][0]! * 64;
  const octets = numberToIpv4(base).split('.');
  return {
    cidr: `${numberToIpv4(base)}/26`,
    prefix: `${octets.slice(0, 3).join('.')}.`,
    firstOctet: Number(octets[3]),
    usableAddresses: usable,
  };
}

function ipv4ToNumber(address: string): number {
  const parts = address.split('.').map(Number);
  if (parts.length !== 4 || parts.some((p) => !Number.isInteger(p) || p < 0 || p > 255)) {
    throw new Error(`not an IPv4 address: ${address}`);
  }
  return parts.reduce((acc, p) => acc * 256 + p, 0);
}

function numberToIpv4(value: number): string {
  return [24, 16, 8, 0].map((shift) => Math.floor(value / 2 ** shift) % 256).join('.');
}

import { Prefix } from '../routing/index.js';
import { KubernetesError } from './errors.js';

/**
 * The few fields of a Node object that nodelink reads. `V1Node` from @kubernetes/client-node
 * and a plain recorded JSON object both fit, so this module needs no API client.
 */
export interface NodeLike {
  readonly metadata?: { readonly name?: string; readonly resourceVersion?: string };
  readonly spec?: { readonly podCIDR?: string; readonly podCIDRs?: readonly string[] };
  readonly status?: { readonly addresses?: ReadonlyArray<{ readonly type: string; readonly address: string }> };
}

/** What a node announces: its InternalIP(s) as host routes, then its pod CIDRs, IPv4 first. */
export interface NodeRoutes {
  readonly addresses: readonly Prefix[];
  readonly podCIDRs: readonly Prefix[];
  readonly routes: readonly Prefix[];
}

/**
 * Reads the routes a node owns from its Node object: every `InternalIP` in `status.addresses`
 * as a /32 or /128, and `spec.podCIDRs` (or the older single `spec.podCIDR`). A Node whose
 * podCIDR is not allocated yet yields only its addresses; the caller re-reads it later.
 */
export function routesFromNode(node: NodeLike, name = node.metadata?.name ?? '?'): NodeRoutes {
  const addresses: Prefix[] = [];
  for (const entry of node.status?.addresses ?? []) {
    if (entry.type !== 'InternalIP') continue;
    try {
      addresses.push(Prefix.fromAddress(entry.address));
    } catch {
      throw new KubernetesError(
        'k8s_node',
        `Node "${name}" has InternalIP "${entry.address}", which is not an IP address`,
      );
    }
  }
  const cidrs =
    node.spec?.podCIDRs && node.spec.podCIDRs.length > 0
      ? node.spec.podCIDRs
      : node.spec?.podCIDR
        ? [node.spec.podCIDR]
        : [];
  const podCIDRs: Prefix[] = [];
  for (const text of cidrs) {
    try {
      podCIDRs.push(Prefix.parse(text));
    } catch (err) {
      throw new KubernetesError('k8s_node', `Node "${name}" has pod CIDR "${text}": ${(err as Error).message}`);
    }
  }
  const routes = dedupe([...addresses, ...podCIDRs]).sort((a, b) => a.family - b.family);
  if (routes.length === 0) {
    throw new KubernetesError(
      'k8s_node',
      `Node "${name}" has no InternalIP and no pod CIDR yet: wait for the kubelet to register it, or pass --route`,
    );
  }
  return { addresses, podCIDRs, routes };
}

/** Union of route lists without duplicates, keeping the first occurrence's order. */
export function dedupe(routes: readonly Prefix[]): Prefix[] {
  const out: Prefix[] = [];
  for (const route of routes) if (!out.some((seen) => seen.equals(route))) out.push(route);
  return out;
}

/** Same set of prefixes, in any order. */
export function sameRoutes(a: readonly Prefix[], b: readonly Prefix[]): boolean {
  return (
    a.length === b.length &&
    a.every((route) => b.some((other) => other.equals(route))) &&
    b.every((route) => a.some((other) => other.equals(route)))
  );
}

/**
 * The routes among `announced` that the Node object does not vouch for: each announced route
 * must lie inside one of the node's InternalIP host routes or pod CIDRs.
 */
export function routesOutsideNode(announced: readonly Prefix[], node: NodeRoutes): Prefix[] {
  const owned = [...node.addresses, ...node.podCIDRs];
  return announced.filter((route) => !owned.some((prefix) => prefix.contains(route)));
}

import { AuthError } from '../auth/index.js';
import type { Prefix } from '../routing/index.js';
import type { NodeSource } from './api.js';
import { KubernetesError } from './errors.js';
import { ApiCallLimit } from './limit.js';
import { routesFromNode, routesOutsideNode, type NodeLike } from './node-routes.js';

/**
 * What the Node checks may cost the API server. Every authenticated hello is checked, and a
 * node reconnecting in a loop, or many at once after a server restart, would otherwise send one
 * GET each, all at the same time.
 */
export interface NodeCheckLimits {
  /** A Node read (or its absence) answers every check of that name for this long. */
  readonly cacheMs: number;
  /** Node GETs in flight at once. */
  readonly maxConcurrent: number;
  /** Names waiting for a free slot; more are refused as transient (the node retries with backoff). */
  readonly maxWaiting: number;
}

export const NODE_CHECK_LIMITS: NodeCheckLimits = Object.freeze({ cacheMs: 5000, maxConcurrent: 4, maxWaiting: 1024 });

/** Names cached at most: more than any cluster has nodes; past it the cache starts over. */
const MAX_CACHED = 16_384;

/**
 * Reads Node objects through `source` with a short cache (one read per name per `cacheMs`,
 * shared by every check that arrives meanwhile) and at most `maxConcurrent` reads in flight.
 * A missing Node is cached like a found one; any other API error is not, so the next check asks
 * again. `notBefore` asks for a read started no earlier than that time (ms since the epoch).
 */
export class CachedNodeReader {
  private readonly cache = new Map<string, { at: number; node: Promise<NodeLike> }>();
  private readonly limits: NodeCheckLimits;
  private readonly limit: ApiCallLimit;

  constructor(
    private readonly source: NodeSource,
    limits: Partial<NodeCheckLimits> = {},
  ) {
    this.limits = { ...NODE_CHECK_LIMITS, ...limits };
    this.limit = new ApiCallLimit(
      this.limits.maxConcurrent,
      this.limits.maxWaiting,
      (waiting) => `${waiting} Node reads are already waiting for the API server: the node retries`,
    );
  }

  getNode(name: string, notBefore = 0): Promise<NodeLike> {
    const now = Date.now();
    const hit = this.cache.get(name);
    if (hit && now - hit.at < this.limits.cacheMs && hit.at >= notBefore) return hit.node;
    if (this.cache.size >= MAX_CACHED) this.cache.clear();
    const entry = { at: now, node: this.limit.run(() => this.source.getNode(name)) };
    this.cache.set(name, entry);
    entry.node.catch((err: unknown) => {
      const absent = err instanceof KubernetesError && err.code === 'k8s_not_found';
      if (!absent && this.cache.get(name) === entry) this.cache.delete(name);
    });
    return entry.node;
  }
}

/**
 * The server's `--authorize-from-nodes` check: a node may announce only routes that its own
 * Node object vouches for (InternalIPs, pod CIDRs), on top of its peers-file allowedIPs.
 * Throws AuthError 'route_not_allowed' when the Node disagrees (the node must be fixed) and
 * KubernetesError when the API cannot answer (transient: the node retries).
 *
 * Node reads go through a CachedNodeReader. A cached Node only ever lets a check pass: a
 * rejection is decided on a read started for this check, so a node whose pod CIDR just changed
 * is never turned away by a stale copy (a rejected client exits).
 */
export function nodeRouteChecker(
  source: NodeSource,
  limits: Partial<NodeCheckLimits> = {},
): (name: string, routes: readonly Prefix[]) => Promise<void> {
  const reader = new CachedNodeReader(source, limits);
  return async (name, routes) => {
    const started = Date.now();
    const refusal = await refusalOf(name, routes, reader.getNode(name));
    if (refusal === undefined) return;
    const fresh = await refusalOf(name, routes, reader.getNode(name, started));
    if (fresh !== undefined) throw fresh;
  };
}

/** Why the Node does not vouch for `routes`, or undefined if it does; API failures are thrown. */
async function refusalOf(
  name: string,
  routes: readonly Prefix[],
  read: Promise<NodeLike>,
): Promise<AuthError | undefined> {
  let node;
  try {
    node = await read;
  } catch (err) {
    if (err instanceof KubernetesError && err.code === 'k8s_not_found') {
      return new AuthError(
        'route_not_allowed',
        `there is no Node object named "${name}": the peer's name must be its Kubernetes node name`,
      );
    }
    throw err;
  }
  let owned;
  try {
    owned = routesFromNode(node, name);
  } catch (err) {
    return new AuthError('route_not_allowed', (err as Error).message);
  }
  const outside = routesOutsideNode(routes, owned);
  if (outside.length === 0) return undefined;
  return new AuthError(
    'route_not_allowed',
    `route ${outside.join(', ')} is not an address or pod CIDR of Node "${name}" (${owned.routes.join(', ')}): fix --route or use --routes-from-node`,
  );
}

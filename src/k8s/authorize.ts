import { AuthError } from '../auth/index.js';
import type { Prefix } from '../routing/index.js';
import type { NodeSource } from './api.js';
import { KubernetesError } from './errors.js';
import { routesFromNode, routesOutsideNode } from './node-routes.js';

/**
 * The server's `--authorize-from-nodes` check: a node may announce only routes that its own
 * Node object vouches for (InternalIPs, pod CIDRs), on top of its peers-file allowedIPs.
 * Throws AuthError 'route_not_allowed' when the Node disagrees (the node must be fixed) and
 * KubernetesError when the API cannot answer (transient: the node retries).
 */
export function nodeRouteChecker(source: NodeSource): (name: string, routes: readonly Prefix[]) => Promise<void> {
  return async (name, routes) => {
    let node;
    try {
      node = await source.getNode(name);
    } catch (err) {
      if (err instanceof KubernetesError && err.code === 'k8s_not_found') {
        throw new AuthError(
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
      throw new AuthError('route_not_allowed', (err as Error).message);
    }
    const outside = routesOutsideNode(routes, owned);
    if (outside.length > 0) {
      throw new AuthError(
        'route_not_allowed',
        `route ${outside.join(', ')} is not an address or pod CIDR of Node "${name}" (${owned.routes.join(', ')}): fix --route or use --routes-from-node`,
      );
    }
  };
}

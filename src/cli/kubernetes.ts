// Wiring of the Kubernetes features into the daemons: --routes-from-node (client) and
// --authorize-from-nodes (server). @kubernetes/client-node is imported only when one of them is
// on, because loading it costs about two seconds.
import type { Logger } from '../log.js';
import type { Prefix } from '../routing/index.js';
import { NodeRoutesWatcher, dedupe, nodeRouteChecker, routesFromNode, type NodeSource } from '../k8s/index.js';
import { NodelinkError } from '../errors.js';

async function nodeSource(kubeconfig: string): Promise<NodeSource> {
  const { KubeNodeSource, loadKubeConfig } = await import('../k8s/api.js');
  return new KubeNodeSource(loadKubeConfig(kubeconfig || undefined));
}

export interface NodeRoutesFeed {
  /** What to announce now: --route entries plus the Node's InternalIPs and pod CIDRs. */
  readonly routes: readonly Prefix[];
  /** Calls `onChange` with the full new set whenever the Node's routes change; returns a stop function. */
  follow(onChange: (routes: readonly Prefix[]) => void): () => void;
}

/**
 * Reads this node's Node object once (any API error fails the start with one line) and returns
 * the routes to announce plus a way to follow later changes.
 */
export async function routesFromKubernetes(
  config: { name: string; routes: readonly Prefix[]; kubeconfig: string; nodePollMs: number },
  log: Logger,
  source?: NodeSource,
): Promise<NodeRoutesFeed> {
  const api = source ?? (await nodeSource(config.kubeconfig));
  const node = routesFromNode(await api.getNode(config.name), config.name);
  const routes = dedupe([...config.routes, ...node.routes]);
  log.info(
    { node: config.name, api: api.server, addresses: node.addresses.map(String), podCIDRs: node.podCIDRs.map(String) },
    node.podCIDRs.length > 0
      ? 'routes read from the Node object'
      : 'routes read from the Node object: no pod CIDR allocated yet',
  );
  return {
    routes,
    follow(onChange) {
      const watcher = new NodeRoutesWatcher({
        source: api,
        name: config.name,
        intervalMs: config.nodePollMs,
        initial: node.routes,
        onChange: (nodeRoutes) => onChange(dedupe([...config.routes, ...nodeRoutes])),
        log,
      });
      watcher.start();
      return () => watcher.stop();
    },
  };
}

/**
 * The LinkServer `checkRoutes` hook for --authorize-from-nodes. Reads one peer's Node at start,
 * so missing credentials or RBAC fail the start with one line instead of every handshake.
 */
export async function nodeRouteCheck(
  kubeconfig: string,
  probeName: string | undefined,
  log: Logger,
  source?: NodeSource,
): Promise<(name: string, routes: readonly Prefix[]) => Promise<void>> {
  const api = source ?? (await nodeSource(kubeconfig));
  if (probeName !== undefined) {
    try {
      await api.getNode(probeName);
    } catch (err) {
      const code = err instanceof NodelinkError ? err.code : '';
      if (code === 'k8s_config' || code === 'k8s_unauthorized' || code === 'k8s_forbidden') throw err;
      log.warn(
        { node: probeName, err: err instanceof NodelinkError ? err.message : String(err) },
        'first Node read failed; checking each node as it connects',
      );
    }
  }
  log.info({ api: api.server }, 'routes are checked against Node objects (--authorize-from-nodes)');
  return nodeRouteChecker(api);
}

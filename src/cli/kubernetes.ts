// Wiring of the Kubernetes features into the daemons: --node-auth kubernetes and
// --authorize-from-nodes (server), --routes-from-node (client). @kubernetes/client-node is
// imported only when one of them is on, because loading it costs about two seconds.
import type { Logger } from '../log.js';
import type { Prefix } from '../routing/index.js';
import { NodeRoutesWatcher, dedupe, nodeRouteChecker, routesFromNode, type NodeSource } from '../k8s/index.js';
import { NodelinkError, userMessage } from '../errors.js';
import type { Hello, PeerRegistry } from '../auth/index.js';
import { NodeIdentityVerifier } from '../k8s/identity.js';
import { authorizeNode, peersFromNodes, type NodeGrant } from '../k8s/node-peers.js';

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
      log.warn({ node: probeName, err: userMessage(err) }, 'first Node read failed; checking each node as it connects');
    }
  }
  log.info({ api: api.server }, 'routes are checked against Node objects (--authorize-from-nodes)');
  return nodeRouteChecker(api);
}

/** Kubernetes mode on the server: the Node objects are the peers, tokens prove who is who. */
export interface KubernetesNodeAuth {
  /** The peers as the Node watch sees them now. */
  readonly registry: PeerRegistry;
  /** The LinkServer's hello check: the token's Node, and only that Node's routes. */
  authorize(hello: Hello): Promise<NodeGrant>;
  /** Calls `onChange` with the new peers after Nodes come, go or change (batched briefly). */
  follow(onChange: (registry: PeerRegistry) => void): void;
  readonly verifier: NodeIdentityVerifier;
  stop(): void;
}

/**
 * Starts Kubernetes mode: one list of Nodes (a failure here fails the start with one line, so
 * missing RBAC or credentials show at once), then a watch that keeps the peers current.
 */
export async function kubernetesNodeAuth(
  config: {
    kubeconfig: string;
    serviceAccount: string;
    tokenAudience: string;
    tunnelCidrs: readonly Prefix[];
  },
  log: Logger,
): Promise<KubernetesNodeAuth> {
  const { loadKubeConfig } = await import('../k8s/api.js');
  const { KubeIdentityApi, NodeWatch } = await import('../k8s/kube-identity.js');
  const kc = loadKubeConfig(config.kubeconfig || undefined);
  const identityApi = new KubeIdentityApi(kc);
  const verifier = new NodeIdentityVerifier(identityApi, {
    audience: config.tokenAudience,
    serviceAccount: config.serviceAccount,
  });
  let current: PeerRegistry | undefined;
  let listener: ((registry: PeerRegistry) => void) | undefined;
  const reported = new Map<string, string>();
  // The watch batches its events: each call here is one pass over all Nodes.
  const watch = new NodeWatch(kc, {
    log,
    onNodes: (nodes) => {
      const { registry, skipped } = peersFromNodes(nodes, config.tunnelCidrs);
      for (const { node, why } of skipped) {
        if (reported.get(node) !== why) log.warn({ node, why }, 'a Node cannot join the link');
        reported.set(node, why);
      }
      for (const node of reported.keys()) if (!skipped.some((s) => s.node === node)) reported.delete(node);
      const previous = current;
      current = registry;
      for (const peer of previous?.peers ?? []) {
        if (!registry.findByName(peer.name)) verifier.forgetNode(peer.name);
      }
      if (previous) listener?.(registry);
    },
  });
  await watch.start();
  log.info(
    { api: kc.getCurrentCluster()?.server, nodes: current!.peers.length, serviceAccount: config.serviceAccount },
    'nodes authenticate with service-account tokens (--node-auth kubernetes)',
  );
  return {
    get registry() {
      return current!;
    },
    authorize: (hello) => authorizeNode(verifier, hello),
    follow(onChange) {
      listener = onChange;
    },
    verifier,
    stop() {
      watch.stop();
      identityApi.close();
    },
  };
}

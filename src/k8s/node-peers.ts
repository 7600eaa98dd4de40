// Kubernetes mode's peers: one per Node object, allowed exactly that Node's InternalIPs and pod
// CIDRs, and admitted on a TokenReview verdict instead of a public key from a peers file.
import { AuthError } from '../auth/errors.js';
import { PeerRegistry, type PeerConfig } from '../auth/peers.js';
import type { Hello } from '../auth/hello.js';
import { KEY_BYTES } from '../auth/keys.js';
import { Prefix, PrefixTable } from '../routing/index.js';
import { KubernetesError } from './errors.js';
import type { NodeIdentityVerifier } from './identity.js';
import { routesFromNode, type NodeLike } from './node-routes.js';

/** Peers of Kubernetes mode are keyed by node, not by a key: node keys are made fresh per start. */
export function nodePeerKey(node: string): string {
  return `node:${node}`;
}

const NO_KEY = new Uint8Array(KEY_BYTES);

export interface NodePeers {
  readonly registry: PeerRegistry;
  /** Nodes left out, each with the reason (no address yet, overlap with another Node or the tunnel). */
  readonly skipped: ReadonlyArray<{ node: string; why: string }>;
}

/**
 * Builds the registry from the Nodes as the watch sees them. A Node that cannot be used is left
 * out with its reason, never failing the others: one odd Node must not take every node down.
 */
export function peersFromNodes(nodes: readonly NodeLike[], tunnelCidrs: readonly Prefix[]): NodePeers {
  const peers: PeerConfig[] = [];
  const skipped: Array<{ node: string; why: string }> = [];
  const claimed = new PrefixTable<string>();
  const sorted = [...nodes].sort((a, b) => (a.metadata?.name ?? '').localeCompare(b.metadata?.name ?? ''));
  for (const node of sorted) {
    const name = node.metadata?.name ?? '';
    if (!name) continue;
    let routes: readonly Prefix[];
    try {
      routes = routesFromNode(node, name).routes;
    } catch (err) {
      skipped.push({ node: name, why: (err as Error).message });
      continue;
    }
    const clash =
      routes.flatMap((route) =>
        tunnelCidrs.filter((cidr) => cidr.overlaps(route)).map((cidr) => `${route} is inside the tunnel CIDR ${cidr}`),
      )[0] ?? routes.map((route) => overlapWith(claimed, route)).find((why) => why !== undefined);
    if (clash) {
      skipped.push({ node: name, why: clash });
      continue;
    }
    for (const route of routes) claimed.insert(route, name);
    peers.push({ name, publicKey: NO_KEY, publicKeyText: nodePeerKey(name), allowedIPs: routes });
  }
  return { registry: new PeerRegistry(peers), skipped };
}

function overlapWith(claimed: PrefixTable<string>, route: Prefix): string | undefined {
  const inside = claimed.lookup(route.family, route.bytes);
  if (inside !== undefined) return `${route} overlaps Node "${inside}"`;
  for (const [prefix, owner] of claimed.entries()) {
    if (route.contains(prefix)) return `${route} overlaps Node "${owner}" (${prefix})`;
  }
  return undefined;
}

/** Decides, on the peers in force, what a node whose identity is proven may carry. */
export type NodeGrant = (registry: PeerRegistry) => { peer: PeerConfig; routes: Prefix[] };

/**
 * Admits a hello in Kubernetes mode, in two steps. First, asynchronously, its token must speak
 * for the Node it names (TokenReview). Then, on the peers in force at that moment (the caller's,
 * which may have moved meanwhile), it may carry only that Node's addresses and pod CIDRs.
 * Refusals (AuthError) are final and say why; KubernetesError means "not now", and the node
 * retries.
 */
export async function authorizeNode(verifier: NodeIdentityVerifier, hello: Hello): Promise<NodeGrant> {
  if (!hello.token) {
    throw new AuthError(
      'token_rejected',
      'this server runs in Kubernetes mode and the hello carries no token: run the client with --token-file',
    );
  }
  const identity = await verifier.verify(hello.token);
  if (identity.node !== hello.name) {
    throw new AuthError(
      'wrong_node',
      `the token belongs to pod ${identity.pod} on node "${identity.node}", not to "${hello.name}": set --name (NODE_NAME) to spec.nodeName`,
    );
  }
  return (registry) => {
    const peer = registry.findByName(identity.node);
    if (!peer) {
      throw new KubernetesError(
        'k8s_node',
        `Node "${identity.node}" is not usable yet (no InternalIP or pod CIDR seen by the server's Node watch): retrying`,
      );
    }
    // A client that announces nothing takes what its Node vouches for: zero-touch needs no --route.
    if (hello.routes.length === 0) return { peer, routes: [...peer.allowedIPs] };
    return registry.authorizeRoutes(peer, hello.routes);
  };
}

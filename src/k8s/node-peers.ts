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
  const skipped: Array<{ node: string; why: string }> = [];
  const usable: Array<{ name: string; routes: readonly Prefix[] }> = [];
  for (const node of [...nodes].sort((a, b) => (a.metadata?.name ?? '').localeCompare(b.metadata?.name ?? ''))) {
    const name = node.metadata?.name ?? '';
    if (!name) continue;
    try {
      const { routes } = routesFromNode(node, name);
      const inTunnel = routes.find((route) => tunnelCidrs.some((cidr) => cidr.overlaps(route)));
      if (inTunnel) skipped.push({ node: name, why: `${inTunnel} is inside the tunnel CIDR` });
      else usable.push({ name, routes });
    } catch (err) {
      skipped.push({ node: name, why: (err as Error).message });
    }
  }
  // Overlaps in one pass: shortest prefixes first, so a prefix overlaps an earlier one exactly
  // when the table already holds one containing its network address. The later Node (the more
  // specific claim) is the one left out.
  const claims = usable.flatMap(({ name, routes }) => routes.map((route) => ({ name, route })));
  claims.sort((a, b) => a.route.length - b.route.length);
  const claimed = new PrefixTable<{ name: string; route: Prefix }>();
  const clashing = new Map<string, string>();
  for (const claim of claims) {
    const owner = claimed.lookup(claim.route.family, claim.route.bytes);
    if (owner && owner.name !== claim.name) {
      if (!clashing.has(claim.name))
        clashing.set(claim.name, `${claim.route} overlaps Node "${owner.name}" (${owner.route})`);
      continue;
    }
    if (claimed.get(claim.route) === undefined) claimed.insert(claim.route, claim);
  }
  const peers: PeerConfig[] = [];
  for (const { name, routes } of usable) {
    const why = clashing.get(name);
    if (why) skipped.push({ node: name, why });
    else peers.push({ name, publicKey: NO_KEY, publicKeyText: nodePeerKey(name), allowedIPs: routes });
  }
  skipped.sort((a, b) => a.node.localeCompare(b.node));
  return { registry: new PeerRegistry(peers), skipped };
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

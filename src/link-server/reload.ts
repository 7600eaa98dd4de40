/**
 * A new peers file taking effect on a running server (SIGHUP): which peers join, leave or
 * change, which sessions must end because of it, and which kernel routes follow.
 */
import type { PeerConfig, PeerRegistry } from '../auth/index.js';
import { CloseCode } from '../protocol/index.js';
import { Prefix, PrefixTable } from '../routing/index.js';
import type { Logger } from '../log.js';
import { newPeerState, type PeerState, type Peers, type Session } from './peers.js';

/** What a peers-file reload changed, by peer name. */
export interface ReloadSummary {
  readonly added: string[];
  readonly removed: string[];
  readonly changed: string[];
  /** Sessions closed because their peer was removed or no longer allowed what it announced. */
  readonly disconnected: string[];
  readonly routesAdded: string[];
  readonly routesRemoved: string[];
}

/**
 * Where the peers come from. A peers file is an operator's decision: a node it drops or no longer
 * allows is told so and exits. Node objects change under a running node (a pod CIDR moves): such
 * a node is told to reconnect and takes its new routes; a deleted Node's node is told so.
 */
export type PeerSource = 'peers-file' | 'nodes';

/** The kernel side of a reload; removeRoutes is optional (without it routes stay in place). */
export interface KernelRoutes {
  readonly installRoutes: (cidrs: readonly Prefix[]) => Promise<void>;
  readonly removeRoutes?: (cidrs: readonly Prefix[]) => Promise<void>;
}

/**
 * Applies a new peers file. The caller has parsed and validated it: a bad file never gets here,
 * and the old one stays. In order:
 *
 *  1. kernel routes for every allowedIP of the new file are installed (idempotent), so a new
 *     peer is routable from the moment it may connect; if that fails, nothing has changed;
 *  2. in one synchronous step, the new file takes effect: new peers may connect; removed
 *     peers are disconnected (auth_failed: the node exits with the reason, as if rejected);
 *     a peer whose name changed, or whose new allowedIPs no longer hold a route it announced,
 *     is disconnected and redials under the new rules; every other session is left alone;
 *  3. kernel routes that no peer claims any more are removed.
 */
export async function reloadPeers(
  peers: Peers,
  registry: PeerRegistry,
  kernel: KernelRoutes,
  log: Logger,
  source: PeerSource = 'peers-file',
): Promise<ReloadSummary> {
  const before = new Set(peers.registry.peers.flatMap((peer) => peer.allowedIPs.map(String)));
  const after = new Set(registry.peers.flatMap((peer) => peer.allowedIPs.map(String)));
  await kernel.installRoutes(registry.peers.flatMap((peer) => peer.allowedIPs));

  const summary: ReloadSummary = {
    added: [],
    removed: [],
    changed: [],
    disconnected: [],
    routesAdded: [...after].filter((cidr) => !before.has(cidr)),
    routesRemoved: [...before].filter((cidr) => !after.has(cidr)),
  };
  const authorized = new PrefixTable<PeerState>();
  const keys = new Set<string>();
  const closing: Array<[Session, CloseCode, string]> = [];
  for (const config of registry.peers) {
    keys.add(config.publicKeyText);
    let state = peers.byKey.get(config.publicKeyText);
    if (!state) {
      state = newPeerState(config);
      peers.byKey.set(config.publicKeyText, state);
      summary.added.push(config.name);
    } else if (!samePeer(state.config, config)) {
      summary.changed.push(config.name);
      const ending = sessionEndedBy(state, config, source);
      if (ending) closing.push(ending);
      state.config = config;
    }
    for (const prefix of config.allowedIPs) authorized.insert(prefix, state);
  }
  for (const [key, state] of peers.byKey) {
    if (keys.has(key)) continue;
    peers.byKey.delete(key);
    summary.removed.push(state.config.name);
    if (state.session) {
      const reason =
        source === 'nodes'
          ? `Node "${state.config.name}" was deleted from the cluster`
          : `peer "${state.config.name}" was removed from the server's peers file`;
      closing.push([state.session, CloseCode.AuthFailed, reason]);
    }
  }
  peers.registry = registry;
  peers.authorized = authorized;
  for (const [session, code, reason] of closing) {
    summary.disconnected.push(session.peer.config.name);
    session.connection.close(code, reason); // its onClose withdraws its routes, synchronously
  }

  if (summary.routesRemoved.length > 0 && kernel.removeRoutes) {
    await kernel.removeRoutes(summary.routesRemoved.map((cidr) => Prefix.parse(cidr)));
  }
  log.info(summary, source === 'nodes' ? 'peers follow the Node objects' : 'peers file reloaded');
  return summary;
}

/** The session a changed entry ends, with the close it gets, if the change ends it. */
function sessionEndedBy(
  state: PeerState,
  config: PeerConfig,
  source: PeerSource,
): [Session, CloseCode, string] | undefined {
  const { session } = state;
  if (!session) return undefined;
  if (config.name !== state.config.name) {
    return [
      session,
      CloseCode.AuthFailed,
      `this key now belongs to peer "${config.name}" in the server's peers file, not "${state.config.name}": fix --name`,
    ];
  }
  if (source === 'nodes' && !sameRoutes(session.routes, config.allowedIPs)) {
    return [
      session,
      CloseCode.Internal,
      `Node "${config.name}" changed its addresses or pod CIDRs (now ${config.allowedIPs.join(', ')}): reconnect to carry them`,
    ];
  }
  if (!session.routes.every((route) => config.allowedIPs.some((allowed) => allowed.contains(route)))) {
    return [
      session,
      CloseCode.RouteNotAllowed,
      `the server's peers file no longer allows all announced routes of peer "${config.name}" (allowedIPs now ${config.allowedIPs.join(', ')}): fix --route`,
    ];
  }
  return undefined;
}

function sameRoutes(a: readonly Prefix[], b: readonly Prefix[]): boolean {
  return a.length === b.length && a.every((prefix) => b.some((other) => other.equals(prefix)));
}

function samePeer(a: PeerConfig, b: PeerConfig): boolean {
  return (
    a.name === b.name &&
    a.allowedIPs.length === b.allowedIPs.length &&
    a.allowedIPs.every((prefix, i) => prefix.equals(b.allowedIPs[i]!))
  );
}

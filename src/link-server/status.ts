/**
 * The server's side of `nodelink status`: the status document built on demand from the peers
 * table, the packet path's unattributed drops and the listener's refusals, plus the live
 * connection counts that leak checks read; and each peer's route states, judged on the Prefix
 * objects the table holds. Never on the data path.
 */
import {
  nodeRouteStates,
  type DaemonStatus,
  type KernelRoutes,
  type PeerStatus,
  type RouteState,
} from '../admin/index.js';
import { trafficStatus, type TrafficCounters } from '../link/counters.js';
import type { Refusal } from '../reasons.js';
import type { Peers } from './peers.js';

export interface ServerView {
  readonly peers: Peers;
  readonly tun: string;
  /** The server's own tunnel addresses, without their prefix length. */
  readonly tunnelAddresses: readonly string[];
  readonly listen: string;
  readonly startedAt: Date;
  readonly unattributed: TrafficCounters;
  readonly refused: ReadonlyMap<Refusal, number>;
  readonly serverId: string;
  readonly serverCount: number;
}

export function serverStatus(view: ServerView): DaemonStatus {
  const peers: PeerStatus[] = [];
  for (const { session, counters, config, replacements } of view.peers.byKey.values()) {
    peers.push({
      name: config.name,
      publicKey: config.publicKeyText,
      connected: session !== undefined,
      endpoint: session?.endpoint ?? null,
      routes: session ? session.routes.map(String) : [],
      allowedIPs: config.allowedIPs.map(String),
      ...trafficStatus(counters, session?.connection),
      replacements: replacements.done,
      replacementsRefused: replacements.refused,
    });
  }
  return {
    role: 'server',
    tun: view.tun,
    tunnelAddress: view.tunnelAddresses[0] ?? null,
    tunnelAddresses: [...view.tunnelAddresses],
    listen: view.listen,
    startedAt: view.startedAt.toISOString(),
    dropsByReason: view.unattributed.dropsByReason(),
    refusedConnections: Object.fromEntries(view.refused),
    ...(view.serverId ? { serverId: view.serverId } : {}),
    serverCount: view.serverCount,
    peers,
  };
}

/** Each peer's allowed routes with their state, by peer name; `kernel` as `ip route` shows the TUN. */
export function serverRouteStates(peers: Peers, kernel: KernelRoutes | undefined): Map<string, RouteState[]> {
  const states = new Map<string, RouteState[]>();
  for (const { session, config } of peers.byKey.values()) {
    states.set(config.name, nodeRouteStates(config.allowedIPs, session?.routes, kernel));
  }
  return states;
}

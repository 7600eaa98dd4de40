/**
 * A server of several worker processes (--workers) is one server to its operator: one status
 * document, built here from the workers' own. Pure: the primary process fetches, this merges.
 *
 * A peer is in every worker's peers table; at most one holds its session (for a moment two,
 * while a node that moved is not yet found dead by the worker it left). Its state (connected,
 * endpoint, routes, round trip, route states) comes from the worker with the newest session,
 * or from the first worker while it has none; its counters are the sum over all workers, since
 * each counted the sessions it held.
 */
import type { DropReason, Refusal } from '../reasons.js';
import type { DaemonStatus, PeerStatus } from './status.js';

/** One worker's status, or undefined when it did not answer. */
export interface WorkerPart {
  readonly index: number;
  readonly status: DaemonStatus | undefined;
}

const PEER_COUNTERS = [
  'rxBytes',
  'txBytes',
  'rxPackets',
  'txPackets',
  'drops',
  'queuedBytes',
  'replacements',
  'replacementsRefused',
] as const;

export function addCounts<K extends string>(
  into: Partial<Record<K, number>>,
  from: Partial<Record<K, number>> | undefined,
): Partial<Record<K, number>> {
  for (const [key, value] of Object.entries(from ?? {}) as Array<[K, number]>) into[key] = (into[key] ?? 0) + value;
  return into;
}

function newer(a: PeerStatus, b: PeerStatus): boolean {
  return (a.connectedSince ?? '') > (b.connectedSince ?? '');
}

function mergePeer(entries: ReadonlyArray<{ index: number; peer: PeerStatus }>): PeerStatus {
  let chosen = entries[0]!;
  for (const entry of entries) {
    if (entry.peer.connected && (!chosen.peer.connected || newer(entry.peer, chosen.peer))) chosen = entry;
  }
  const merged: PeerStatus = {
    ...chosen.peer,
    dropsByReason: {},
    worker: chosen.peer.connected ? chosen.index : null,
  };
  for (const counter of PEER_COUNTERS) {
    if (entries.some(({ peer }) => peer[counter] !== undefined))
      merged[counter] = entries.reduce((sum, { peer }) => sum + (peer[counter] ?? 0), 0);
  }
  for (const { peer } of entries) addCounts<DropReason>(merged.dropsByReason, peer.dropsByReason);
  return merged;
}

/**
 * The server's status from its workers' (the first that answered gives the server-wide fields:
 * listen, tunnel addresses, server ID, flow filter). Peers keep the first worker's order.
 */
export function mergeWorkerStatuses(
  parts: readonly WorkerPart[],
  server: { readonly tun: string; readonly startedAt: string },
): DaemonStatus {
  const answered = parts.filter((part): part is { index: number; status: DaemonStatus } => part.status !== undefined);
  const first = answered[0]?.status;
  const byName = new Map<string, Array<{ index: number; peer: PeerStatus }>>();
  const dropsByReason: Partial<Record<DropReason, number>> = {};
  const refusedConnections: Partial<Record<Refusal, number>> = {};
  for (const { index, status } of answered) {
    for (const peer of status.peers) {
      const entries = byName.get(peer.name);
      if (entries) entries.push({ index, peer });
      else byName.set(peer.name, [{ index, peer }]);
    }
    addCounts(dropsByReason, status.dropsByReason);
    addCounts(refusedConnections, status.refusedConnections);
  }
  const merged: DaemonStatus = {
    ...(first ?? { role: 'server', tunnelAddress: null, tunnelAddresses: [], peers: [] }),
    role: 'server',
    tun: server.tun,
    startedAt: server.startedAt,
    dropsByReason,
    refusedConnections,
    peers: [...byName.values()].map(mergePeer),
  };
  delete merged.debug;
  return merged;
}

import type { PeerStatus } from '../admin/status.js';

/**
 * Why a packet was dropped. Every drop is counted under one of these names, shown by
 * `status` and (later) metrics, so "traffic vanished" always has an answer.
 */
export type DropReason =
  | 'queue_full' // the peer's TLS stream is not keeping up; bounded queue is full
  | 'no_route' // destination matches no authorized peer
  | 'peer_offline' // destination belongs to a peer that is not connected
  | 'spoofed_source' // a node sent a packet whose source is outside its announced routes
  | 'malformed' // truncated header, wrong IP version, length mismatch
  | 'disconnected' // the client has no session to the server right now
  | 'unannounced_source' // the node's kernel sent a packet from an address the node does not announce
  | 'tun_error'; // the TUN device refused a write

export class TrafficCounters {
  rxBytes = 0;
  txBytes = 0;
  rxPackets = 0;
  txPackets = 0;
  readonly drops = new Map<DropReason, number>();

  drop(reason: DropReason): void {
    this.drops.set(reason, (this.drops.get(reason) ?? 0) + 1);
  }

  totalDrops(): number {
    let total = 0;
    for (const count of this.drops.values()) total += count;
    return total;
  }

  dropsByReason(): Record<string, number> {
    return Object.fromEntries(this.drops);
  }
}

/** The traffic part of a peer's status entry, shared by both ends. */
export type TrafficStatus = Pick<
  PeerStatus,
  | 'connectedSince'
  | 'lastPongMs'
  | 'rxBytes'
  | 'txBytes'
  | 'rxPackets'
  | 'txPackets'
  | 'drops'
  | 'dropsByReason'
  | 'queuedBytes'
>;

export function trafficStatus(
  counters: TrafficCounters,
  connection: { connectedAt: Date; rttMs: number | undefined; queuedBytes: number } | undefined,
): TrafficStatus {
  return {
    connectedSince: connection ? connection.connectedAt.toISOString() : null,
    lastPongMs: connection?.rttMs ?? null,
    rxBytes: counters.rxBytes,
    txBytes: counters.txBytes,
    rxPackets: counters.rxPackets,
    txPackets: counters.txPackets,
    drops: counters.totalDrops(),
    dropsByReason: counters.dropsByReason(),
    queuedBytes: connection?.queuedBytes ?? 0,
  };
}

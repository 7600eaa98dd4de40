import type { PeerStatus } from '../admin/status.js';
import type { DropReason } from '../reasons.js';

/**
 * One peer's traffic, and every packet dropped under its reason (src/reasons.ts). Plain numbers
 * bumped on the data path; status and metrics read them when asked.
 */
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

  dropsByReason(): Partial<Record<DropReason, number>> {
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

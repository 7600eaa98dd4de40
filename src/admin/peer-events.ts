import type { CloseReason, HandshakeFailure } from '../reasons.js';
import type { LinkObserver } from '../link/observer.js';
import type { PeerStatus } from './status.js';

/** What status shows of a peer that the link's counters cannot tell: kept by PeerEventLog. */
export interface PeerEvents {
  handshakes: number;
  reconnects: number;
  lastError: string | null;
  lastPongAt: number | null;
  lastRttMs: number | null;
}

/**
 * The facts the link's events leave about each peer: sessions established (the ones after the
 * first are reconnects), why the last handshake or session failed, the last pong and its round
 * trip. Status, readiness and metrics read it; a daemon without metrics passes it to the link as
 * its observer, one with metrics passes LinkMetrics, which records each event here first.
 */
export class PeerEventLog implements LinkObserver {
  private readonly byPeer = new Map<string, PeerEvents>();

  get(peer: string): PeerEvents | undefined {
    return this.byPeer.get(peer);
  }

  entries(): IterableIterator<[string, PeerEvents]> {
    return this.byPeer.entries();
  }

  connected(peer: string): void {
    const record = this.record(peer);
    record.handshakes++;
    if (record.handshakes > 1) record.reconnects++;
    record.lastError = null;
  }

  handshakeFailed(reason: HandshakeFailure, peer?: string, detail?: string): void {
    if (peer) this.record(peer).lastError = detail ? `${reason}: ${detail}` : reason;
  }

  disconnected(peer: string, reason: CloseReason): void {
    this.record(peer).lastError = `disconnected: ${reason}`;
  }

  pong(peer: string, rttMs: number): void {
    const record = this.record(peer);
    record.lastPongAt = Date.now();
    record.lastRttMs = rttMs;
  }

  /** Writes the peer's events into its status entry. */
  addTo(peer: PeerStatus): void {
    const events = this.byPeer.get(peer.name);
    peer.lastPongAt = peer.connected && events?.lastPongAt ? new Date(events.lastPongAt).toISOString() : null;
    peer.handshakes = events?.handshakes ?? 0;
    peer.reconnects = events?.reconnects ?? 0;
    peer.lastError = events?.lastError ?? null;
  }

  private record(peer: string): PeerEvents {
    let record = this.byPeer.get(peer);
    if (!record) {
      record = { handshakes: 0, reconnects: 0, lastError: null, lastPongAt: null, lastRttMs: null };
      this.byPeer.set(peer, record);
    }
    return record;
  }
}

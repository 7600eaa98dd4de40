import type { CloseReason, HandshakeFailure } from '../reasons.js';

/**
 * Per-event hooks for metrics and status: connect, reject, disconnect, pong. Never called per
 * packet — traffic counters are read from TrafficCounters when someone asks (status, scrape).
 * Every method is optional, so the link runs the same with no observer at all.
 *
 * `peer` is the node's name on the server and 'server' on a client.
 */
export interface LinkObserver {
  /** A session was established (welcome sent / received). */
  connected?(peer: string): void;
  /** A handshake did not end in a session; `detail` is the one line a person reads. */
  handshakeFailed?(reason: HandshakeFailure, peer?: string, detail?: string): void;
  /** An established session ended, with the close code it ended with. */
  disconnected?(peer: string, reason: CloseReason): void;
  /** A pong arrived: the round trip of the keepalive ping. */
  pong?(peer: string, rttMs: number): void;
}

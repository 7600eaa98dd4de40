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
  /** A handshake did not end in a session. `reason` is a stable snake_case name. */
  handshakeFailed?(reason: string, peer?: string, detail?: string): void;
  /** An established session ended. `reason` is a close code name. */
  disconnected?(peer: string, reason: string): void;
  /** A pong arrived: the round trip of the keepalive ping. */
  pong?(peer: string, rttMs: number): void;
}

/**
 * Names a failed dial or handshake of a client by its cause, for the handshake failure metric
 * and for `status`: what an operator would look for first. The client names the failures it
 * raises itself (timeout, untrusted server) where it raises them; this reads the rest, mostly
 * errno codes, from the reason.
 */
export function classifyDialFailure(reason: string): string {
  if (/ECONNREFUSED/.test(reason)) return 'connection_refused';
  if (/ENOTFOUND|EAI_AGAIN|EAI_NONAME/.test(reason)) return 'dns';
  if (/ETIMEDOUT|timed? ?out|no welcome/i.test(reason)) return 'timeout';
  if (/EHOSTUNREACH|ENETUNREACH/.test(reason)) return 'unreachable';
  if (/ECONNRESET|EPIPE/.test(reason)) return 'connection_reset';
  if (/server key/i.test(reason)) return 'server_key_mismatch';
  if (/TLS|SSL|certificate|handshake/i.test(reason)) return 'tls';
  return 'connection_error';
}

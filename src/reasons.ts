/**
 * Every reason nodelink gives for a packet or a connection that did not make it, in one place.
 * Status, metrics labels, logs and the docs use these names and no others; a unit test checks
 * the help texts and the docs against these lists. A name is stable once released: never rename
 * one, add a new one.
 *
 * This module imports nothing, so every other module (protocol and admin included) may use it.
 */

/**
 * Why a session ended: the u16 close code carried by Close and Reject frames, by name. The index
 * is the code on the wire (protocol/frame.ts CloseCode). Label of `nodelink_disconnects_total`.
 */
export const CLOSE_REASONS = [
  'normal', // a deliberate goodbye, or the stream ended without one (closed, reset)
  'protocol_error', // a frame broke the wire protocol (version, type, size, or out of order)
  'auth_failed', // the server does not accept this key or name (the node exits)
  'route_not_allowed', // the node announced a route the server does not allow it (the node exits)
  'replaced', // the same node connected again; the older session is closed
  'server_shutdown', // the server is stopping
  'timeout', // a deadline passed: no frame from a peer for --dead-after-ms, or no hello in time
  'internal', // the other end failed on its own (a route it could not install, a backend down)
  'already_held', // a server replica refused a node that already holds a session to it (no failure)
  'replace_limited', // the key replaced its session too often: a new one is refused, the live one stays
] as const;

/** A close code this version does not know (a newer peer sent it). */
export const UNKNOWN_CLOSE_REASON = 'unknown';

export type CloseReason = (typeof CLOSE_REASONS)[number] | typeof UNKNOWN_CLOSE_REASON;

/**
 * Why the server closed a connection before it could become a session, without its hello ever
 * being judged. Counted by reason in `status` (refusedConnections).
 */
export const REFUSALS = [
  'rate_limited', // more new connections from this source this second than --max-new-conns-per-source
  'unauthenticated_limit', // every handshake slot and the line of held connections were taken
  'handshake_timeout', // TLS and hello not done within --handshake-timeout-ms of the accept
  'tls_handshake_failed', // the TLS handshake failed: not TLS 1.3, garbage, a plain HTTP request
  'aborted', // the connection went away before TLS or before its hello (closed, reset)
  'already_held', // the node already holds a session to this replica (its hello says so): no failure
] as const;

export type Refusal = (typeof REFUSALS)[number];

/** Why the server rejected a verified-or-not hello: the node is told, and exits (auth_failed). */
export const REJECTIONS = [
  'bad_hello', // the hello is truncated, not JSON, or holds a route that is not a CIDR
  'bad_signature', // the hello's signature does not verify for this TLS session (replayed, forged)
  'unknown_key', // the key is not in the server's peers file
  'name_mismatch', // the key belongs to another name in the peers file
  'route_not_allowed', // an announced route lies outside the peer's allowedIPs (or its Node object)
  'token_rejected', // Kubernetes mode: TokenReview refused the token (expired, audience, deleted pod), or none
  'wrong_service_account', // Kubernetes mode: the token is valid but for another service account
  'wrong_node', // Kubernetes mode: the token's pod runs on another node than the hello names
] as const;

export type Rejection = (typeof REJECTIONS)[number];

/** Why a node's dial did not reach a session, as the node sees it. */
export const DIAL_FAILURES = [
  'connection_refused', // nothing listens on the server's port
  'dns', // the server's name does not resolve
  'unreachable', // no route to the server's address
  'connection_reset', // the connection was reset or broken during the handshake
  'handshake_timeout', // TCP, TLS and Welcome not done within --handshake-timeout-ms
  'tls_handshake_failed', // the TLS handshake failed (an alert, or not TLS 1.3)
  'server_key_mismatch', // the server's key is not --server-key
  'untrusted_certificate', // the server's certificate does not verify against --ca for its name
  'no_trust', // neither --server-key nor --ca: nothing to check the server against
  'connection_error', // any other failure of the connection before the Welcome
] as const;

export type DialFailure = (typeof DIAL_FAILURES)[number];

/**
 * Why a handshake did not end in a session: label of `nodelink_handshake_failures_total`. On the
 * server a refusal, a rejection, or the close reason of a connection that ended before its hello
 * was verified; on a node a dial failure, or the close reason the server sent.
 */
export type HandshakeFailure = Refusal | Rejection | DialFailure | CloseReason;

export const HANDSHAKE_FAILURES: readonly HandshakeFailure[] = [
  ...new Set<HandshakeFailure>([...REFUSALS, ...REJECTIONS, ...DIAL_FAILURES, ...CLOSE_REASONS, UNKNOWN_CLOSE_REASON]),
];

/**
 * Why a packet was dropped, or a keepalive frame not sent. Every drop is counted under one of
 * these names, per peer when one is to blame: `status` dropsByReason and the label of
 * `nodelink_dropped_packets_total`.
 */
export const DROP_REASONS = [
  'queue_full', // the peer's TLS stream is not keeping up; its bounded send queue is full
  'no_route', // the destination matches no route a connected peer announced
  'peer_offline', // the destination belongs to a peer that is not connected
  'spoofed_source', // a node sent a packet whose source is outside its announced routes
  'foreign_icmp_error', // a node sent an ICMP error about a packet that was not addressed to it
  'node_initiated', // a node's packet belongs to no flow the control plane opened (counted by the kernel)
  'malformed', // truncated header, wrong IP version, or a length that does not match
  'disconnected', // a node read a packet from its TUN while it had no session to the server
  'unannounced_source', // a node's kernel sent from an address the node does not announce
  'replica_offline', // a node's packet of a flow whose server replica it holds no session to now
  'tun_error', // the TUN device refused a write
  'ping_flood', // a Ping beyond what any keepalive sends (MAX_PONGS_PER_SECOND): not answered
] as const;

export type DropReason = (typeof DROP_REASONS)[number];

/** Whether `name` is one of `vocabulary`, narrowing its type. */
export function isReason<T extends string>(vocabulary: readonly T[], name: string): name is T {
  return (vocabulary as readonly string[]).includes(name);
}

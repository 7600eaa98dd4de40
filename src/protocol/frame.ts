import { CLOSE_REASONS, UNKNOWN_CLOSE_REASON, type CloseReason } from '../reasons.js';

/**
 * The nodelink wire protocol, version 1. This file is the specification: everything a second
 * implementation needs to talk to this one is written here. It holds constants and pure helpers
 * only (no sockets, timers or logging), so both ends and the tests share one definition.
 *
 * Transport: one TCP + TLS 1.3 stream per node, always dialed by the node (client). The client
 * checks the server's certificate (its pinned Ed25519 key, or its chain against a CA) before
 * sending anything.
 *
 * Framing: every frame is a 6-byte header followed by the payload.
 *
 *   byte 0     version  (u8, PROTOCOL_VERSION)
 *   byte 1     type     (u8, FrameType)
 *   bytes 2-5  length   (u32 big-endian, payload bytes, header excluded)
 *
 * Multi-byte integers are big-endian. A receiver checks version, type and length as soon as the
 * header arrives and closes the stream on any violation, before reading the body.
 *
 * Flow:
 *
 *   1. client → server  Hello: the first frame, capped at DEFAULT_MAX_HELLO_PAYLOAD.
 *   2. server → client  Welcome (session accepted) or Reject (then the server closes).
 *   3. both ways        Data, Ping/Pong. No Data frame is accepted before Welcome.
 *   4. either side      Close, then closes the TLS stream.
 *
 * Welcome payload (encoded and checked by welcome.ts), a UTF-8 JSON object:
 *
 *   tunnelCidrs      string[]  the server's tunnel CIDRs, one per family; the node routes them
 *                              into its TUN
 *   serverAddresses  string[]  the server's own address inside each tunnel CIDR: the source of
 *                              what the server sends to the node
 *   offload          boolean   the server takes Offload frames and sends them; only when the
 *                              hello offered them ("offload": true)
 *
 * Offload frames are sent only on a session whose hello offered them and whose welcome agreed
 * (both true); a receiver that did not agree treats one as a protocol error. Either end may
 * still send plain Data frames.
 *
 * A receiver ignores fields it does not know, so a later version may add some.
 */

/** Bumped on any incompatible change; a peer speaking another version is refused. */
export const PROTOCOL_VERSION = 1;

export const HEADER_SIZE = 6;

export enum FrameType {
  Hello = 1, //   opaque auth payload built by src/auth (client→server, first frame only)
  Welcome = 2, // UTF-8 JSON { tunnelCidrs: CIDR[], serverAddresses: IP[] } (server→client; welcome.ts)
  Reject = 3, //  u16 CloseCode + UTF-8 reason (server→client, then the server closes)
  Data = 4, //    one raw IPv4 or IPv6 packet, nothing else (either way)
  Ping = 5, //    PING_PAYLOAD_SIZE opaque bytes (either way)
  Pong = 6, //    the PING_PAYLOAD_SIZE bytes of the Ping it answers, echoed
  Close = 7, //   u16 CloseCode + UTF-8 reason (either way, then the sender closes)
  // u16 segment size + one IPv4 or IPv6 packet whose TCP or UDP checksum holds only the
  // pseudo-header sum, right after a bare IP header (IPv4 unfragmented, IPv6 without extension
  // headers); the receiving kernel completes it. Segment size > 0: a TCP packet of up to 64 KiB
  // that the receiving kernel cuts into segments of that many payload bytes (TSO), at least
  // MIN_OFFLOAD_SEGMENT. Either way, only once the session agreed to offloads (hello and
  // welcome "offload": true).
  Offload = 8,
}

/**
 * The smallest segment size an Offload frame may ask for: smaller ones would let a peer make the
 * receiving kernel cut one packet into thousands. A sender finishes such a packet itself.
 */
export const MIN_OFFLOAD_SEGMENT = 256;

const MAX_FRAME_TYPE = FrameType.Offload;

export function isKnownFrameType(n: number): n is FrameType {
  return Number.isInteger(n) && n >= FrameType.Hello && n <= MAX_FRAME_TYPE;
}

/** Why a session ended, carried as the u16 in Reject and Close payloads; named in CLOSE_REASONS. */
export enum CloseCode {
  Normal = 0,
  ProtocolError = 1,
  AuthFailed = 2,
  RouteNotAllowed = 3,
  Replaced = 4, // the same node connected again; the older session is closed
  ServerShutdown = 5,
  Timeout = 6,
  Internal = 7,
  AlreadyHeld = 8, // the node already holds a session to this replica: it keeps that one
  ReplaceLimited = 9, // a new connection refused: its key replaced its session too often
}

/** The code's name in logs, metrics and `status` (src/reasons.ts); a newer peer's code is 'unknown'. */
export function closeCodeName(code: number): CloseReason {
  return CLOSE_REASONS[code] ?? UNKNOWN_CLOSE_REASON;
}

export const PING_PAYLOAD_SIZE = 8;

/**
 * The largest payload accepted once authenticated. 65535 is the largest IPv4 packet; an IPv6
 * packet adds its 40-byte fixed header to a 65535-byte payload, which the 64 bytes cover.
 */
export const DEFAULT_MAX_PAYLOAD = 65535 + 64;

/** The first frame arrives before we know who is talking, so it gets only what a Hello needs. */
export const DEFAULT_MAX_HELLO_PAYLOAD = 16384;

/** Reject and Close are diagnostics, not data: their reason is truncated to keep them this small. */
export const MAX_CODE_FRAME_SIZE = 512;

import { isIPv4, isIPv6 } from 'node:net';
import { parseAddress } from '../routing/index.js';

/**
 * Who may start a handshake. The listener is open to anyone on the network, and a TLS handshake
 * plus a hello costs the server memory and an Ed25519 verification before it knows who is
 * talking; these limits bound that cost. They apply only to connections that have not yet
 * authenticated: an established node session is never counted, refused or slowed.
 *
 * - at most `maxUnauthenticated` connections between TCP accept and a verified hello, overall;
 * - at most `maxNewPerSourcePerSecond` new connections per source address per second (an IPv6
 *   source counts per /64, the smallest block a host is usually given; an IPv4-mapped IPv6
 *   address counts as its IPv4 address). Nodes behind one NAT share a source address, so this
 *   limit is generous: it stops one host from monopolising the handshake CPU, not a fleet.
 *
 * A refused connection is closed at once, before TLS, and counted.
 */
export interface AdmissionLimits {
  readonly maxUnauthenticated: number;
  readonly maxNewPerSourcePerSecond: number;
}

export const DEFAULT_ADMISSION_LIMITS: AdmissionLimits = Object.freeze({
  maxUnauthenticated: 256,
  maxNewPerSourcePerSecond: 50,
});

/** Sources remembered per one-second window; past this, unseen sources are refused until the window ends. */
export const MAX_TRACKED_SOURCES = 65_536;

export type RefusalReason = 'unauthenticated_limit' | 'rate_limited';

const WINDOW_MS = 1000;

/** The rate-limit key of a remote address: the IPv4 address, or the /64 of an IPv6 one. */
export function sourceKey(address: string): string {
  if (isIPv4(address)) return address;
  if (!isIPv6(address)) return address;
  let bytes: Uint8Array;
  try {
    bytes = parseAddress(address.replace(/%.*$/, '')).bytes;
  } catch {
    return address;
  }
  const mapped = bytes.subarray(0, 10).every((b) => b === 0) && bytes[10] === 0xff && bytes[11] === 0xff;
  if (mapped) return `${bytes[12]}.${bytes[13]}.${bytes[14]}.${bytes[15]}`;
  return `${Buffer.from(bytes.subarray(0, 8)).toString('hex')}/64`;
}

/**
 * Book-keeping of connections that have not authenticated yet, keyed by their remote endpoint
 * ("address:port", the same for the raw TCP socket and the TLS socket on top of it).
 * Pure: the clock is injected, no sockets or timers.
 */
export class Admission {
  private readonly pending = new Map<string, number>();
  private readonly perSource = new Map<string, number>();
  private windowStart = -Infinity;

  constructor(
    readonly limits: AdmissionLimits = DEFAULT_ADMISSION_LIMITS,
    private readonly now: () => number = Date.now,
  ) {}

  /** Connections accepted and not yet authenticated or closed. */
  get unauthenticated(): number {
    return this.pending.size;
  }

  /**
   * Decides on a newly accepted TCP connection. Null means admitted: the endpoint is then
   * pending until `settle` is called for it.
   */
  admit(endpoint: string, remoteAddress: string): RefusalReason | null {
    const now = this.now();
    if (now - this.windowStart >= WINDOW_MS) {
      this.perSource.clear();
      this.windowStart = now;
    }
    const key = sourceKey(remoteAddress);
    const seen = this.perSource.get(key);
    if (seen === undefined && this.perSource.size >= MAX_TRACKED_SOURCES) return 'rate_limited';
    const count = (seen ?? 0) + 1;
    this.perSource.set(key, count);
    if (count > this.limits.maxNewPerSourcePerSecond) return 'rate_limited';
    if (this.pending.size >= this.limits.maxUnauthenticated) return 'unauthenticated_limit';
    this.pending.set(endpoint, now);
    return null;
  }

  /** When the endpoint was accepted, if it is still pending. */
  acceptedAt(endpoint: string): number | undefined {
    return this.pending.get(endpoint);
  }

  /** The connection authenticated or closed: it no longer takes a slot. Idempotent. */
  settle(endpoint: string): void {
    this.pending.delete(endpoint);
  }

  /** Milliseconds left of a deadline that started when the endpoint was accepted. */
  remaining(endpoint: string, deadlineMs: number): number {
    const accepted = this.pending.get(endpoint);
    if (accepted === undefined) return deadlineMs;
    return Math.max(0, accepted + deadlineMs - this.now());
  }
}

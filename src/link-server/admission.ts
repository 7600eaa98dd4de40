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
 * When every handshake slot is taken, up to `maxQueued` more connections are held, accepted but
 * unread (no TLS work), and get slots first come first served. A reconnect storm then waits in
 * line instead of being refused into exponential backoff while the server idles. A held
 * connection whose turn comes after `maxQueueWaitMs` is closed instead; one that gets its slot
 * in time has its whole handshake deadline from then on (nodes wait for a dial the server
 * accepted and has not answered yet as long, see QUEUE_WAIT_DEADLINES).
 *
 * A server still setting up (its TUN routes and flow filter, after it listens) holds every new
 * connection in the same line until `open`: a node that dials then waits instead of being
 * refused, and its handshake starts once the server can welcome it.
 *
 * A refused connection is closed at once, before TLS, and counted.
 */
export interface AdmissionLimits {
  readonly maxUnauthenticated: number;
  readonly maxNewPerSourcePerSecond: number;
  readonly maxQueued: number;
}

export const DEFAULT_ADMISSION_LIMITS: AdmissionLimits = Object.freeze({
  maxUnauthenticated: 256,
  maxNewPerSourcePerSecond: 50,
  maxQueued: 8192,
});

/**
 * A held connection waits in line at most this many handshake deadlines. A node waits as long
 * for a dial that the server accepted and has not answered (link-client/session.ts
 * HELD_DEADLINES), so a connection that gets its slot in time still has its node waiting for it.
 */
export const QUEUE_WAIT_DEADLINES = 2;

/** Sources remembered per one-second window; past this, unseen sources are refused until the window ends. */
export const MAX_TRACKED_SOURCES = 65_536;

export type RefusalReason = 'unauthenticated_limit' | 'rate_limited';

/** What becomes of a newly accepted connection. */
export type AdmissionDecision = 'admitted' | 'queued' | RefusalReason;

/** Held connections whose turn came: those to start now, and those that waited too long. */
export interface Dequeued<T> {
  readonly start: T[];
  readonly expired: T[];
}

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
 * ("address:port", the same for the raw TCP socket and the TLS socket on top of it), and the
 * line of held connections (of type T: a socket, to the server). Pure: the clock is injected,
 * no sockets or timers.
 */
export class Admission<T = unknown> {
  private readonly pending = new Map<string, number>();
  private readonly perSource = new Map<string, number>();
  private windowStart = -Infinity;
  /** Held connections, oldest first; `head` instead of shift() keeps dequeuing O(1). */
  private queue: Array<{ endpoint: string; item: T; acceptedAt: number }> = [];
  private head = 0;
  private holding = false;

  constructor(
    readonly limits: AdmissionLimits = DEFAULT_ADMISSION_LIMITS,
    private readonly now: () => number = Date.now,
    private readonly maxQueueWaitMs = Infinity,
  ) {}

  /** Connections accepted and not yet authenticated or closed (held ones not included). */
  get unauthenticated(): number {
    return this.pending.size;
  }

  /** Connections held, waiting for a slot. */
  get queued(): number {
    return this.queue.length - this.head;
  }

  /**
   * Decides on a newly accepted TCP connection. 'admitted': it is pending until `settle` is
   * called for it. 'queued': `item` is held and comes back from a later `settle` (or `drain`).
   */
  admit(endpoint: string, remoteAddress: string, item?: T): AdmissionDecision {
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
    if (!this.holding && this.pending.size < this.limits.maxUnauthenticated && this.queued === 0) {
      this.pending.set(endpoint, now);
      return 'admitted';
    }
    if (item !== undefined && this.queued < this.limits.maxQueued) {
      this.queue.push({ endpoint, item, acceptedAt: now });
      return 'queued';
    }
    return 'unauthenticated_limit';
  }

  /**
   * The connection authenticated or closed: it no longer takes a slot. Idempotent. Returns the
   * held connections that the free slots go to (pending from now on, their deadline counted from
   * now), and those that waited past maxQueueWaitMs (dropped from the line).
   */
  settle(endpoint: string): Dequeued<T> {
    this.pending.delete(endpoint);
    return this.dequeue();
  }

  /** From now on every admitted connection is held, none started, until `open`. */
  hold(): void {
    this.holding = true;
  }

  /** Ends `hold`: the held connections that get the free slots, and those that waited too long. */
  open(): Dequeued<T> {
    this.holding = false;
    return this.dequeue();
  }

  private dequeue(): Dequeued<T> {
    const start: T[] = [];
    const expired: T[] = [];
    const now = this.now();
    while (!this.holding && this.queued > 0 && this.pending.size < this.limits.maxUnauthenticated) {
      const held = this.queue[this.head]!;
      this.head++;
      if (now - held.acceptedAt > this.maxQueueWaitMs) {
        expired.push(held.item);
        continue;
      }
      this.pending.set(held.endpoint, now);
      start.push(held.item);
    }
    this.compact();
    return { start, expired };
  }

  /** Empties the line (the server stops): every held connection, to close. */
  drain(): T[] {
    const items = this.queue.slice(this.head).map((held) => held.item);
    this.queue = [];
    this.head = 0;
    return items;
  }

  /** Milliseconds left of a deadline that started when the endpoint got its slot (its accept, unless it was held). */
  remaining(endpoint: string, deadlineMs: number): number {
    const accepted = this.pending.get(endpoint);
    if (accepted === undefined) return deadlineMs;
    return Math.max(0, accepted + deadlineMs - this.now());
  }

  private compact(): void {
    if (this.head === this.queue.length) {
      this.queue = [];
      this.head = 0;
    } else if (this.head > 1024 && this.head * 2 > this.queue.length) {
      this.queue = this.queue.slice(this.head);
      this.head = 0;
    }
  }
}

/**
 * Which server replica a node's reply goes back to.
 *
 * Every replica of a control plane shares one tunnel CIDR and one tunnel address, so the
 * destination of a reply cannot say which replica asked. The client remembers, per flow, the
 * replica whose session the flow's packets came in on, and sends the node's packets of that flow
 * back on the same replica's session.
 *
 * A flow is keyed as the node sees it: family, protocol, the node-side address and port and the
 * remote address and port. ICMP echo uses its identifier as the node-side port and 0 as the
 * remote one, so a request and its reply share a key. An ICMP error the node sends (port
 * unreachable, packet too big, …) is keyed by the packet it quotes, so it follows the flow that
 * caused it. Protocols without ports, and IPv4 fragments after the first, are keyed by addresses
 * and protocol alone. A flow the table does not know (the node opened it, or it expired) has no
 * replica: the caller picks one.
 *
 * The table is set-associative, like a CPU cache: a flow's hash picks one bucket of WAYS slots.
 * A flow idle for longer than `idleMs` is gone. Eviction rule: a new flow whose bucket holds WAYS
 * live flows replaces the one of them idle the longest (counted in `evictions`). Lookups and
 * inserts allocate nothing: keys are written into a reused scratch buffer and compared byte by
 * byte against typed arrays.
 */

// Key layout, in `scratch` and in each slot of `keys`:
//   0 family (4 or 6) | 1 protocol | 2-3 node-side port | 4-5 remote port | 6-7 zero |
//   8-23 node-side address | 24-39 remote address   (IPv4 uses the first 4 bytes of each)
const KEY_BYTES = 40;
const LOCAL_PORT = 2;
const REMOTE_PORT = 4;
const LOCAL_ADDRESS = 8;
const REMOTE_ADDRESS = 24;

/** Slots per bucket: the flows that compete for room when the table is full. */
export const WAYS = 8;
const EMPTY = -1;

const PROTO_ICMP = 1;
const PROTO_TCP = 6;
const PROTO_UDP = 17;
const PROTO_DCCP = 33;
const PROTO_ICMP6 = 58;
const PROTO_SCTP = 132;
const PROTO_UDPLITE = 136;

/** IPv6 extension headers walked to find the transport header, and how many at most. */
const EXT_HOP_BY_HOP = 0;
const EXT_ROUTING = 43;
const EXT_FRAGMENT = 44;
const EXT_DESTINATION = 60;
const MAX_EXTENSION_HEADERS = 4;

export interface ReplyFlowOptions {
  /** Flows held at most: a power of two, at least WAYS. */
  readonly capacity: number;
  /** A flow with no packet either way for this long is forgotten. */
  readonly idleMs: number;
}

export const DEFAULT_REPLY_FLOWS: ReplyFlowOptions = { capacity: 4096, idleMs: 300_000 };
const MAX_CAPACITY = 1 << 20;

export class ReplyFlows {
  /** New flows that replaced a live one because their bucket was full. */
  evictions = 0;
  /** Flows that came in from another replica than the one they were held for (the newer wins). */
  takeovers = 0;

  private readonly scratch = new Uint8Array(KEY_BYTES);
  private readonly keys: Uint8Array;
  private readonly hashes: Uint32Array;
  private readonly replicas: Int32Array;
  private readonly lastSeen: Float64Array;
  private readonly bucketMask: number;
  private readonly idleMs: number;

  constructor(options: ReplyFlowOptions = DEFAULT_REPLY_FLOWS) {
    const { capacity, idleMs } = options;
    if (!Number.isInteger(capacity) || capacity < WAYS || capacity > MAX_CAPACITY || (capacity & (capacity - 1)) !== 0)
      throw new RangeError(
        `reply flow capacity must be a power of two from ${WAYS} to ${MAX_CAPACITY}, got ${capacity}`,
      );
    if (!(idleMs > 0)) throw new RangeError(`reply flow idle time must be positive, got ${idleMs}`);
    this.keys = new Uint8Array(capacity * KEY_BYTES);
    this.hashes = new Uint32Array(capacity);
    this.replicas = new Int32Array(capacity).fill(EMPTY);
    this.lastSeen = new Float64Array(capacity);
    this.bucketMask = capacity / WAYS - 1;
    this.idleMs = idleMs;
  }

  get capacity(): number {
    return this.replicas.length;
  }

  /**
   * A packet from replica `replica` (a small non-negative number) on its way to the node: its
   * flow now belongs to that replica. ICMP errors are not flows and are not learned.
   */
  learn(packet: Uint8Array, replica: number, now: number): void {
    if (!this.keyOf(packet, 0, packet.length, true, false)) return;
    const hash = this.hash();
    const first = (hash & this.bucketMask) * WAYS;
    let free = -1;
    let oldest = first;
    for (let slot = first; slot < first + WAYS; slot++) {
      const owner = this.replicas[slot]!;
      const live = owner !== EMPTY && now - this.lastSeen[slot]! <= this.idleMs;
      if (!live) {
        if (free < 0) free = slot;
        continue;
      }
      if (this.hashes[slot] === hash && this.sameKey(slot)) {
        if (owner !== replica) {
          this.takeovers++;
          this.replicas[slot] = replica;
        }
        this.lastSeen[slot] = now;
        return;
      }
      if (this.lastSeen[slot]! < this.lastSeen[oldest]!) oldest = slot;
    }
    let slot = free;
    if (slot < 0) {
      slot = oldest;
      this.evictions++;
    }
    this.keys.set(this.scratch, slot * KEY_BYTES);
    this.hashes[slot] = hash;
    this.replicas[slot] = replica;
    this.lastSeen[slot] = now;
  }

  /** The replica a packet from the node belongs to, or -1 when its flow is unknown. */
  lookup(packet: Uint8Array, now: number): number {
    if (!this.keyOf(packet, 0, packet.length, false, false)) return -1;
    const hash = this.hash();
    const first = (hash & this.bucketMask) * WAYS;
    for (let slot = first; slot < first + WAYS; slot++) {
      const owner = this.replicas[slot]!;
      if (owner === EMPTY || this.hashes[slot] !== hash || now - this.lastSeen[slot]! > this.idleMs) continue;
      if (!this.sameKey(slot)) continue;
      this.lastSeen[slot] = now;
      return owner;
    }
    return -1;
  }

  /** Drops every flow held for `replica` (it was forgotten); returns how many. */
  forget(replica: number): number {
    let dropped = 0;
    for (let slot = 0; slot < this.replicas.length; slot++) {
      if (this.replicas[slot] !== replica) continue;
      this.replicas[slot] = EMPTY;
      dropped++;
    }
    return dropped;
  }

  /** Live flows per replica (for status; walks the whole table). */
  countByReplica(now: number): Map<number, number> {
    const counts = new Map<number, number>();
    for (let slot = 0; slot < this.replicas.length; slot++) {
      const owner = this.replicas[slot]!;
      if (owner === EMPTY || now - this.lastSeen[slot]! > this.idleMs) continue;
      counts.set(owner, (counts.get(owner) ?? 0) + 1);
    }
    return counts;
  }

  /**
   * Writes the flow key of the IP packet at packet[start, end) into `scratch`. `fromServer`: the
   * packet travels toward the node (its destination is the node side). `quoted`: the packet is
   * the one an ICMP error quotes, so it may be cut short after its first transport bytes.
   * Returns false for something that is no flow: too short, not IP, or an ICMP error from the
   * server.
   */
  private keyOf(packet: Uint8Array, start: number, end: number, fromServer: boolean, quoted: boolean): boolean {
    const key = this.scratch;
    key.fill(0);
    if (end - start < 1) return false;
    const version = packet[start]! >> 4;
    let protocol: number;
    let transport: number; // offset of the transport header, -1 when this packet has none
    let source: number;
    let addressBytes: number;
    if (version === 4) {
      if (end - start < 20) return false;
      const headerBytes = (packet[start]! & 0x0f) * 4;
      if (headerBytes < 20) return false;
      protocol = packet[start + 9]!;
      const fragmentOffset = ((packet[start + 6]! & 0x1f) << 8) | packet[start + 7]!;
      transport = fragmentOffset === 0 ? start + headerBytes : -1;
      source = start + 12;
      addressBytes = 4;
    } else if (version === 6) {
      if (end - start < 40) return false;
      protocol = packet[start + 6]!;
      transport = start + 40;
      for (let walked = 0; walked < MAX_EXTENSION_HEADERS && transport >= 0; walked++) {
        if (protocol === EXT_FRAGMENT) {
          if (transport + 8 > end) break;
          const fragmentOffset = (packet[transport + 2]! << 5) | (packet[transport + 3]! >> 3);
          protocol = packet[transport]!;
          transport = fragmentOffset === 0 ? transport + 8 : -1;
        } else if (protocol === EXT_HOP_BY_HOP || protocol === EXT_ROUTING || protocol === EXT_DESTINATION) {
          if (transport + 2 > end) break;
          protocol = packet[transport]!;
          transport += (packet[transport + 1]! + 1) * 8;
        } else break;
      }
      source = start + 8;
      addressBytes = 16;
    } else return false;
    const destination = source + addressBytes;
    const local = fromServer ? destination : source;
    const remote = fromServer ? source : destination;
    key[0] = version;
    key[1] = protocol;
    for (let i = 0; i < addressBytes; i++) {
      key[LOCAL_ADDRESS + i] = packet[local + i]!;
      key[REMOTE_ADDRESS + i] = packet[remote + i]!;
    }
    if (transport < 0 || transport + 4 > end) return true;
    switch (protocol) {
      case PROTO_TCP:
      case PROTO_UDP:
      case PROTO_SCTP:
      case PROTO_UDPLITE:
      case PROTO_DCCP: {
        // Source port at +0, destination port at +2.
        const nodeSide = fromServer ? transport + 2 : transport;
        const remoteSide = fromServer ? transport : transport + 2;
        key[LOCAL_PORT] = packet[nodeSide]!;
        key[LOCAL_PORT + 1] = packet[nodeSide + 1]!;
        key[REMOTE_PORT] = packet[remoteSide]!;
        key[REMOTE_PORT + 1] = packet[remoteSide + 1]!;
        return true;
      }
      case PROTO_ICMP:
      case PROTO_ICMP6: {
        if ((protocol === PROTO_ICMP) !== (version === 4)) return true;
        const type = packet[transport]!;
        if (isEcho(version, type)) {
          if (transport + 6 > end) return true;
          key[LOCAL_PORT] = packet[transport + 4]!;
          key[LOCAL_PORT + 1] = packet[transport + 5]!;
          return true;
        }
        if (!isError(version, type)) return true;
        // An error the node sends quotes a packet the server sent it: that packet's flow.
        if (fromServer || quoted) return false;
        return this.keyOf(packet, transport + 8, end, true, true);
      }
      default:
        return true;
    }
  }

  /** FNV-1a over the scratch key. */
  private hash(): number {
    let hash = 0x811c9dc5;
    const key = this.scratch;
    for (let i = 0; i < KEY_BYTES; i++) hash = Math.imul(hash ^ key[i]!, 0x01000193);
    return hash >>> 0;
  }

  private sameKey(slot: number): boolean {
    const { keys, scratch } = this;
    const base = slot * KEY_BYTES;
    for (let i = 0; i < KEY_BYTES; i++) if (keys[base + i] !== scratch[i]) return false;
    return true;
  }
}

function isEcho(version: number, type: number): boolean {
  return version === 4 ? type === 8 || type === 0 : type === 128 || type === 129;
}

/** Destination unreachable, time exceeded, parameter problem (and IPv6 packet too big). */
function isError(version: number, type: number): boolean {
  return version === 4 ? type === 3 || type === 11 || type === 12 : type >= 1 && type <= 4;
}

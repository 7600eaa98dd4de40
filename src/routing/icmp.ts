import {
  DST_OFFSET_V4,
  DST_OFFSET_V6,
  IPV4_HEADER_MIN,
  IPV6_HEADER_LEN,
  SRC_OFFSET_V4,
  SRC_OFFSET_V6,
  checkPacket,
} from './packet.js';

/**
 * ICMP "unreachable" replies for packets the server cannot deliver (offline or unknown node), so
 * a client fails fast instead of waiting for a timeout; and the check that an ICMP error from a
 * node speaks only about that node's own traffic.
 */

const PROTO_ICMP = 1;
const PROTO_ICMPV6 = 58;
const ICMP_HEADER_LEN = 8;
const TTL = 64;
const ICMPV4_DEST_UNREACHABLE = 3;
const ICMPV4_HOST_UNREACHABLE = 1;
const ICMPV6_DEST_UNREACHABLE = 1;
const ICMPV6_ADDRESS_UNREACHABLE = 3;
/** RFC 4443 2.4(c): an ICMPv6 error must fit in the minimum IPv6 MTU. */
const IPV6_MIN_MTU = 1280;
/** ICMPv4 types that are errors; RFC 1122 3.2.2 forbids answering them with another error. */
const ICMPV4_ERROR_TYPES = new Set([3, 4, 5, 11, 12]);

/**
 * The RFC 1071 checksum of `buf[start, end)`. `initial` is a running one's complement sum to fold
 * in, e.g. a pseudo-header; `~internetChecksum(...) & 0xffff` turns a result back into one.
 */
export function internetChecksum(buf: Uint8Array, start: number, end: number, initial = 0): number {
  let sum = initial;
  let i = start;
  for (; i + 1 < end; i += 2) sum += (buf[i] << 8) | buf[i + 1];
  if (i < end) sum += buf[i] << 8;
  while (sum > 0xffff) sum = (sum & 0xffff) + (sum >>> 16);
  return ~sum & 0xffff;
}

/**
 * The ICMP error telling the sender of `packet` that its destination is unreachable, sent from
 * `from` (the server's tunnel address, 4 or 16 bytes matching the packet's family), ready to write
 * to the TUN. Null when no error may be sent: the packet is malformed, is itself an ICMP error, is
 * a non-first fragment, or its source or destination is not a single host, since answering those
 * would cause error storms or go nowhere.
 */
export function buildUnreachable(packet: Uint8Array, from: Uint8Array): Buffer | null {
  if (checkPacket(packet) !== null) return null;
  const version = packet[0] >> 4;
  if (version === 4 && from.length === 4) return unreachableV4(packet, from);
  if (version === 6 && from.length === 16) return unreachableV6(packet, from);
  return null;
}

function unreachableV4(packet: Uint8Array, from: Uint8Array): Buffer | null {
  const src0 = packet[SRC_OFFSET_V4];
  const dst0 = packet[DST_OFFSET_V4];
  if (isZero(packet, SRC_OFFSET_V4, 4) || src0 >= 224) return null; // unspecified, multicast, class E
  if (dst0 >= 224) return null; // multicast or broadcast
  const fragmentOffset = ((packet[6] & 0x1f) << 8) | packet[7];
  if (fragmentOffset !== 0) return null; // RFC 1122 3.2.2: only the first fragment

  const headerLen = (packet[0] & 0x0f) * 4;
  if (packet[9] === PROTO_ICMP) {
    if (packet.length <= headerLen) return null;
    if (ICMPV4_ERROR_TYPES.has(packet[headerLen])) return null;
  }

  // RFC 792: the original IP header plus the first 64 bits of its payload.
  const quoted = packet.subarray(0, Math.min(packet.length, headerLen + 8));
  const out = Buffer.alloc(IPV4_HEADER_MIN + ICMP_HEADER_LEN + quoted.length);
  out[0] = 0x45;
  out.writeUInt16BE(out.length, 2);
  out[8] = TTL;
  out[9] = PROTO_ICMP;
  out.set(from, SRC_OFFSET_V4);
  out.set(packet.subarray(SRC_OFFSET_V4, SRC_OFFSET_V4 + 4), DST_OFFSET_V4);
  out.writeUInt16BE(internetChecksum(out, 0, IPV4_HEADER_MIN), 10);

  const icmp = IPV4_HEADER_MIN;
  out[icmp] = ICMPV4_DEST_UNREACHABLE;
  out[icmp + 1] = ICMPV4_HOST_UNREACHABLE;
  out.set(quoted, icmp + ICMP_HEADER_LEN);
  out.writeUInt16BE(internetChecksum(out, icmp, out.length), icmp + 2);
  return out;
}

function unreachableV6(packet: Uint8Array, from: Uint8Array): Buffer | null {
  if (isZero(packet, SRC_OFFSET_V6, 16) || packet[SRC_OFFSET_V6] === 0xff) return null;
  if (packet[DST_OFFSET_V6] === 0xff) return null; // RFC 4443 2.4(e): multicast destination
  const upper = upperLayerV6(packet);
  if (upper === undefined) return null;
  if (upper.proto === PROTO_ICMPV6) {
    if (upper.offset >= packet.length) return null;
    if (packet[upper.offset] < 128) return null; // RFC 4443 2.4(e): an error, not informational
  }

  const quoted = packet.subarray(0, Math.min(packet.length, IPV6_MIN_MTU - IPV6_HEADER_LEN - ICMP_HEADER_LEN));
  const out = Buffer.alloc(IPV6_HEADER_LEN + ICMP_HEADER_LEN + quoted.length);
  const icmpLen = out.length - IPV6_HEADER_LEN;
  out[0] = 0x60;
  out.writeUInt16BE(icmpLen, 4);
  out[6] = PROTO_ICMPV6;
  out[7] = TTL;
  out.set(from, SRC_OFFSET_V6);
  out.set(packet.subarray(SRC_OFFSET_V6, SRC_OFFSET_V6 + 16), DST_OFFSET_V6);

  const icmp = IPV6_HEADER_LEN;
  out[icmp] = ICMPV6_DEST_UNREACHABLE;
  out[icmp + 1] = ICMPV6_ADDRESS_UNREACHABLE;
  out.set(quoted, icmp + ICMP_HEADER_LEN);
  // Pseudo-header (RFC 8200 8.1): source and destination (contiguous in our header), then the
  // upper-layer length and next header, which are not in the buffer and are added as numbers.
  const addresses = ~internetChecksum(out, SRC_OFFSET_V6, IPV6_HEADER_LEN) & 0xffff;
  out.writeUInt16BE(internetChecksum(out, icmp, out.length, addresses + icmpLen + PROTO_ICMPV6), icmp + 2);
  return out;
}

/**
 * Skips the extension headers RFC 8200 lets precede the upper layer, so an ICMPv6 error behind
 * them is still recognised. Undefined for a non-first fragment, whose upper layer is not present.
 */
function upperLayerV6(packet: Uint8Array): { proto: number; offset: number } | undefined {
  let proto = packet[6];
  let offset = IPV6_HEADER_LEN;
  for (;;) {
    if (proto === 0 || proto === 43 || proto === 60) {
      // hop-by-hop, routing, destination options: length in 8-octet units, not counting the first
      if (offset + 2 > packet.length) return undefined;
      proto = packet[offset];
      offset += (packet[offset + 1] + 1) * 8;
    } else if (proto === 44) {
      if (offset + 8 > packet.length) return undefined;
      if ((((packet[offset + 2] << 8) | packet[offset + 3]) & 0xfff8) !== 0) return undefined;
      proto = packet[offset];
      offset += 8;
    } else {
      return { proto, offset };
    }
  }
}

/**
 * Whether the address at `bytes[offset]` (4 bytes for family 4, 16 for family 6) lies in the
 * routes of the node a packet came from.
 */
export type PeerAddressCheck = (family: 4 | 6, bytes: Uint8Array, offset: number) => boolean;

/**
 * Whether an ICMP or ICMPv6 packet a node sent may enter the control plane as far as its quote
 * goes. An error (unreachable, packet too big / fragmentation needed, time exceeded, parameter
 * problem, redirect, source quench) speaks about a packet the control plane sent; the kernel
 * acts on it for that packet's destination (a lower path MTU, a refused connection), and its
 * connection tracking relates it to that flow whoever sent it. So an error from node A is let
 * through only when the packet it quotes was addressed to A's own routes: A may not lower the
 * path MTU toward node B or reset the control plane's flows to B. An error whose quote is too
 * short to name its destination is refused too.
 *
 * Everything that is not an ICMP error (other protocols, echo replies, non-first fragments,
 * which carry no ICMP header) is true: other checks judge it. The packet must have passed
 * `checkPacket`. Reads the buffer in place and allocates nothing: it runs on every packet
 * from a node.
 */
export function icmpErrorQuotesPeer(packet: Uint8Array, isPeerAddress: PeerAddressCheck): boolean {
  const version = packet[0] >> 4;
  if (version === 4) {
    if (packet[9] !== PROTO_ICMP) return true;
    if ((((packet[6] & 0x1f) << 8) | packet[7]) !== 0) return true; // non-first fragment
    const icmp = (packet[0] & 0x0f) * 4;
    if (icmp >= packet.length || !ICMPV4_ERROR_TYPES.has(packet[icmp])) return true;
    const quoted = icmp + ICMP_HEADER_LEN;
    if (quoted + IPV4_HEADER_MIN > packet.length || packet[quoted] >> 4 !== 4) return false;
    return isPeerAddress(4, packet, quoted + DST_OFFSET_V4);
  }
  if (version === 6) {
    let icmp = IPV6_HEADER_LEN;
    const next = packet[6];
    if (next !== PROTO_ICMPV6) {
      if (next !== 0 && next !== 43 && next !== 44 && next !== 60) return true; // no extension header
      const upper = upperLayerV6(packet);
      if (upper === undefined || upper.proto !== PROTO_ICMPV6) return true;
      icmp = upper.offset;
    }
    if (icmp >= packet.length || packet[icmp] >= 128) return true; // informational
    const quoted = icmp + ICMP_HEADER_LEN;
    if (quoted + IPV6_HEADER_LEN > packet.length || packet[quoted] >> 4 !== 6) return false;
    return isPeerAddress(6, packet, quoted + DST_OFFSET_V6);
  }
  return true;
}

function isZero(bytes: Uint8Array, offset: number, len: number): boolean {
  for (let i = offset; i < offset + len; i++) if (bytes[i] !== 0) return false;
  return true;
}

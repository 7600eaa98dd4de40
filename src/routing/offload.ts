import { internetChecksum } from './icmp.js';

/**
 * Finishing an offloaded packet (tun/device.ts: its checksum partial, perhaps a TCP packet to
 * be cut into segments) for a peer that did not agree to take it as it is: what the kernel
 * would have done before handing the packet over with its offloads off. Rare by design (the
 * TUN's offloads are on only while every peer takes them); correct rather than fast.
 */

const PROTO_TCP = 6;
const PROTO_UDP = 17;
const TCP_FLAG_FIN = 0x01;
const TCP_FLAG_PSH = 0x08;
const TCP_FLAG_CWR = 0x80;

interface Layout {
  /** Where the transport header starts (the IP header's length). */
  readonly start: number;
  readonly protocol: number;
}

/** The layout tunio hands offloaded packets in: a bare IP header, its length the packet's. */
function layoutOf(packet: Buffer): Layout | null {
  if (packet.length < 20) return null;
  const version = packet[0]! >> 4;
  if (version === 4) {
    const start = (packet[0]! & 15) * 4;
    if (start < 20 || start > packet.length || packet.readUInt16BE(2) !== packet.length) return null;
    if ((packet[6]! & 0x3f) !== 0 || packet[7] !== 0) return null;
    return { start, protocol: packet[9]! };
  }
  if (version === 6) {
    if (packet.length < 40 || packet.readUInt16BE(4) + 40 !== packet.length) return null;
    return { start: 40, protocol: packet[6]! };
  }
  return null;
}

/** The pseudo-header sum (RFC 793, RFC 8200 8.1) for `length` transport bytes, unfolded. */
function pseudoHeaderSum(packet: Buffer, protocol: number, length: number): number {
  const v4 = packet[0]! >> 4 === 4;
  const from = v4 ? 12 : 8;
  const to = v4 ? 20 : 40;
  let sum = protocol + (length >>> 16) + (length & 0xffff);
  for (let i = from; i < to; i += 2) sum += packet.readUInt16BE(i);
  return sum;
}

/** Writes the full transport checksum of `packet` (whose transport header starts at `start`). */
function writeTransportChecksum(packet: Buffer, layout: Layout, field: number): void {
  packet.writeUInt16BE(0, field);
  let checksum = internetChecksum(
    packet,
    layout.start,
    packet.length,
    pseudoHeaderSum(packet, layout.protocol, packet.length - layout.start),
  );
  if (checksum === 0 && layout.protocol === PROTO_UDP) checksum = 0xffff; // 0 means "none" in UDP
  packet.writeUInt16BE(checksum, field);
}

/**
 * Calls `each` with the plain packets that `packet`, offloaded as `offload` says, stands for:
 * itself with its checksum completed (in place), or its TCP segments. Returns false, calling
 * nothing, when the packet is not an offloaded TCP or UDP packet of the layout tunio hands over.
 */
export function finishOffloaded(packet: Buffer, offload: number, each: (plain: Buffer) => void): boolean {
  const layout = layoutOf(packet);
  if (!layout) return false;
  const { start, protocol } = layout;
  const field = start + (protocol === PROTO_TCP ? 16 : protocol === PROTO_UDP ? 6 : -start);
  if (field < start || field + 2 > packet.length) return false;
  const mss = offload - 1;
  if (mss > 0) {
    if (protocol !== PROTO_TCP || start + 20 > packet.length) return false;
    const tcpHeader = (packet[start + 12]! >> 4) * 4;
    if (tcpHeader < 20 || start + tcpHeader > packet.length) return false;
  }
  const headerLength = mss > 0 ? start + (packet[start + 12]! >> 4) * 4 : 0;
  if (mss <= 0 || packet.length - headerLength <= mss) {
    writeTransportChecksum(packet, layout, field);
    each(packet);
    return true;
  }
  const payload = packet.length - headerLength;
  const count = Math.ceil(payload / mss);
  const out = Buffer.allocUnsafe(payload + count * headerLength);
  const v4 = packet[0]! >> 4 === 4;
  const firstId = v4 ? packet.readUInt16BE(4) : 0;
  const firstSeq = packet.readUInt32BE(start + 4);
  const flags = packet[start + 13]!;
  let at = 0;
  for (let i = 0; i < count; i++) {
    const from = headerLength + i * mss;
    const length = Math.min(mss, packet.length - from);
    const segment = out.subarray(at, at + headerLength + length);
    at += segment.length;
    packet.copy(segment, 0, 0, headerLength);
    packet.copy(segment, headerLength, from, from + length);
    if (v4) {
      segment.writeUInt16BE(segment.length, 2);
      segment.writeUInt16BE((firstId + i) & 0xffff, 4);
      segment.writeUInt16BE(0, 10);
      segment.writeUInt16BE(internetChecksum(segment, 0, start), 10);
    } else {
      segment.writeUInt16BE(segment.length - 40, 4);
    }
    segment.writeUInt32BE((firstSeq + i * mss) >>> 0, start + 4);
    let segmentFlags = flags;
    if (i > 0) segmentFlags &= ~TCP_FLAG_CWR;
    if (i < count - 1) segmentFlags &= ~(TCP_FLAG_FIN | TCP_FLAG_PSH);
    segment[start + 13] = segmentFlags;
    writeTransportChecksum(segment, layout, field);
    each(segment);
  }
  return true;
}

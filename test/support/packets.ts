// Packets as a test or an attack script hands them to a TUN: well-formed IPv4 and IPv6, an ICMP
// echo request, and one of each kind of malformed packet.

import { internetChecksum, parseAddress } from '../../src/routing/index.js';

/**
 * Hop limit and IPv4 identification of every built packet. nodelink's own ICMP errors use hop
 * limit 64 and identification 0, so a test can tell a quoted header from a freshly built one.
 */
const HOP_LIMIT = 63;
const IDENTIFICATION = 0x1234;

/** An IPv4 packet: a 20-byte header with a correct checksum, then `payload`. */
export function ipv4(src: string, dst: string, payload: Uint8Array = Buffer.from('hello'), proto = 17): Buffer {
  const p = Buffer.alloc(20 + payload.length);
  p[0] = 0x45;
  p.writeUInt16BE(p.length, 2);
  p.writeUInt16BE(IDENTIFICATION, 4);
  p[8] = HOP_LIMIT;
  p[9] = proto;
  p.set(parseAddress(src).bytes, 12);
  p.set(parseAddress(dst).bytes, 16);
  p.writeUInt16BE(internetChecksum(p, 0, 20), 10);
  p.set(payload, 20);
  return p;
}

/** An IPv6 packet: the 40-byte fixed header, then `payload`. */
export function ipv6(src: string, dst: string, payload: Uint8Array = Buffer.from('hello6'), nextHeader = 17): Buffer {
  const p = Buffer.alloc(40 + payload.length);
  p[0] = 0x60;
  p.writeUInt16BE(payload.length, 4);
  p[6] = nextHeader;
  p[7] = HOP_LIMIT;
  p.set(parseAddress(src).bytes, 8);
  p.set(parseAddress(dst).bytes, 24);
  p.set(payload, 40);
  return p;
}

/** An IPv4 ICMP echo request (identifier "NL"), with both checksums correct. */
export function icmpEchoRequest(
  src: string,
  dst: string,
  seq: number,
  data: Uint8Array = Buffer.from('nodelink'),
): Buffer {
  const icmp = Buffer.alloc(8 + data.length);
  icmp[0] = 8;
  icmp.writeUInt16BE(0x4e4c, 4);
  icmp.writeUInt16BE(seq, 6);
  icmp.set(data, 8);
  icmp.writeUInt16BE(internetChecksum(icmp, 0, icmp.length), 2);
  return ipv4(src, dst, icmp, 1);
}

/** One of each kind of malformed packet: truncated, wrong version, length mismatch (v4 and v6). */
export function malformedPackets(src: string, dst: string): Array<[string, Buffer]> {
  const good4 = ipv4(src, dst);
  const wrongVersion = Buffer.from(good4);
  wrongVersion[0] = 0x55;
  const longer = Buffer.concat([good4, Buffer.alloc(3)]);
  const shortIhl = Buffer.from(good4);
  shortIhl[0] = 0x44;
  const v6 = ipv6('fd00:19:1::5', 'fd00:18:ff::1');
  const v6Mismatch = Buffer.from(v6);
  v6Mismatch.writeUInt16BE(500, 4);
  return [
    ['empty', Buffer.alloc(0)],
    ['truncated IPv4 header', good4.subarray(0, 12)],
    ['truncated IPv6 header', v6.subarray(0, 30)],
    ['IP version 5', wrongVersion],
    ['IPv4 total length shorter than the packet', longer],
    ['IPv4 header length below 20', shortIhl],
    ['IPv6 payload length beyond the packet', v6Mismatch],
  ];
}

import { Address4, Address6 } from 'ip-address';

/**
 * Raw IP header helpers. Everything except `formatAddress` runs once or more per packet on the
 * data path, so it reads the buffer in place and allocates nothing.
 */

// Byte offsets of the addresses in the fixed IPv4 (RFC 791) and IPv6 (RFC 8200) headers.
export const SRC_OFFSET_V4 = 12;
export const DST_OFFSET_V4 = 16;
export const SRC_OFFSET_V6 = 8;
export const DST_OFFSET_V6 = 24;

export const IPV4_HEADER_MIN = 20;
export const IPV6_HEADER_LEN = 40;

export type PacketProblem = 'truncated' | 'bad_version' | 'length_mismatch';

/** The version nibble, or 0 for an empty buffer. */
export function ipVersion(packet: Uint8Array): number {
  return packet.length === 0 ? 0 : packet[0] >> 4;
}

/**
 * Why a packet read from the TUN or a peer is unusable, or null if its header is sound.
 * Length fields must match the buffer exactly: the TUN hands over one packet per read and a data
 * frame carries one packet, so any difference means corruption or a lie.
 */
export function checkPacket(packet: Uint8Array): PacketProblem | null {
  if (packet.length === 0) return 'truncated';
  const version = packet[0] >> 4;
  if (version === 4) {
    if (packet.length < IPV4_HEADER_MIN) return 'truncated';
    const headerLen = (packet[0] & 0x0f) * 4;
    if (headerLen < IPV4_HEADER_MIN) return 'length_mismatch';
    if (headerLen > packet.length) return 'truncated';
    const totalLen = (packet[2] << 8) | packet[3];
    return totalLen === packet.length ? null : 'length_mismatch';
  }
  if (version === 6) {
    if (packet.length < IPV6_HEADER_LEN) return 'truncated';
    const payloadLen = (packet[4] << 8) | packet[5];
    return IPV6_HEADER_LEN + payloadLen === packet.length ? null : 'length_mismatch';
  }
  return 'bad_version';
}

/** The family of a packet that passed `checkPacket`; anything else is a caller bug. */
export function packetFamily(packet: Uint8Array): 4 | 6 {
  const version = ipVersion(packet);
  if (version === 4 || version === 6) return version;
  throw new RangeError(`packetFamily: IP version ${version} (call checkPacket first)`);
}

/** Canonical text of an address inside a buffer. Allocates: for logs and tests only. */
export function formatAddress(family: 4 | 6, bytes: Uint8Array, offset = 0): string {
  const raw = Array.from(bytes.subarray(offset, offset + (family === 4 ? 4 : 16)));
  return family === 4 ? Address4.fromByteArray(raw).correctForm() : Address6.fromByteArray(raw).correctForm();
}

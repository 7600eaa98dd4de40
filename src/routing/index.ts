export { RoutingError, type RoutingErrorCode } from './errors.js';
export {
  DST_OFFSET_V4,
  DST_OFFSET_V6,
  IPV4_HEADER_MIN,
  IPV6_HEADER_LEN,
  SRC_OFFSET_V4,
  SRC_OFFSET_V6,
  type PacketProblem,
  checkPacket,
  formatAddress,
  ipVersion,
  packetFamily,
} from './packet.js';
export { Prefix, type ParsedAddress, parseAddress } from './prefix.js';
export { formatEndpoint } from './endpoint.js';
export { nodeIp } from './node-ip.js';
export { PrefixTable } from './table.js';
export { buildUnreachable, icmpErrorQuotesPeer, internetChecksum, type PeerAddressCheck } from './icmp.js';
export { finishOffloaded } from './offload.js';

export { RoutingError, type RoutingErrorCode } from './errors.js';
export * from './packet.js';
export { Prefix, type ParsedAddress, parseAddress } from './prefix.js';
export { formatEndpoint } from './endpoint.js';
export { nodeIp } from './node-ip.js';
export { PrefixTable } from './table.js';
export { buildUnreachable, icmpErrorQuotesPeer, internetChecksum, type PeerAddressCheck } from './icmp.js';
export { finishOffloaded } from './offload.js';

import { NodelinkError } from '../errors.js';

/**
 * Bad routing input: a CIDR or address from config, flags or a peer's announcement.
 *   bad_cidr       not ADDRESS/LENGTH, or the length is out of range
 *   host_bits_set  a valid address and length whose address is not the network address
 *   bad_address    not an IPv4 or IPv6 address
 */
export type RoutingErrorCode = 'bad_cidr' | 'host_bits_set' | 'bad_address';

export class RoutingError extends NodelinkError {
  declare readonly code: RoutingErrorCode;

  constructor(code: RoutingErrorCode, message: string) {
    super(code, message);
  }
}

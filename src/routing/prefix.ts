import { Address4, Address6 } from 'ip-address';
import { RoutingError } from './errors.js';
import { formatAddress } from './packet.js';

export interface ParsedAddress {
  family: 4 | 6;
  bytes: Uint8Array;
}

const EXAMPLES = 'such as 198.19.1.0/24 or fd00::/64';

/**
 * One IPv4 or IPv6 address in text form to raw network-order bytes. Zone ids (`fe80::1%eth0`)
 * are rejected: a route cannot carry one.
 */
export function parseAddress(s: string): ParsedAddress {
  if (!s.includes('/') && !s.includes('%')) {
    try {
      if (!s.includes(':')) {
        return { family: 4, bytes: Uint8Array.from(new Address4(s).toArray()) };
      }
      return { family: 6, bytes: bigintToBytes(new Address6(s).bigInt(), 16) };
    } catch {
      // fall through to our own message: ip-address's ones do not say what was expected
    }
  }
  throw new RoutingError('bad_address', `"${s}" is not an IP address: expected one such as 198.19.0.10 or fd00::10`);
}

/**
 * An IPv4 or IPv6 network: address bytes with every host bit zero, and a prefix length.
 * Parsed once from text; after that the data path only ever compares bytes.
 * `bytes` must not be mutated.
 */
export class Prefix {
  private text: string | undefined;

  private constructor(
    readonly family: 4 | 6,
    readonly bytes: Uint8Array,
    readonly length: number,
  ) {}

  /**
   * Parses `ADDRESS/LENGTH`. Rejects a bare address and a set host bit (`198.19.1.5/24`), both
   * of which ip-address would accept: either one is almost always a typo for a different route.
   */
  static parse(cidr: string): Prefix {
    const slash = cidr.indexOf('/');
    if (slash < 0) {
      const addr = tryParseAddress(cidr);
      if (addr) {
        const hostLen = addr.family === 4 ? 32 : 128;
        throw new RoutingError(
          'bad_cidr',
          `"${cidr}" is an address, not a CIDR: add the prefix length, e.g. ${cidr}/${hostLen}`,
        );
      }
      throw badCidr(cidr);
    }

    const addr = tryParseAddress(cidr.slice(0, slash));
    const lenText = cidr.slice(slash + 1);
    if (!addr || !/^(0|[1-9][0-9]{0,2})$/.test(lenText)) throw badCidr(cidr);
    const length = Number(lenText);
    const maxLen = addr.family === 4 ? 32 : 128;
    if (length > maxLen) {
      throw new RoutingError(
        'bad_cidr',
        `"${cidr}" has prefix length ${length}: an IPv${addr.family} prefix length is 0 to ${maxLen}`,
      );
    }

    const network = addr.bytes.slice();
    maskHostBits(network, length);
    const prefix = new Prefix(addr.family, network, length);
    if (!bytesEqual(network, addr.bytes)) {
      throw new RoutingError('host_bits_set', `"${cidr}" has host bits set: did you mean ${prefix.toString()}?`);
    }
    return prefix;
  }

  /** The host route (/32 or /128) for one address. */
  static fromAddress(addr: string): Prefix {
    const { family, bytes } = parseAddress(addr);
    return new Prefix(family, bytes, family === 4 ? 32 : 128);
  }

  get bits(): number {
    return this.family === 4 ? 32 : 128;
  }

  /** Whether the address at `bytes[offset]` (of this prefix's family) lies in this prefix. */
  containsAddress(bytes: Uint8Array, offset = 0): boolean {
    if (offset < 0 || offset + this.bytes.length > bytes.length) return false;
    const whole = this.length >> 3;
    for (let i = 0; i < whole; i++) {
      if (bytes[offset + i] !== this.bytes[i]) return false;
    }
    const rest = this.length & 7;
    if (rest === 0) return true;
    const mask = (0xff << (8 - rest)) & 0xff;
    return (bytes[offset + whole] & mask) === this.bytes[whole];
  }

  /** Whether every address of `other` lies in this prefix. */
  contains(other: Prefix): boolean {
    return this.family === other.family && this.length <= other.length && this.containsAddress(other.bytes);
  }

  /** Prefixes either nest or are disjoint, so they overlap exactly when one contains the other. */
  overlaps(other: Prefix): boolean {
    return this.contains(other) || other.contains(this);
  }

  equals(other: Prefix): boolean {
    return this.family === other.family && this.length === other.length && bytesEqual(this.bytes, other.bytes);
  }

  /**
   * The network address plus one, as text. The server takes the tunnel CIDR's first host address
   * as its own, so a prefix with no address after the network address is refused.
   */
  firstHost(): string {
    if (this.length === this.bits) {
      throw new RoutingError(
        'bad_cidr',
        `"${this.toString()}" has no room for a host address: use a shorter prefix length`,
      );
    }
    const host = this.bytes.slice();
    for (let i = host.length - 1; i >= 0; i--) {
      host[i] = (host[i] + 1) & 0xff;
      if (host[i] !== 0) break;
    }
    return formatAddress(this.family, host);
  }

  /** The network address without its length: the address itself for a host route. */
  get address(): string {
    return formatAddress(this.family, this.bytes);
  }

  /** Canonical form: dotted quad, or lowercase compressed IPv6 (RFC 5952). */
  toString(): string {
    this.text ??= `${this.address}/${this.length}`;
    return this.text;
  }
}

function tryParseAddress(s: string): ParsedAddress | undefined {
  try {
    return parseAddress(s);
  } catch {
    return undefined;
  }
}

function badCidr(cidr: string): RoutingError {
  return new RoutingError('bad_cidr', `"${cidr}" is not a CIDR: expected ADDRESS/LENGTH ${EXAMPLES}`);
}

function maskHostBits(bytes: Uint8Array, length: number): void {
  for (let i = 0; i < bytes.length; i++) {
    const keep = Math.min(8, Math.max(0, length - i * 8));
    bytes[i] &= (0xff << (8 - keep)) & 0xff;
  }
}

function bytesEqual(a: Uint8Array, b: Uint8Array): boolean {
  if (a.length !== b.length) return false;
  for (let i = 0; i < a.length; i++) if (a[i] !== b[i]) return false;
  return true;
}

function bigintToBytes(value: bigint, size: number): Uint8Array {
  const out = new Uint8Array(size);
  for (let i = size - 1; i >= 0; i--) {
    out[i] = Number(value & 0xffn);
    value >>= 8n;
  }
  return out;
}

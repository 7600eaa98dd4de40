import {
  DST_OFFSET_V4,
  DST_OFFSET_V6,
  SRC_OFFSET_V4,
  SRC_OFFSET_V6,
  ipVersion,
} from './packet.js';
import { Prefix } from './prefix.js';

/** A trie node; depth in the trie is the number of leading address bits matched so far. */
interface Node<T> {
  zero: Node<T> | undefined;
  one: Node<T> | undefined;
  /** Set when a prefix ends exactly here. */
  entry: { prefix: Prefix; value: T } | undefined;
}

function newNode<T>(): Node<T> {
  return { zero: undefined, one: undefined, entry: undefined };
}

function bitAt(bytes: Uint8Array, offset: number, i: number): number {
  return (bytes[offset + (i >> 3)] >> (7 - (i & 7))) & 1;
}

/**
 * Longest-prefix-match table: one plain binary trie per family, one level per address bit.
 * At most 128 steps per lookup over a few hundred routes is cheap next to a TLS write, and a
 * plain trie has no compression invariants to get wrong. Lookups read the address straight out of
 * the packet and allocate nothing.
 */
export class PrefixTable<T> {
  private readonly roots = { 4: newNode<T>(), 6: newNode<T>() };
  private count = 0;

  get size(): number {
    return this.count;
  }

  /** Adds a route, replacing the value of an equal prefix. */
  insert(prefix: Prefix, value: T): void {
    let node = this.roots[prefix.family];
    for (let i = 0; i < prefix.length; i++) {
      if (bitAt(prefix.bytes, 0, i)) node = node.one ??= newNode<T>();
      else node = node.zero ??= newNode<T>();
    }
    if (!node.entry) this.count++;
    node.entry = { prefix, value };
  }

  /** Removes exactly this prefix; returns whether it was present. */
  delete(prefix: Prefix): boolean {
    // Remember the path so branches left empty can be pruned on the way back up.
    const path: Node<T>[] = [this.roots[prefix.family]];
    for (let i = 0; i < prefix.length; i++) {
      const parent = path[path.length - 1];
      const child = bitAt(prefix.bytes, 0, i) ? parent.one : parent.zero;
      if (!child) return false;
      path.push(child);
    }
    const target = path[path.length - 1];
    if (!target.entry) return false;
    target.entry = undefined;
    this.count--;
    for (let i = prefix.length; i > 0; i--) {
      const node = path[i];
      if (node.entry || node.zero || node.one) break;
      const parent = path[i - 1];
      if (bitAt(prefix.bytes, 0, i - 1)) parent.one = undefined;
      else parent.zero = undefined;
    }
    return true;
  }

  /** Exact match. */
  get(prefix: Prefix): T | undefined {
    let node: Node<T> | undefined = this.roots[prefix.family];
    for (let i = 0; node && i < prefix.length; i++) {
      node = bitAt(prefix.bytes, 0, i) ? node.one : node.zero;
    }
    return node?.entry?.value;
  }

  /**
   * Longest prefix match for the address at `bytes[offset]`. An address running past the end of
   * the buffer matches nothing rather than reading `undefined` bits as zeros.
   */
  lookup(family: 4 | 6, bytes: Uint8Array, offset = 0): T | undefined {
    const bits = family === 4 ? 32 : 128;
    if (offset < 0 || offset + (bits >> 3) > bytes.length) return undefined;
    let node: Node<T> | undefined = this.roots[family];
    let best = node.entry;
    for (let i = 0; i < bits; i++) {
      node = bitAt(bytes, offset, i) ? node.one : node.zero;
      if (!node) break;
      if (node.entry) best = node.entry;
    }
    return best?.value;
  }

  /** Route for a packet's destination; the packet should have passed `checkPacket`. */
  lookupDestination(packet: Uint8Array): T | undefined {
    const version = ipVersion(packet);
    if (version === 4) return this.lookup(4, packet, DST_OFFSET_V4);
    if (version === 6) return this.lookup(6, packet, DST_OFFSET_V6);
    return undefined;
  }

  /** Route owning a packet's source, for the anti-spoofing check on packets from a peer. */
  lookupSource(packet: Uint8Array): T | undefined {
    const version = ipVersion(packet);
    if (version === 4) return this.lookup(4, packet, SRC_OFFSET_V4);
    if (version === 6) return this.lookup(6, packet, SRC_OFFSET_V6);
    return undefined;
  }

  /** Every route, IPv4 first, each family in trie (address, then length) order. */
  entries(): Array<[Prefix, T]> {
    const out: Array<[Prefix, T]> = [];
    const walk = (node: Node<T> | undefined): void => {
      if (!node) return;
      if (node.entry) out.push([node.entry.prefix, node.entry.value]);
      walk(node.zero);
      walk(node.one);
    };
    walk(this.roots[4]);
    walk(this.roots[6]);
    return out;
  }
}

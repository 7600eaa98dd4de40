import { DST_OFFSET_V4, DST_OFFSET_V6, SRC_OFFSET_V4, SRC_OFFSET_V6, ipVersion } from './packet.js';
import { Prefix } from './prefix.js';

interface Entry<T> {
  readonly prefix: Prefix;
  value: T;
}

const EMPTY = 0;
const USED = 1;
const DELETED = 2;

/**
 * The routes of one prefix length: an open-addressing hash table over the masked address
 * words, held in typed arrays. Probing compares integers in typed arrays and never hands a
 * number to a builtin, so a lookup allocates nothing.
 */
class LengthTable<T> {
  readonly words: number;
  private readonly masks: Uint32Array;
  private keys: Uint32Array;
  private state: Uint8Array;
  private values: Array<Entry<T> | undefined>;
  private capacity = 8;
  private used = 0;
  private deleted = 0;
  private readonly scratch: Uint32Array;

  constructor(
    readonly family: 4 | 6,
    readonly length: number,
  ) {
    this.words = family === 4 ? 1 : 4;
    this.masks = new Uint32Array(this.words);
    for (let i = 0; i < this.words; i++) {
      const bits = Math.min(32, Math.max(0, length - 32 * i));
      this.masks[i] = bits === 0 ? 0 : (0xffffffff << (32 - bits)) >>> 0;
    }
    this.scratch = new Uint32Array(this.words);
    this.keys = new Uint32Array(this.capacity * this.words);
    this.state = new Uint8Array(this.capacity);
    this.values = new Array(this.capacity).fill(undefined);
  }

  get size(): number {
    return this.used;
  }

  /**
   * Masks the address at `bytes[offset]` into the scratch words and returns its hash. Words stay
   * in the typed array and the hash is cut to 30 bits: numbers above V8's small-integer range
   * would be boxed (allocated) when they cross a call.
   */
  private load(bytes: Uint8Array, offset: number): number {
    let hash = this.length;
    for (let i = 0; i < this.words; i++) {
      const at = offset + 4 * i;
      this.scratch[i] =
        ((bytes[at]! << 24) | (bytes[at + 1]! << 16) | (bytes[at + 2]! << 8) | bytes[at + 3]!) & this.masks[i]!;
      hash = Math.imul(hash ^ this.scratch[i]!, 0x9e3779b1);
      hash ^= hash >>> 15;
    }
    // A multiply carries bits only upward: keys that differ in their top bits alone (/8../15
    // prefixes) would share their low bits, the slot, and probe the table linearly. murmur3's
    // finaliser mixes the high bits down.
    hash = Math.imul(hash ^ (hash >>> 16), 0x85ebca6b);
    hash ^= hash >>> 13;
    return hash & 0x3fffffff;
  }

  /** Slot holding the scratch key, or -1. */
  private find(hash: number): number {
    const mask = this.capacity - 1;
    for (let slot = hash & mask, probes = 0; probes < this.capacity; slot = (slot + 1) & mask, probes++) {
      const state = this.state[slot];
      if (state === EMPTY) return -1;
      if (state === USED && this.matches(slot)) return slot;
    }
    return -1;
  }

  private matches(slot: number): boolean {
    const base = slot * this.words;
    for (let i = 0; i < this.words; i++) if (this.keys[base + i] !== this.scratch[i]) return false;
    return true;
  }

  lookup(bytes: Uint8Array, offset: number): Entry<T> | undefined {
    const slot = this.find(this.load(bytes, offset));
    return slot < 0 ? undefined : this.values[slot];
  }

  get(prefix: Prefix): Entry<T> | undefined {
    return this.lookup(prefix.bytes, 0);
  }

  /** Returns false when an equal prefix was already there (its value is replaced). */
  insert(prefix: Prefix, value: T): boolean {
    const existing = this.get(prefix);
    if (existing) {
      existing.value = value;
      return false;
    }
    if ((this.used + this.deleted + 1) * 2 > this.capacity)
      this.rehash(this.used + 1 > this.capacity / 4 ? this.capacity * 2 : this.capacity);
    const hash = this.load(prefix.bytes, 0);
    const mask = this.capacity - 1;
    let slot = hash & mask;
    while (this.state[slot] === USED) slot = (slot + 1) & mask;
    if (this.state[slot] === DELETED) this.deleted--;
    this.state[slot] = USED;
    this.keys.set(this.scratch, slot * this.words);
    this.values[slot] = { prefix, value };
    this.used++;
    return true;
  }

  delete(prefix: Prefix): boolean {
    const slot = this.find(this.load(prefix.bytes, 0));
    if (slot < 0) return false;
    this.state[slot] = DELETED;
    this.values[slot] = undefined;
    this.used--;
    this.deleted++;
    return true;
  }

  entries(): Array<Entry<T>> {
    return this.values.filter((entry): entry is Entry<T> => entry !== undefined);
  }

  private rehash(capacity: number): void {
    const old = this.entries();
    this.capacity = capacity;
    this.keys = new Uint32Array(capacity * this.words);
    this.state = new Uint8Array(capacity);
    this.values = new Array(capacity).fill(undefined);
    this.used = 0;
    this.deleted = 0;
    for (const entry of old) this.insert(entry.prefix, entry.value);
  }
}

/**
 * Longest-prefix-match table for IPv4 and IPv6 on raw packet bytes: one exact-match hash table
 * per prefix length present, probed from the longest length down; the first hit is the answer.
 * A cluster's routes come in a few lengths (node /32 and /128, pod /24 and /64), so a lookup is
 * a few probes whatever the number of nodes (scripts/bench-micro.ts measures it). Lookups read
 * the address straight out of the packet and allocate nothing. Checked against a naive linear
 * matcher in test/unit/routing.test.ts.
 */
export class PrefixTable<T> {
  /** Per family, one table per prefix length present, longest first. */
  private readonly byFamily: { 4: LengthTable<T>[]; 6: LengthTable<T>[] } = { 4: [], 6: [] };
  private count = 0;

  get size(): number {
    return this.count;
  }

  /** Adds a route, replacing the value of an equal prefix. */
  insert(prefix: Prefix, value: T): void {
    let table = this.tableFor(prefix);
    if (!table) {
      table = new LengthTable<T>(prefix.family, prefix.length);
      this.byFamily[prefix.family] = [...this.byFamily[prefix.family], table].sort((a, b) => b.length - a.length);
    }
    if (table.insert(prefix, value)) this.count++;
  }

  /** Removes exactly this prefix; returns whether it was present. */
  delete(prefix: Prefix): boolean {
    const table = this.tableFor(prefix);
    if (!table || !table.delete(prefix)) return false;
    this.count--;
    if (table.size === 0) this.byFamily[prefix.family] = this.byFamily[prefix.family].filter((t) => t !== table);
    return true;
  }

  /** Exact match. */
  get(prefix: Prefix): T | undefined {
    return this.tableFor(prefix)?.get(prefix)?.value;
  }

  /**
   * Longest prefix match for the address at `bytes[offset]`. An address running past the end of
   * the buffer matches nothing.
   */
  lookup(family: 4 | 6, bytes: Uint8Array, offset = 0): T | undefined {
    if (offset < 0 || offset + (family === 4 ? 4 : 16) > bytes.length) return undefined;
    const tables = this.byFamily[family];
    for (let t = 0; t < tables.length; t++) {
      const entry = tables[t]!.lookup(bytes, offset);
      if (entry !== undefined) return entry.value;
    }
    return undefined;
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

  /** Every route, IPv4 first, each family longest prefix first. */
  entries(): Array<[Prefix, T]> {
    return [...this.byFamily[4], ...this.byFamily[6]].flatMap((table) =>
      table.entries().map((entry): [Prefix, T] => [entry.prefix, entry.value]),
    );
  }

  private tableFor(prefix: Prefix): LengthTable<T> | undefined {
    return this.byFamily[prefix.family].find((table) => table.length === prefix.length);
  }
}

// Properties of every parser that reads bytes an attacker controls, as fast-check properties.
// One definition, two uses: test/unit/properties.test.ts runs each a few hundred times in
// `npm test`; scripts/fuzz.ts (`npm run fuzz`) runs them a million times and more.
//
// Each target feeds its parser both random inputs and mutations of valid ones (bit flips,
// overwritten bytes, truncation, insertion, deletion, a forged length field), since random
// bytes alone rarely get past the first check. A "crash" is any exception other than the
// parser's own typed error, or a broken invariant (a frame larger than the limit, an ICMP
// reply that is not a sound packet, a lookup that disagrees with a naive matcher, …).

import fc from 'fast-check';
import { sign } from 'node:crypto';
import {
  AuthError,
  encodeHello,
  encodeKey,
  generateSeed,
  keyPairFromSeed,
  parsePeers,
  privateKeyObject,
  verifyHello,
  type KeyPair,
} from '../src/auth/index.js';
import {
  FrameDecoder,
  FrameType,
  HEADER_SIZE,
  ProtocolError,
  decodeCodePayload,
  encodeFrame,
  isKnownFrameType,
} from '../src/protocol/index.js';
import {
  Prefix,
  PrefixTable,
  buildUnreachable,
  checkPacket,
  formatAddress,
  internetChecksum,
} from '../src/routing/index.js';

// ---------------------------------------------------------------------------------------------
// mutation

export type Mutation =
  | { kind: 'flip'; at: number; bit: number }
  | { kind: 'set'; at: number; value: number }
  | { kind: 'truncate'; at: number }
  | { kind: 'insert'; at: number; bytes: Uint8Array }
  | { kind: 'delete'; at: number; count: number }
  | { kind: 'u16'; at: number; value: number }
  | { kind: 'u32'; at: number; value: number };

/** Positions are taken modulo the length, so any mutation applies to any input. */
const mutationArb: fc.Arbitrary<Mutation> = fc.oneof(
  fc.record({ kind: fc.constant('flip' as const), at: fc.nat(), bit: fc.integer({ min: 0, max: 7 }) }),
  fc.record({
    kind: fc.constant('set' as const),
    at: fc.nat(),
    value: fc.oneof(fc.constantFrom(0, 0xff, 0x7f, 0x80, 4, 6, 0x45, 0x60), fc.integer({ min: 0, max: 255 })),
  }),
  fc.record({ kind: fc.constant('truncate' as const), at: fc.nat() }),
  fc.record({
    kind: fc.constant('insert' as const),
    at: fc.nat(),
    bytes: fc.uint8Array({ minLength: 1, maxLength: 16 }),
  }),
  fc.record({ kind: fc.constant('delete' as const), at: fc.nat(), count: fc.integer({ min: 1, max: 16 }) }),
  fc.record({
    kind: fc.constant('u16' as const),
    at: fc.nat(),
    value: fc.oneof(fc.constantFrom(0, 1, 19, 20, 39, 40, 0xffff), fc.integer({ min: 0, max: 0xffff })),
  }),
  fc.record({
    kind: fc.constant('u32' as const),
    at: fc.nat(),
    value: fc.oneof(fc.constantFrom(0, 1, 4095, 4096, 4097, 65599, 65600, 0xffffffff), fc.nat()),
  }),
);

export function mutate(input: Uint8Array, mutations: readonly Mutation[]): Buffer {
  let out = Buffer.from(input);
  for (const m of mutations) {
    const n = out.length;
    switch (m.kind) {
      case 'flip':
        if (n > 0) out[m.at % n] ^= 1 << m.bit;
        break;
      case 'set':
        if (n > 0) out[m.at % n] = m.value;
        break;
      case 'truncate':
        out = out.subarray(0, m.at % (n + 1));
        break;
      case 'insert': {
        const at = m.at % (n + 1);
        out = Buffer.concat([out.subarray(0, at), m.bytes, out.subarray(at)]);
        break;
      }
      case 'delete': {
        const at = m.at % (n + 1);
        out = Buffer.concat([out.subarray(0, at), out.subarray(at + m.count)]);
        break;
      }
      case 'u16':
        if (n >= 2) out.writeUInt16BE(m.value, m.at % (n - 1));
        break;
      case 'u32':
        if (n >= 4) out.writeUInt32BE(m.value >>> 0, m.at % (n - 3));
        break;
    }
  }
  return out;
}

/** A valid input from `valid`, mutated 1 to 4 times. */
function mutated<T extends Uint8Array>(valid: fc.Arbitrary<T>): fc.Arbitrary<Buffer> {
  return fc.tuple(valid, fc.array(mutationArb, { minLength: 1, maxLength: 4 })).map(([input, ms]) => mutate(input, ms));
}

/** Cut points that split a buffer into chunks, as TLS records do. */
function splitAt(bytes: Uint8Array, cuts: readonly number[]): Buffer[] {
  const points = [...new Set(cuts.map((c) => c % (bytes.length + 1)))].sort((a, b) => a - b);
  const chunks: Buffer[] = [];
  let start = 0;
  for (const p of points) {
    chunks.push(Buffer.from(bytes.subarray(start, p)));
    start = p;
  }
  chunks.push(Buffer.from(bytes.subarray(start)));
  return chunks;
}

// ---------------------------------------------------------------------------------------------
// generators of valid inputs

const frameTypeArb = fc.constantFrom(
  FrameType.Hello,
  FrameType.Welcome,
  FrameType.Reject,
  FrameType.Data,
  FrameType.Ping,
  FrameType.Pong,
  FrameType.Close,
);
const frameArb = fc.record({ type: frameTypeArb, payload: fc.uint8Array({ maxLength: 300 }) });
const framesArb = fc.array(frameArb, { maxLength: 8 });
const streamArb = framesArb.map((frames) => Buffer.concat(frames.map((f) => encodeFrame(f.type, f.payload))));

const v4Arb = fc.uint8Array({ minLength: 4, maxLength: 4 });
const v6Arb = fc.uint8Array({ minLength: 16, maxLength: 16 });

/** A well-formed IPv4 or IPv6 packet, with options or extension-like bytes, any protocol. */
const packetArb: fc.Arbitrary<Buffer> = fc.oneof(
  fc
    .record({
      ihl: fc.integer({ min: 5, max: 15 }),
      proto: fc.constantFrom(1, 6, 17, 58, 0, 255),
      src: v4Arb,
      dst: v4Arb,
      frag: fc.oneof(fc.constant(0), fc.integer({ min: 0, max: 0x1fff })),
      payload: fc.uint8Array({ maxLength: 120 }),
      icmpType: fc.constantFrom(0, 3, 8, 11, 13),
    })
    .map(({ ihl, proto, src, dst, frag, payload, icmpType }) => {
      const headerLen = ihl * 4;
      const p = Buffer.alloc(headerLen + payload.length);
      p[0] = 0x40 | ihl;
      p.writeUInt16BE(p.length, 2);
      p.writeUInt16BE(frag, 6);
      p[8] = 64;
      p[9] = proto;
      p.set(src, 12);
      p.set(dst, 16);
      p.set(payload, headerLen);
      if (proto === 1 && payload.length > 0) p[headerLen] = icmpType;
      p.writeUInt16BE(internetChecksum(p, 0, headerLen), 10);
      return p;
    }),
  fc
    .record({
      next: fc.constantFrom(58, 6, 17, 0, 43, 44, 60, 59),
      src: v6Arb,
      dst: v6Arb,
      payload: fc.uint8Array({ maxLength: 200 }),
      icmpType: fc.constantFrom(1, 3, 128, 129, 135),
    })
    .map(({ next, src, dst, payload, icmpType }) => {
      const p = Buffer.alloc(40 + payload.length);
      p[0] = 0x60;
      p.writeUInt16BE(payload.length, 4);
      p[6] = next;
      p[7] = 64;
      p.set(src, 8);
      p.set(dst, 24);
      p.set(payload, 40);
      if (next === 58 && payload.length > 0) p[40] = icmpType;
      return p;
    }),
);

// Hellos are signed with a few fixed keys: key generation is not what is being fuzzed.
const HELLO_KEYS: KeyPair[] = Array.from({ length: 4 }, () => keyPairFromSeed(generateSeed()));
const nameArb = fc.stringMatching(/^[a-z0-9][a-z0-9.-]{0,30}$/);
const routeArb = fc.oneof(
  fc.tuple(v4Arb, fc.integer({ min: 0, max: 32 })).map(([b, len]) => `${formatAddress(4, b)}/${len}`),
  fc.string({ maxLength: 40 }),
);
const helloArb = fc
  .record({
    key: fc.constantFrom(...HELLO_KEYS),
    exporter: fc.uint8Array({ minLength: 32, maxLength: 32 }),
    name: nameArb,
    routes: fc.array(routeArb, { maxLength: 6 }),
  })
  .map(({ key, exporter, name, routes }) => ({
    key,
    exporter,
    name,
    routes,
    payload: encodeHello(key, exporter, { name, routes }),
  }));

/**
 * Signing dominates the cost of a fresh hello; mutations start from a pool of signed ones, so
 * the fuzzer spends its time in the parser, not in the signer.
 */
const HELLO_POOL = fc.sample(helloArb, { numRuns: 48, seed: 7 });
const pooledHelloArb = fc.constantFrom(...HELLO_POOL);

/** A hello whose body is any JSON (or not JSON), correctly signed: what a key holder can send. */
const signedOddBodyArb = fc
  .record({
    key: fc.constantFrom(...HELLO_KEYS),
    exporter: fc.uint8Array({ minLength: 32, maxLength: 32 }),
    body: fc.oneof(fc.json({ maxDepth: 3 }), fc.string({ maxLength: 200 })),
  })
  .map(({ key, exporter, body }) => {
    const bodyBytes = Buffer.from(body);
    const message = Buffer.concat([Buffer.from('nodelink hello v1\0'), exporter, bodyBytes]);
    const signature = sign(null, message, privateKeyObject(key));
    return { exporter, payload: Buffer.concat([key.publicKey, signature, bodyBytes]) };
  });

// ---------------------------------------------------------------------------------------------
// checks

function fail(why: string): never {
  throw new Error(`invariant broken: ${why}`);
}

/** Runs the decoder over chunks; returns the frames and the ProtocolError code, if any. */
function decodeAll(
  chunks: readonly Buffer[],
  maxPayload?: number,
): { frames: Array<[number, Buffer]>; error: string | null } {
  const frames: Array<[number, Buffer]> = [];
  const decoder = new FrameDecoder(
    (type, payload) => frames.push([type, Buffer.from(payload)]),
    maxPayload === undefined ? {} : { maxPayload },
  );
  let total = 0;
  for (const chunk of chunks) {
    total += chunk.length;
    try {
      decoder.push(chunk);
    } catch (err) {
      if (!(err instanceof ProtocolError)) throw err;
      return { frames, error: err.code };
    }
    if (decoder.bufferedBytes > total) fail('decoder buffers more than it was given');
  }
  for (const [type, payload] of frames) {
    if (!isKnownFrameType(type)) fail(`decoder emitted unknown type ${type}`);
    if (maxPayload !== undefined && payload.length > maxPayload)
      fail(`decoder emitted ${payload.length} bytes over the ${maxPayload} limit`);
  }
  return { frames, error: null };
}

function checkDecoder(bytes: Buffer, cuts: number[], maxPayload: number): void {
  const whole = decodeAll([bytes], maxPayload);
  const split = decodeAll(splitAt(bytes, cuts), maxPayload);
  if (whole.error !== split.error) fail(`split changed the outcome: ${whole.error} vs ${split.error}`);
  if (whole.frames.length !== split.frames.length) fail('split changed the frames');
  whole.frames.forEach(([type, payload], i) => {
    const [t, p] = split.frames[i]!;
    if (type !== t || !payload.equals(p)) fail(`frame ${i} differs when split`);
  });
}

function checkHello(payload: Uint8Array, exporter: Uint8Array): void {
  try {
    const hello = verifyHello(payload, exporter);
    if (typeof hello.name !== 'string' || !Array.isArray(hello.routes) || hello.publicKey.length !== 32)
      fail('verifyHello returned a malformed hello');
  } catch (err) {
    if (!(err instanceof AuthError)) throw err;
  }
}

/** An independent reading of RFC 791 / 8200 header lengths, to check checkPacket against. */
function naiveProblem(p: Uint8Array): string | null {
  if (p.length === 0) return 'truncated';
  const v = p[0]! >> 4;
  if (v === 4) {
    if (p.length < 20) return 'truncated';
    const ihl = (p[0]! & 15) * 4;
    if (ihl < 20) return 'length_mismatch';
    if (ihl > p.length) return 'truncated';
    return p[2]! * 256 + p[3]! === p.length ? null : 'length_mismatch';
  }
  if (v === 6) {
    if (p.length < 40) return 'truncated';
    return 40 + p[4]! * 256 + p[5]! === p.length ? null : 'length_mismatch';
  }
  return 'bad_version';
}

function checkPacketParsers(packet: Buffer, from4: Uint8Array, from6: Uint8Array): void {
  const problem = checkPacket(packet);
  if (problem !== naiveProblem(packet)) fail(`checkPacket says ${problem}, the naive reading ${naiveProblem(packet)}`);
  for (const from of [from4, from6]) {
    const reply = buildUnreachable(packet, from);
    if (!reply) continue;
    if (problem !== null) fail('answered a malformed packet');
    if (checkPacket(reply) !== null) fail(`ICMP reply is itself malformed (${checkPacket(reply)})`);
    const v6 = reply[0]! >> 4 === 6;
    if (v6 !== (packet[0]! >> 4 === 6)) fail('ICMP reply of the other family');
    if (v6 && reply.length > 1280) fail(`ICMPv6 reply of ${reply.length} bytes > 1280`);
    const srcAt = v6 ? 8 : 12;
    const dstAt = v6 ? 24 : 16;
    const len = v6 ? 16 : 4;
    if (!Buffer.from(reply.subarray(srcAt, srcAt + len)).equals(Buffer.from(from))) fail('ICMP reply not from `from`');
    if (!Buffer.from(reply.subarray(dstAt, dstAt + len)).equals(Buffer.from(packet.subarray(srcAt, srcAt + len))))
      fail('ICMP reply not to the sender');
    if (!v6) {
      if (internetChecksum(reply, 0, 20) !== 0) fail('IPv4 header checksum of the reply');
      if (internetChecksum(reply, 20, reply.length) !== 0) fail('ICMP checksum of the reply');
    }
    const icmpAt = v6 ? 40 : 20;
    if (reply[icmpAt] !== (v6 ? 1 : 3)) fail('reply is not destination unreachable');
  }
}

function prefixText(family: 4 | 6, bytes: Uint8Array, length: number): string {
  const masked = Uint8Array.from(bytes);
  for (let i = 0; i < masked.length; i++) {
    const keep = Math.max(0, Math.min(8, length - i * 8));
    masked[i]! &= (0xff << (8 - keep)) & 0xff;
  }
  return `${formatAddress(family, masked)}/${length}`;
}

function naiveLookup(
  prefixes: ReadonlyArray<[Prefix, number]>,
  family: 4 | 6,
  address: Uint8Array,
): number | undefined {
  let best: [Prefix, number] | undefined;
  for (const entry of prefixes) {
    if (entry[0].family === family && entry[0].containsAddress(address) && (!best || entry[0].length > best[0].length))
      best = entry;
  }
  return best?.[1];
}

const prefixArb = fc
  .oneof(
    fc.tuple(fc.constant(4 as const), v4Arb, fc.integer({ min: 0, max: 32 })),
    fc.tuple(fc.constant(6 as const), v6Arb, fc.integer({ min: 0, max: 128 })),
  )
  .map(([family, bytes, length]) => Prefix.parse(prefixText(family, bytes, length)));

function checkTable(
  prefixes: Prefix[],
  probes: Array<[4 | 6, Uint8Array]>,
  junk: Uint8Array,
  offset: number,
  removeEvery: number,
): void {
  const table = new PrefixTable<number>();
  const model = new Map<string, [Prefix, number]>();
  prefixes.forEach((prefix, i) => {
    table.insert(prefix, i);
    model.set(String(prefix), [prefix, i]);
  });
  // delete some, as a reload or a disconnect does
  prefixes.forEach((prefix, i) => {
    if (removeEvery > 0 && i % removeEvery === 0) {
      const had = model.delete(String(prefix));
      if (table.delete(prefix) !== had) fail(`delete(${prefix}) disagrees with the model`);
    }
  });
  if (table.size !== model.size) fail(`size ${table.size} vs ${model.size}`);
  const entries = [...model.values()];
  for (const [family, address] of probes) {
    // probe both random addresses and the prefixes' own network addresses
    const got = table.lookup(family, address);
    const want = naiveLookup(entries, family, address);
    if (got !== want) fail(`lookup of ${formatAddress(family, address)}: ${got} vs naive ${want}`);
  }
  for (const [prefix, value] of entries) {
    if (table.get(prefix) !== value) fail(`get(${prefix})`);
    if (table.lookup(prefix.family, prefix.bytes) === undefined) fail(`own network address of ${prefix} not found`);
  }
  // arbitrary bytes as a packet, at any offset: never throws, never reads past the end
  table.lookupDestination(junk);
  table.lookupSource(junk);
  for (const family of [4, 6] as const) {
    const r = table.lookup(family, junk, offset);
    if (offset + (family === 4 ? 4 : 16) > junk.length && r !== undefined)
      fail('lookup matched an address past the buffer');
  }
}

function checkPeersFile(text: string): void {
  try {
    parsePeers(text, 'fuzz.json', [Prefix.parse('198.18.255.0/24')]);
  } catch (err) {
    if (!(err instanceof AuthError)) throw err;
  }
}

const PEER_KEYS = HELLO_KEYS.map((k) => encodeKey(k.publicKey));
const peersDocArb = fc.record(
  {
    peers: fc.array(
      fc.record(
        {
          name: fc.oneof(nameArb, fc.string(), fc.constant(undefined), fc.integer()),
          publicKey: fc.oneof(fc.constantFrom(...PEER_KEYS), fc.string(), fc.constant(null)),
          allowedIPs: fc.oneof(fc.array(routeArb, { maxLength: 4 }), fc.constant('198.19.0.0/24'), fc.constant([])),
        },
        { requiredKeys: [] },
      ),
      { maxLength: 5 },
    ),
  },
  { requiredKeys: [] },
);

// ---------------------------------------------------------------------------------------------
// the targets

export interface FuzzTarget {
  readonly name: string;
  /** Share of a fuzz run's iterations (relative; expensive targets get less). */
  readonly weight: number;
  readonly property: fc.IPropertyWithHooks<any>; // eslint-disable-line @typescript-eslint/no-explicit-any
}

const cutsArb = fc.array(fc.nat(), { maxLength: 6 });
const limitArb = fc.oneof(fc.constantFrom(0, 6, 64, 4096, 65599), fc.integer({ min: 0, max: 5000 }));

export const targets: readonly FuzzTarget[] = [
  {
    name: 'frame decoder: valid streams round-trip at any split',
    weight: 1,
    property: fc.property(framesArb, cutsArb, (frames, cuts) => {
      const bytes = Buffer.concat(frames.map((f) => encodeFrame(f.type, f.payload)));
      const { frames: got, error } = decodeAll(splitAt(bytes, cuts));
      if (error !== null) fail(`valid stream refused: ${error}`);
      if (got.length !== frames.length) fail('frame count');
      got.forEach(([type, payload], i) => {
        if (type !== frames[i]!.type || !payload.equals(Buffer.from(frames[i]!.payload))) fail(`frame ${i}`);
      });
    }),
  },
  {
    name: 'frame decoder: random bytes',
    weight: 3,
    property: fc.property(fc.uint8Array({ maxLength: 400 }), cutsArb, limitArb, (bytes, cuts, limit) =>
      checkDecoder(Buffer.from(bytes), cuts, limit),
    ),
  },
  {
    name: 'frame decoder: mutated valid streams',
    weight: 3,
    property: fc.property(mutated(streamArb), cutsArb, limitArb, (bytes, cuts, limit) =>
      checkDecoder(bytes, cuts, limit),
    ),
  },
  {
    name: 'frame decoder: header-only forged lengths',
    weight: 1,
    property: fc.property(
      fc.integer({ min: 0, max: 255 }),
      fc.integer({ min: 0, max: 255 }),
      fc.nat(),
      limitArb,
      (version, type, length, limit) => {
        const header = Buffer.alloc(HEADER_SIZE);
        header[0] = version;
        header[1] = type;
        header.writeUInt32BE(length >>> 0, 2);
        const { error } = decodeAll([header], limit);
        const valid = version === 1 && isKnownFrameType(type) && length >>> 0 <= limit;
        if (valid !== (error === null))
          fail(`header v${version} t${type} len ${length >>> 0} limit ${limit}: ${error}`);
      },
    ),
  },
  {
    name: 'reject/close payload decoder: random bytes',
    weight: 0.5,
    property: fc.property(fc.uint8Array({ maxLength: 600 }), (bytes) => {
      try {
        const { code, reason } = decodeCodePayload(bytes);
        if (!Number.isInteger(code) || typeof reason !== 'string') fail('decodeCodePayload result');
      } catch (err) {
        if (!(err instanceof ProtocolError)) throw err;
      }
    }),
  },
  {
    name: 'hello parser (verifyHello): random bytes',
    weight: 0.5,
    property: fc.property(
      fc.uint8Array({ maxLength: 600 }),
      fc.uint8Array({ minLength: 32, maxLength: 32 }),
      (payload, exporter) => checkHello(payload, exporter),
    ),
  },
  {
    name: 'hello parser (verifyHello): mutated valid hellos never verify',
    weight: 0.3,
    property: fc.property(pooledHelloArb, fc.array(mutationArb, { minLength: 1, maxLength: 3 }), (hello, ms) => {
      const changed = mutate(hello.payload, ms);
      if (changed.equals(hello.payload)) return;
      try {
        verifyHello(changed, hello.exporter);
      } catch (err) {
        if (err instanceof AuthError) return;
        throw err;
      }
      fail('a mutated hello verified');
    }),
  },
  {
    name: 'hello parser (verifyHello): valid hellos verify here and nowhere else',
    weight: 0.03,
    property: fc.property(helloArb, fc.uint8Array({ minLength: 32, maxLength: 32 }), (hello, other) => {
      const got = verifyHello(hello.payload, hello.exporter);
      if (got.name !== hello.name || JSON.stringify(got.routes) !== JSON.stringify(hello.routes)) fail('round trip');
      if (Buffer.from(other).equals(Buffer.from(hello.exporter))) return;
      try {
        verifyHello(hello.payload, other);
      } catch (err) {
        if (err instanceof AuthError && err.code === 'bad_signature') return;
        throw err;
      }
      fail('a hello verified under another TLS session');
    }),
  },
  {
    name: 'hello parser (verifyHello): signed bodies of any shape',
    weight: 0.06,
    property: fc.property(signedOddBodyArb, ({ payload, exporter }) => checkHello(payload, exporter)),
  },
  {
    name: 'packet parser (checkPacket, buildUnreachable): random bytes',
    weight: 2,
    property: fc.property(fc.uint8Array({ maxLength: 200 }), v4Arb, v6Arb, (bytes, f4, f6) =>
      checkPacketParsers(Buffer.from(bytes), f4, f6),
    ),
  },
  {
    name: 'packet parser (checkPacket, buildUnreachable): mutated valid packets',
    weight: 3,
    property: fc.property(fc.oneof(packetArb, mutated(packetArb)), v4Arb, v6Arb, (packet, f4, f6) =>
      checkPacketParsers(packet, f4, f6),
    ),
  },
  {
    name: 'PrefixTable: insert/delete/lookup against a naive matcher, junk buffers',
    weight: 0.5,
    property: fc.property(
      fc.array(prefixArb, { maxLength: 24 }),
      fc.array(fc.oneof(fc.tuple(fc.constant(4 as const), v4Arb), fc.tuple(fc.constant(6 as const), v6Arb)), {
        maxLength: 24,
      }),
      fc.uint8Array({ maxLength: 60 }),
      fc.integer({ min: -2, max: 64 }),
      fc.integer({ min: 0, max: 4 }),
      (prefixes, probes, junk, offset, removeEvery) => checkTable(prefixes, probes, junk, offset, removeEvery),
    ),
  },
  {
    name: 'peers file parser: any JSON document',
    weight: 0.3,
    property: fc.property(
      fc.oneof(
        peersDocArb.map((d) => JSON.stringify(d)),
        fc.json({ maxDepth: 4 }),
        fc.string({ maxLength: 100 }),
      ),
      checkPeersFile,
    ),
  },
];

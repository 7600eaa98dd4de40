import { expect } from 'chai';
import {
  CloseCode,
  DEFAULT_MAX_HELLO_PAYLOAD,
  DEFAULT_MAX_PAYLOAD,
  FrameDecoder,
  FrameType,
  HEADER_SIZE,
  MAX_CODE_FRAME_SIZE,
  PROTOCOL_VERSION,
  ProtocolError,
  closeCodeName,
  decodeCodePayload,
  encodeCode,
  encodeFrame,
  isKnownFrameType,
  writeHeader,
} from '../../src/protocol/index.js';

interface Frame {
  type: FrameType;
  payload: Buffer;
}

const ALL_TYPES = [
  FrameType.Hello,
  FrameType.Welcome,
  FrameType.Reject,
  FrameType.Data,
  FrameType.Ping,
  FrameType.Pong,
  FrameType.Close,
  FrameType.Offload,
];

// mulberry32: small, seeded, good enough to pick split points reproducibly.
function prng(seed: number): () => number {
  return () => {
    seed = (seed + 0x6d2b79f5) | 0;
    let t = Math.imul(seed ^ (seed >>> 15), 1 | seed);
    t = (t + Math.imul(t ^ (t >>> 7), 61 | t)) ^ t;
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

function collector(options?: { maxPayload?: number }): { decoder: FrameDecoder; frames: Frame[] } {
  const frames: Frame[] = [];
  // Copy, because the assertions run after later pushes and views must not be trusted that long.
  const decoder = new FrameDecoder((type, payload) => frames.push({ type, payload: Buffer.from(payload) }), options);
  return { decoder, frames };
}

function randomFrames(rand: () => number, count: number, maxLength: number): Frame[] {
  const frames: Frame[] = [];
  for (let i = 0; i < count; i++) {
    const type = ALL_TYPES[Math.floor(rand() * ALL_TYPES.length)];
    // Plenty of empty and tiny payloads, so several headers share a chunk.
    const length = rand() < 0.2 ? 0 : Math.floor(rand() ** 2 * maxLength);
    const payload = Buffer.alloc(length);
    for (let j = 0; j < length; j++) payload[j] = Math.floor(rand() * 256);
    frames.push({ type, payload });
  }
  return frames;
}

function encodeAll(frames: Frame[]): Buffer {
  return Buffer.concat(frames.map((f) => encodeFrame(f.type, f.payload)));
}

// Compares without chai per frame: the split tests run it thousands of times.
function expectSameFrames(actual: Frame[], expected: Frame[]): void {
  expect(actual.length).to.equal(expected.length);
  const i = expected.findIndex((f, i) => f.type !== actual[i].type || !f.payload.equals(actual[i].payload));
  if (i >= 0) expect(actual[i], `frame ${i}`).to.deep.equal(expected[i]);
}

function header(version: number, type: number, length: number): Buffer {
  const buf = Buffer.alloc(HEADER_SIZE);
  buf[0] = version;
  buf[1] = type;
  buf.writeUInt32BE(length, 2);
  return buf;
}

function expectProtocolError(fn: () => void, code: string): void {
  try {
    fn();
  } catch (err) {
    expect(err).to.be.instanceOf(ProtocolError);
    expect((err as ProtocolError).code).to.equal(code);
    expect((err as ProtocolError).message).to.not.include('\n');
    return;
  }
  expect.fail(`expected ProtocolError ${code}`);
}

describe('protocol', () => {
  describe('frame constants', () => {
    it('knows exactly the eight frame types', () => {
      for (const t of ALL_TYPES) expect(isKnownFrameType(t)).to.equal(true);
      for (const n of [0, 9, 255, 1.5, -1]) expect(isKnownFrameType(n)).to.equal(false);
    });

    it('names every close code in stable snake_case', () => {
      expect([0, 1, 2, 3, 4, 5, 6, 7].map(closeCodeName)).to.deep.equal([
        'normal',
        'protocol_error',
        'auth_failed',
        'route_not_allowed',
        'replaced',
        'server_shutdown',
        'timeout',
        'internal',
      ]);
      expect(closeCodeName(CloseCode.Replaced)).to.equal('replaced');
      expect(closeCodeName(999)).to.equal('unknown');
    });
  });

  describe('encoding', () => {
    it('writes version, type and a big-endian u32 length', () => {
      const buf = Buffer.alloc(HEADER_SIZE + 2);
      writeHeader(buf, 2, FrameType.Data, 0xfedcba98);
      expect([...buf]).to.deep.equal([0, 0, PROTOCOL_VERSION, FrameType.Data, 0xfe, 0xdc, 0xba, 0x98]);
      expect(encodeFrame(FrameType.Ping)).to.deep.equal(Buffer.from([PROTOCOL_VERSION, FrameType.Ping, 0, 0, 0, 0]));
    });

    it('round-trips every frame type, with and without payload', () => {
      for (const type of ALL_TYPES) {
        for (const payload of [Buffer.alloc(0), Buffer.from([1, 2, 3, 4, 5, 6, 7, 8]), Buffer.alloc(1500, type)]) {
          const { decoder, frames } = collector();
          decoder.push(encodeFrame(type, payload));
          expectSameFrames(frames, [{ type, payload }]);
          expect(decoder.bufferedBytes).to.equal(0);
        }
      }
    });

    it('carries the largest IPv4 and IPv6 packets under the default limit', () => {
      const { decoder, frames } = collector();
      const v4 = Buffer.alloc(65535, 4);
      const v6 = Buffer.alloc(65535 + 40, 6);
      decoder.push(Buffer.concat([encodeFrame(FrameType.Data, v4), encodeFrame(FrameType.Data, v6)]));
      expectSameFrames(frames, [
        { type: FrameType.Data, payload: v4 },
        { type: FrameType.Data, payload: v6 },
      ]);
    });

    it('round-trips Reject and Close code payloads', () => {
      for (const type of [FrameType.Reject, FrameType.Close] as const) {
        for (const [code, reason] of [
          [CloseCode.RouteNotAllowed, 'route 10.0.0.0/8 is outside allowedIPs'],
          [CloseCode.Normal, ''],
          [0xffff, 'ünïcødé ✓'],
        ] as const) {
          const { decoder, frames } = collector();
          decoder.push(encodeCode(type, code, reason));
          expect(frames).to.have.length(1);
          expect(frames[0].type).to.equal(type);
          expect(decodeCodePayload(frames[0].payload)).to.deep.equal({ code, reason });
        }
      }
    });

    it('truncates a long reason at a character boundary to keep the frame small', () => {
      const ascii = encodeCode(FrameType.Close, CloseCode.Internal, 'x'.repeat(2000));
      expect(ascii.length).to.equal(MAX_CODE_FRAME_SIZE);
      expect(ascii.readUInt32BE(2)).to.equal(MAX_CODE_FRAME_SIZE - HEADER_SIZE);

      // 3-byte characters do not divide the 504 bytes left for the reason.
      const euro = encodeCode(FrameType.Reject, CloseCode.AuthFailed, '€'.repeat(500));
      expect(euro.length).to.be.at.most(MAX_CODE_FRAME_SIZE);
      const { code, reason } = decodeCodePayload(euro.subarray(HEADER_SIZE));
      expect(code).to.equal(CloseCode.AuthFailed);
      expect(reason).to.equal('€'.repeat(168));
      expect(euro.readUInt32BE(2)).to.equal(euro.length - HEADER_SIZE);
    });

    it('rejects a code payload shorter than its code', () => {
      expectProtocolError(() => decodeCodePayload(Buffer.from([1])), 'bad_payload');
      expectProtocolError(() => decodeCodePayload(new Uint8Array(0)), 'bad_payload');
    });
  });

  describe('FrameDecoder', () => {
    const rand = prng(0x6e6c);
    const small = randomFrames(rand, 60, 120);
    const smallStream = encodeAll(small);
    const large = randomFrames(rand, 80, 20000);
    const largeStream = encodeAll(large);

    it('decodes many frames pushed as one chunk', () => {
      for (const [frames, stream] of [
        [small, smallStream],
        [large, largeStream],
      ] as const) {
        const got = collector();
        got.decoder.push(stream);
        expectSameFrames(got.frames, frames);
        expect(got.decoder.bufferedBytes).to.equal(0);
      }
    });

    it('decodes the stream split into two chunks at every byte position', () => {
      for (let at = 0; at <= smallStream.length; at++) {
        const got = collector();
        got.decoder.push(smallStream.subarray(0, at));
        got.decoder.push(smallStream.subarray(at));
        expectSameFrames(got.frames, small);
      }
    });

    it('decodes the stream split into random chunks, down to single bytes', () => {
      const maxChunks = [1, 2, 5, 7, 64, 1500, 16384];
      for (let i = 0; i < 300; i++) {
        const maxChunk = maxChunks[i % maxChunks.length];
        // Tiny chunks over the large stream would only make the test slow, not stricter.
        const [frames, stream] = maxChunk >= 64 && i % 2 === 0 ? [large, largeStream] : [small, smallStream];
        const got = collector();
        let pos = 0;
        while (pos < stream.length) {
          const size = 1 + Math.floor(rand() * maxChunk);
          got.decoder.push(stream.subarray(pos, pos + size));
          pos += size;
        }
        expectSameFrames(got.frames, frames);
        expect(got.decoder.bufferedBytes).to.equal(0);
      }
    });

    it('emits a view into the chunk when the body lies within one chunk', () => {
      const chunk = Buffer.concat([encodeFrame(FrameType.Data, Buffer.alloc(100, 7)), encodeFrame(FrameType.Ping)]);
      const payloads: Buffer[] = [];
      const decoder = new FrameDecoder((_type, payload) => payloads.push(payload));
      decoder.push(chunk);
      expect(payloads).to.have.length(2);
      expect(payloads[0].buffer).to.equal(chunk.buffer);
      expect(payloads[0].byteOffset).to.equal(chunk.byteOffset + HEADER_SIZE);
      expect(payloads[1].length).to.equal(0);
    });

    it('copies a body that spans chunks into one buffer', () => {
      const frame = encodeFrame(FrameType.Data, Buffer.alloc(10000, 9));
      const payloads: Buffer[] = [];
      const decoder = new FrameDecoder((_type, payload) => payloads.push(payload));
      decoder.push(frame.subarray(0, 3000));
      expect(decoder.bufferedBytes).to.equal(3000 - HEADER_SIZE);
      decoder.push(frame.subarray(3000, 7000));
      decoder.push(frame.subarray(7000));
      expect(payloads).to.have.length(1);
      expect(payloads[0].equals(Buffer.alloc(10000, 9))).to.equal(true);
      expect(payloads[0].buffer).to.not.equal(frame.buffer);
    });

    describe('rejects a bad header before its body arrives', () => {
      const cases: Array<[string, Buffer, string]> = [
        ['a foreign version', header(7, FrameType.Data, 10), 'bad_version'],
        ['version 0', header(0, FrameType.Data, 10), 'bad_version'],
        ['type 0', header(PROTOCOL_VERSION, 0, 10), 'unknown_type'],
        ['type 9', header(PROTOCOL_VERSION, 9, 10), 'unknown_type'],
        ['type 255', header(PROTOCOL_VERSION, 255, 10), 'unknown_type'],
        ['an oversize length', header(PROTOCOL_VERSION, FrameType.Data, DEFAULT_MAX_PAYLOAD + 1), 'frame_too_large'],
        ['a 4 GiB length', header(PROTOCOL_VERSION, FrameType.Data, 0xffffffff), 'frame_too_large'],
      ];
      for (const [name, bad, code] of cases) {
        it(`${name}, whole or split`, () => {
          for (let split = 0; split < HEADER_SIZE; split++) {
            const { decoder, frames } = collector();
            decoder.push(encodeFrame(FrameType.Ping, Buffer.alloc(8)));
            decoder.push(bad.subarray(0, split));
            expectProtocolError(() => decoder.push(bad.subarray(split)), code);
            expect(frames).to.have.length(1);
            // Unusable afterwards, even for valid input.
            expectProtocolError(() => decoder.push(encodeFrame(FrameType.Ping)), code);
          }
        });
      }

      it('names the versions in the message', () => {
        const { decoder } = collector();
        expect(() => decoder.push(header(7, FrameType.Hello, 0))).to.throw(
          'peer speaks protocol version 7, this build speaks 1: upgrade the older side',
        );
      });
    });

    it('caps the first frame at the hello limit, then raises it from inside onFrame', () => {
      const hello = encodeFrame(FrameType.Hello, Buffer.alloc(DEFAULT_MAX_HELLO_PAYLOAD, 1));
      const data = encodeFrame(FrameType.Data, Buffer.alloc(65535, 2));
      const types: FrameType[] = [];
      const decoder = new FrameDecoder(
        (type) => {
          types.push(type);
          if (type === FrameType.Hello) decoder.setMaxPayload(DEFAULT_MAX_PAYLOAD);
        },
        { maxPayload: DEFAULT_MAX_HELLO_PAYLOAD },
      );
      decoder.push(Buffer.concat([hello, data]));
      expect(types).to.deep.equal([FrameType.Hello, FrameType.Data]);

      const strict = collector({ maxPayload: DEFAULT_MAX_HELLO_PAYLOAD });
      expectProtocolError(
        () => strict.decoder.push(header(PROTOCOL_VERSION, FrameType.Hello, DEFAULT_MAX_HELLO_PAYLOAD + 1)),
        'frame_too_large',
      );
    });

    it('applies a tightened limit to the next header', () => {
      const { decoder, frames } = collector();
      decoder.push(encodeFrame(FrameType.Data, Buffer.alloc(100)));
      decoder.setMaxPayload(10);
      decoder.push(encodeFrame(FrameType.Data, Buffer.alloc(10)));
      expect(frames).to.have.length(2);
      expectProtocolError(() => decoder.push(header(PROTOCOL_VERSION, FrameType.Data, 11)), 'frame_too_large');
    });

    it('refuses a limit that is not a u32', () => {
      const { decoder } = collector();
      for (const n of [-1, 1.5, 2 ** 32, NaN]) expect(() => decoder.setMaxPayload(n)).to.throw(RangeError);
    });

    it('is unusable after onFrame throws', () => {
      const decoder = new FrameDecoder(() => {
        throw new Error('boom');
      });
      expect(() => decoder.push(encodeFrame(FrameType.Ping))).to.throw('boom');
      expect(() => decoder.push(encodeFrame(FrameType.Ping))).to.throw('boom');
    });
  });
});

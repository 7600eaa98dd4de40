import { DEFAULT_MAX_PAYLOAD, FrameType, HEADER_SIZE, PROTOCOL_VERSION, isKnownFrameType } from './frame.js';
import { ProtocolError } from './errors.js';

export type FrameHandler = (type: FrameType, payload: Buffer) => void;

export interface FrameDecoderOptions {
  /** Largest payload accepted; defaults to DEFAULT_MAX_PAYLOAD. */
  maxPayload?: number;
}

const EMPTY = Buffer.alloc(0);
const AWAITING_HEADER = -1;

/**
 * Turns a byte stream (TLS cleartext, in chunks of any size) into frames.
 *
 * `push(chunk)` synchronously calls `onFrame` for every frame the chunk completes. The payload is
 * a view into the pushed chunk when the body lies within one chunk, and a fresh copy when it spans
 * chunks. A view keeps its whole chunk alive: copy a payload that has to wait in a queue.
 *
 * The header is validated the moment it is complete, so an oversize or foreign frame is refused
 * before its body is buffered; memory held is thus bounded by the limit plus one chunk.
 *
 * After `push` throws (a ProtocolError, or whatever `onFrame` threw) the decoder is unusable:
 * every later `push` throws the same error. Close the stream. `onFrame` must not call `push`;
 * it may call `setMaxPayload`, which applies from the next header on.
 */
export class FrameDecoder {
  // Chunks not yet fully consumed; `offset` is the read position in chunks[0].
  private readonly chunks: Buffer[] = [];
  private offset = 0;
  private buffered = 0;
  private readonly scratch = Buffer.alloc(HEADER_SIZE);
  private type = 0;
  private length = AWAITING_HEADER;
  private maxPayload = DEFAULT_MAX_PAYLOAD;
  private failure: unknown = undefined;

  constructor(
    private readonly onFrame: FrameHandler,
    options: FrameDecoderOptions = {},
  ) {
    if (options.maxPayload !== undefined) this.setMaxPayload(options.maxPayload);
  }

  /** Bytes received but not yet emitted as part of a frame. */
  get bufferedBytes(): number {
    return this.buffered;
  }

  /** The server starts at the hello limit and raises it once the peer is authenticated. */
  setMaxPayload(n: number): void {
    if (!Number.isInteger(n) || n < 0 || n > 0xffffffff) {
      throw new RangeError(`maxPayload must be an integer from 0 to ${0xffffffff}, got ${n}`);
    }
    this.maxPayload = n;
  }

  push(chunk: Buffer): void {
    if (this.failure !== undefined) throw this.failure;
    if (chunk.length === 0) return;
    this.chunks.push(chunk);
    this.buffered += chunk.length;
    try {
      this.drain();
    } catch (err) {
      this.failure = err;
      this.chunks.length = 0;
      this.buffered = 0;
      throw err;
    }
  }

  private drain(): void {
    for (;;) {
      if (this.length === AWAITING_HEADER) {
        if (this.buffered < HEADER_SIZE) return;
        this.readHeader();
      }
      if (this.buffered < this.length) return;
      const type = this.type as FrameType;
      const payload = this.take(this.length);
      this.length = AWAITING_HEADER;
      this.onFrame(type, payload);
    }
  }

  private readHeader(): void {
    let src = this.chunks[0];
    let at = this.offset;
    if (src.length - at >= HEADER_SIZE) {
      this.skip(HEADER_SIZE);
    } else {
      this.copyOut(this.scratch, HEADER_SIZE);
      src = this.scratch;
      at = 0;
    }

    const version = src[at];
    if (version !== PROTOCOL_VERSION) {
      throw new ProtocolError(
        'bad_version',
        `peer speaks protocol version ${version}, this build speaks ${PROTOCOL_VERSION}: upgrade the older side`,
      );
    }
    const type = src[at + 1];
    if (!isKnownFrameType(type)) {
      throw new ProtocolError('unknown_type', `peer sent unknown frame type ${type}: upgrade the older side`);
    }
    const length = src.readUInt32BE(at + 2);
    if (length > this.maxPayload) {
      throw new ProtocolError(
        'frame_too_large',
        `peer sent a ${FrameType[type]} frame of ${length} bytes, the limit here is ${this.maxPayload}`,
      );
    }
    this.type = type;
    this.length = length;
  }

  private take(n: number): Buffer {
    if (n === 0) return EMPTY;
    const first = this.chunks[0];
    const start = this.offset;
    if (first.length - start >= n) {
      this.skip(n);
      return first.subarray(start, start + n);
    }
    const out = Buffer.allocUnsafe(n);
    this.copyOut(out, n);
    return out;
  }

  /** Consumes n bytes, all of them within chunks[0]. */
  private skip(n: number): void {
    this.offset += n;
    this.buffered -= n;
    if (this.offset === this.chunks[0].length) {
      this.chunks.shift();
      this.offset = 0;
    }
  }

  /**
   * Consumes n buffered bytes into target[0..n), across as many chunks as they span. Spent chunks
   * are dropped with one splice, not a shift each: a peer sending 1-byte TLS records must not make
   * a frame cost quadratic time.
   */
  private copyOut(target: Buffer, n: number): void {
    let written = 0;
    let index = 0;
    let offset = this.offset;
    while (written < n) {
      const chunk = this.chunks[index];
      const count = Math.min(chunk.length - offset, n - written);
      chunk.copy(target, written, offset, offset + count);
      written += count;
      offset += count;
      if (offset === chunk.length) {
        index++;
        offset = 0;
      }
    }
    if (index > 0) this.chunks.splice(0, index);
    this.offset = offset;
    this.buffered -= n;
  }
}

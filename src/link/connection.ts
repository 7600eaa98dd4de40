import type { Duplex } from 'node:stream';
import {
  CloseCode,
  FrameDecoder,
  FrameType,
  HEADER_SIZE,
  MIN_OFFLOAD_SEGMENT,
  PING_PAYLOAD_SIZE,
  decodeCodePayload,
  encodeCode,
  encodeFrame,
  writeHeader,
} from '../protocol/index.js';
import { finishOffloaded } from '../routing/index.js';
import { TrafficCounters } from './counters.js';

/** An Offload frame's payload starts with the u16 segment size (frame.ts). */
const OFFLOAD_PREFIX = 2;

export interface ConnectionOptions {
  /** Bytes the TLS stream may hold unsent before packets, Pings and Pongs are dropped (queue_full). */
  readonly maxQueueBytes: number;
  readonly keepaliveIntervalMs: number;
  /** No frame at all from the peer for this long means it is dead: closed as `timeout`. */
  readonly deadAfterMs: number;
}

/** How one connection starts, which differs by side. */
export interface ConnectionStart {
  /** Largest frame payload accepted until setMaxPayload (default: a full packet). */
  readonly maxPayload?: number;
  /** Counters to add to (default: fresh ones). */
  readonly counters?: TrafficCounters;
}

export interface ConnectionEvents {
  /** A packet from the peer; `offload` as in tun/device.ts (0 unless the session agreed to offloads). */
  onData(packet: Buffer, offload: number): void;
  /** Hello, Welcome, Reject: whatever the session logic above decides about. */
  onControl(type: FrameType, payload: Buffer): void;
  /** Called exactly once. `code`/`reason` say why; `byPeer` when the peer sent Close or Reject. */
  onClose(code: CloseCode, reason: string, byPeer: boolean): void;
  /** A keepalive pong arrived (every keepalive interval, never per packet): for RTT metrics. */
  onPong?(rttMs: number): void;
}

/**
 * Pings answered per second, at most. A keepalive pings once per --keepalive-ms (100 ms or
 * more); a peer that pings faster wants replies queued, not round trips.
 */
export const MAX_PONGS_PER_SECOND = 20;

/**
 * A data frame after this many milliseconds without one finds the link idle (sendAlone). Bulk
 * traffic writes far more often than that, so it keeps one TLS record per tick.
 */
const IDLE_AFTER_MS = 5;

/** How long a closed stream stays open for the peer to read the Close frame. */
const CLOSE_GRACE_MS = 2000;

/**
 * One framed stream between a node and the server, shared by both ends: decoding, batched
 * writes, keepalive, counters. It knows nothing of authentication or routing.
 *
 * Outbound: frames written in one tick are corked into one TLS record and one syscall, and
 * uncorked in process.nextTick; a lone packet on an idle link goes at once instead (sendAlone).
 * Whatever a peer makes this end write is bounded, so a peer that does not read costs bounded
 * memory and stalls nobody else:
 *  - a data packet is dropped (queue_full) rather than queued once the stream holds
 *    maxQueueBytes; so are Pings and Pongs. The frames that open and close a connection (Hello,
 *    Welcome, Reject, Close: one of each at most) are always written;
 *  - a Ping is answered only once the session is open (startKeepalive), only if it is
 *    PING_PAYLOAD_SIZE bytes, and at most MAX_PONGS_PER_SECOND a second (ping_flood beyond);
 *  - a packet that would wait behind unsent bytes of an earlier tick is copied when the tick
 *    ends, all of them into one buffer: a packet is usually a view into a larger buffer (a TUN
 *    read batch holding other peers' packets, a TLS record), which a waiting view would keep
 *    alive. A packet written to an empty stream goes as it is, uncopied;
 *  - after a close nothing more is read; a stream closed while holding more than maxQueueBytes
 *    is destroyed at once: a peer that does not read would never see the goodbye.
 *
 * Offloads (tun/device.ts): once the session agreed to them (`agreeOffloads`), an offloaded
 * packet goes as an Offload frame; before that, or without, it is finished here first.
 *
 * Inbound: the stream's 'data' events, or `receive` for a stream that hands its bytes over
 * otherwise (the client's TLS socket, read into a buffer of its own).
 */
export class FramedConnection {
  /** Replaceable: a server session adopts the counters of its peer once it knows who it is. */
  counters: TrafficCounters;
  readonly connectedAt = new Date();
  rttMs: number | undefined;
  lastPongAt: number | undefined;

  private readonly decoder: FrameDecoder;
  private corked = false;
  /** The stream held unsent bytes when this tick's first frame was written. */
  private backlogged = false;
  /** Packets of this tick that wait to be copied, their offload numbers, and their frames' bytes. */
  private readonly waiting: Buffer[] = [];
  private readonly waitingOffloads: number[] = [];
  private waitingBytes = 0;
  /** When this end last wrote frames out (Date.now()): at every uncork, and for a lone packet. */
  private lastDataAt = 0;
  /** Both ends agreed to Offload frames. */
  private offloadsAgreed = false;
  private closed = false;
  /** Set by startKeepalive: the session is open and Pings get answered. */
  private sessionOpen = false;
  private pongsLeft = MAX_PONGS_PER_SECOND;
  private pongWindowStartedAt = 0;
  private lastRxAt = Date.now();
  private keepaliveTimer: NodeJS.Timeout | undefined;
  private readonly pingPayload = Buffer.alloc(8);

  constructor(
    private readonly stream: Duplex,
    private readonly events: ConnectionEvents,
    private readonly options: ConnectionOptions,
    start: ConnectionStart = {},
  ) {
    this.counters = start.counters ?? new TrafficCounters();
    this.decoder = new FrameDecoder((type, payload) => this.onFrame(type, payload), { maxPayload: start.maxPayload });
    stream.on('data', (chunk: Buffer) => this.onChunk(chunk));
    stream.on('error', (err: Error) => this.finish(CloseCode.Normal, `connection error: ${err.message}`, false));
    stream.on('close', () => this.finish(CloseCode.Normal, 'connection closed', false));
  }

  get isClosed(): boolean {
    return this.closed;
  }

  get queuedBytes(): number {
    return this.stream.writableLength + this.waitingBytes;
  }

  /** After authentication the limit rises from the tight hello cap to a full packet. */
  setMaxPayload(maxPayload: number): void {
    this.decoder.setMaxPayload(maxPayload);
  }

  /** From now on offloaded packets go as Offload frames, and the peer's are accepted. */
  agreeOffloads(): void {
    this.offloadsAgreed = true;
  }

  get offloads(): boolean {
    return this.offloadsAgreed;
  }

  /** The session is open: keepalive starts, and the peer's Pings are answered from now on. */
  startKeepalive(): void {
    this.sessionOpen = true;
    this.lastRxAt = Date.now();
    this.keepaliveTimer = setInterval(() => this.keepaliveTick(), this.options.keepaliveIntervalMs);
    this.sendPing(); // an RTT right away, not one interval later
  }

  sendControl(type: FrameType, payload?: Uint8Array): void {
    if (this.closed) return;
    this.cork();
    this.flushWaiting();
    this.stream.write(encodeFrame(type, payload));
  }

  /**
   * Returns false when the packet was dropped. `offload` as in tun/device.ts: an offloaded packet
   * for a peer that did not agree, or cut into segments smaller than the peer takes, is finished
   * first (completed, or cut into segments).
   */
  sendData(packet: Buffer, offload = 0): boolean {
    if (this.closed) return false;
    if (this.queuedBytes > this.options.maxQueueBytes) {
      this.counters.drop('queue_full');
      return false;
    }
    if (offload !== 0 && (!this.offloadsAgreed || (offload > 1 && offload - 1 < MIN_OFFLOAD_SEGMENT))) {
      if (!finishOffloaded(packet, offload, this.sendPlain)) this.counters.drop('malformed');
      return true;
    }
    this.queue(packet, offload);
    return true;
  }

  private readonly sendPlain = (packet: Buffer): void => this.queue(packet, 0);

  private queue(packet: Buffer, offload: number): void {
    if (!this.corked && this.sendAlone(packet, offload)) {
      this.counters.txPackets++;
      this.counters.txBytes += packet.length;
      return;
    }
    this.cork();
    const prefix = offload === 0 ? 0 : OFFLOAD_PREFIX;
    if (this.backlogged) {
      this.waiting.push(packet);
      this.waitingOffloads.push(offload);
      this.waitingBytes += HEADER_SIZE + prefix + packet.length;
    } else {
      // A few bytes from Node's shared pool: no new memory block per packet, only a small view
      // object; the payload itself is written as is, never copied here.
      const header = Buffer.allocUnsafe(HEADER_SIZE + prefix);
      writeFrameStart(header, 0, packet.length, offload);
      this.stream.write(header);
      this.stream.write(packet);
    }
    this.counters.txPackets++;
    this.counters.txBytes += packet.length;
  }

  /** Tells the peer why, then closes. Safe to call more than once. */
  close(code: CloseCode, reason: string, frameType: FrameType.Close | FrameType.Reject = FrameType.Close): void {
    if (this.closed) return;
    this.cork();
    this.flushWaiting();
    this.stream.write(encodeCode(frameType, code, reason));
    this.stream.end();
    // Nothing the peer sends after the goodbye is acted on: do not even decrypt it.
    this.stream.pause();
    this.finish(code, reason, false);
    if (this.stream.writableLength > this.options.maxQueueBytes) this.stream.destroy();
    // A peer that never reads must not hold the socket open forever.
    else setTimeout(() => this.stream.destroy(), CLOSE_GRACE_MS).unref();
  }

  /** Drops the connection without a goodbye (used when the peer is already gone). */
  destroy(reason: string, code = CloseCode.Normal): void {
    this.stream.destroy();
    this.finish(code, reason, false);
  }

  /** Bytes read from the stream outside its 'data' events (a socket opened with `onread`). */
  receive(chunk: Buffer): void {
    this.onChunk(chunk);
  }

  /**
   * The first packet of a tick after an idle spell, with nothing queued, is written now as one
   * buffer (a copy of one packet per idle spell): past the nextTick and the uncork's writev, Node
   * code that a packet on an idle link runs from cold caches. Later packets of the tick are corked
   * as usual, behind it.
   */
  private sendAlone(packet: Buffer, offload: number): boolean {
    const now = Date.now();
    if (now - this.lastDataAt <= IDLE_AFTER_MS || this.stream.writableLength > 0) return false;
    this.lastDataAt = now;
    const frame = Buffer.allocUnsafe(HEADER_SIZE + (offload === 0 ? 0 : OFFLOAD_PREFIX) + packet.length);
    packet.copy(frame, writeFrameStart(frame, 0, packet.length, offload));
    this.stream.write(frame);
    return true;
  }

  private cork(): void {
    if (this.corked) return;
    this.corked = true;
    this.backlogged = this.stream.writableLength > 0;
    this.stream.cork();
    process.nextTick(this.uncork);
  }

  private readonly uncork = (): void => {
    this.flushWaiting();
    this.corked = false;
    this.stream.uncork();
    this.lastDataAt = Date.now();
  };

  /** Copies the packets that wait into one buffer of their own, and writes it. */
  private flushWaiting(): void {
    if (this.waitingBytes === 0 || this.closed) return;
    const frames = Buffer.allocUnsafeSlow(this.waitingBytes);
    let offset = 0;
    for (let i = 0; i < this.waiting.length; i++) {
      const packet = this.waiting[i]!;
      offset = writeFrameStart(frames, offset, packet.length, this.waitingOffloads[i]!);
      offset += packet.copy(frames, offset);
    }
    this.waiting.length = 0;
    this.waitingOffloads.length = 0;
    this.waitingBytes = 0;
    this.stream.write(frames);
  }

  private onChunk(chunk: Buffer): void {
    if (this.closed) return; // the rest of a chunk read before the goodbye
    this.lastRxAt = Date.now();
    try {
      this.decoder.push(chunk);
    } catch (err) {
      this.close(CloseCode.ProtocolError, (err as Error).message);
    }
  }

  private onFrame(type: FrameType, payload: Buffer): void {
    if (this.closed) return;
    switch (type) {
      case FrameType.Data:
        this.counters.rxPackets++;
        this.counters.rxBytes += payload.length;
        this.events.onData(payload, 0);
        return;
      case FrameType.Offload:
        this.onOffload(payload);
        return;
      case FrameType.Ping:
        this.onPing(payload);
        return;
      case FrameType.Pong:
        this.onPong(payload);
        return;
      case FrameType.Close:
      case FrameType.Reject: {
        const { code, reason } = decodeCodePayload(payload);
        this.flushWaiting();
        this.stream.end();
        this.finish(code, reason, true);
        return;
      }
      default:
        this.events.onControl(type, payload);
    }
  }

  private onOffload(payload: Buffer): void {
    if (!this.offloadsAgreed) {
      this.close(CloseCode.ProtocolError, 'Offload frame on a session that did not agree to offloads');
      return;
    }
    if (payload.length <= OFFLOAD_PREFIX) {
      this.close(CloseCode.ProtocolError, `Offload frame of ${payload.length} bytes holds no packet`);
      return;
    }
    const packet = payload.subarray(OFFLOAD_PREFIX);
    this.counters.rxPackets++;
    this.counters.rxBytes += packet.length;
    this.events.onData(packet, payload.readUInt16BE(0) + 1);
  }

  private keepaliveTick(): void {
    if (Date.now() - this.lastRxAt > this.options.deadAfterMs) {
      // A silent peer would not read a goodbye; its close reason is what happened: timeout.
      this.destroy(`peer silent for ${this.options.deadAfterMs} ms`, CloseCode.Timeout);
      return;
    }
    this.sendPing();
  }

  private sendPing(): void {
    // A peer that has not read the queue has not read the last Ping either.
    if (this.queuedBytes > this.options.maxQueueBytes) return;
    this.pingPayload.writeDoubleBE(performance.now(), 0);
    this.sendControl(FrameType.Ping, this.pingPayload);
  }

  private onPing(payload: Buffer): void {
    // Nothing pings before the session opens (keepalive starts with it): a Ping then would
    // make a connection that has not authenticated queue replies.
    if (!this.sessionOpen) {
      this.close(CloseCode.ProtocolError, 'Ping before the session opened');
      return;
    }
    if (payload.length !== PING_PAYLOAD_SIZE) {
      this.close(CloseCode.ProtocolError, `Ping of ${payload.length} bytes (a Ping carries ${PING_PAYLOAD_SIZE})`);
      return;
    }
    const now = Date.now();
    if (now - this.pongWindowStartedAt >= 1000) {
      this.pongWindowStartedAt = now;
      this.pongsLeft = MAX_PONGS_PER_SECOND;
    }
    if (this.pongsLeft === 0) {
      this.counters.drop('ping_flood');
      return;
    }
    this.pongsLeft--;
    if (this.queuedBytes > this.options.maxQueueBytes) {
      this.counters.drop('queue_full');
      return;
    }
    this.sendControl(FrameType.Pong, payload);
  }

  private onPong(payload: Buffer): void {
    if (payload.length !== 8) return;
    const sentAt = payload.readDoubleBE(0);
    const now = performance.now();
    this.lastPongAt = Date.now();
    // A timestamp that is not one of ours measures nothing: no RTT sample from it.
    if (sentAt > 0 && sentAt <= now) {
      this.rttMs = now - sentAt;
      this.events.onPong?.(this.rttMs);
    }
  }

  private finish(code: CloseCode, reason: string, byPeer: boolean): void {
    if (this.closed) return;
    this.closed = true;
    this.waiting.length = 0;
    this.waitingOffloads.length = 0;
    this.waitingBytes = 0;
    if (this.keepaliveTimer) clearInterval(this.keepaliveTimer);
    this.events.onClose(code, reason, byPeer);
  }
}

/**
 * Writes the start of a frame carrying a `length`-byte packet at `offset`: a Data header, or an
 * Offload header and its segment size. Returns the offset after it.
 */
function writeFrameStart(target: Buffer, offset: number, length: number, offload: number): number {
  if (offload === 0) {
    writeHeader(target, offset, FrameType.Data, length);
    return offset + HEADER_SIZE;
  }
  writeHeader(target, offset, FrameType.Offload, OFFLOAD_PREFIX + length);
  target.writeUInt16BE(offload - 1, offset + HEADER_SIZE);
  return offset + HEADER_SIZE + OFFLOAD_PREFIX;
}

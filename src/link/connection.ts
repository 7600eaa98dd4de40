import type { Duplex } from 'node:stream';
import {
  CloseCode,
  FrameDecoder,
  FrameType,
  HEADER_SIZE,
  decodeCodePayload,
  encodeCode,
  encodeFrame,
  writeHeader,
} from '../protocol/index.js';
import { TrafficCounters } from './counters.js';

export interface ConnectionOptions {
  /** Bytes the TLS stream may hold unsent before data packets are dropped (queue_full). */
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
  onData(packet: Buffer): void;
  /** Hello, Welcome, Reject: whatever the session logic above decides about. */
  onControl(type: FrameType, payload: Buffer): void;
  /** Called exactly once. `code`/`reason` say why; `byPeer` when the peer sent Close or Reject. */
  onClose(code: CloseCode, reason: string, byPeer: boolean): void;
  /** A keepalive pong arrived (every keepalive interval, never per packet): for RTT metrics. */
  onPong?(rttMs: number): void;
}

/**
 * One framed stream between a node and the server, shared by both ends: decoding, batched
 * writes, keepalive, counters. It knows nothing of authentication or routing.
 *
 * Outbound: frames written in one tick are corked into one TLS record and one syscall, and
 * uncorked in process.nextTick. A data packet is dropped (queue_full) rather than queued when
 * the stream already holds maxQueueBytes, so a slow peer costs bounded memory and stalls
 * nobody else. Control frames are never dropped.
 */
export class FramedConnection {
  /** Replaceable: a server session adopts the counters of its peer once it knows who it is. */
  counters: TrafficCounters;
  readonly connectedAt = new Date();
  rttMs: number | undefined;
  lastPongAt: number | undefined;

  private readonly decoder: FrameDecoder;
  private corked = false;
  private closed = false;
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
    return this.stream.writableLength;
  }

  /** After authentication the limit rises from the tight hello cap to a full packet. */
  setMaxPayload(maxPayload: number): void {
    this.decoder.setMaxPayload(maxPayload);
  }

  startKeepalive(): void {
    this.lastRxAt = Date.now();
    this.keepaliveTimer = setInterval(() => this.keepaliveTick(), this.options.keepaliveIntervalMs);
    this.sendPing(); // an RTT right away, not one interval later
  }

  sendControl(type: FrameType, payload?: Uint8Array): void {
    if (this.closed) return;
    this.cork();
    this.stream.write(encodeFrame(type, payload));
  }

  /** Returns false when the packet was dropped. */
  sendData(packet: Buffer): boolean {
    if (this.closed) return false;
    if (this.stream.writableLength > this.options.maxQueueBytes) {
      this.counters.drop('queue_full');
      return false;
    }
    this.cork();
    // A few bytes from Node's shared pool: no new memory block per packet, only a small view
    // object; the payload itself is written as is, never copied here.
    const header = Buffer.allocUnsafe(HEADER_SIZE);
    writeHeader(header, 0, FrameType.Data, packet.length);
    this.stream.write(header);
    this.stream.write(packet);
    this.counters.txPackets++;
    this.counters.txBytes += packet.length;
    return true;
  }

  /** Tells the peer why, then closes. Safe to call more than once. */
  close(code: CloseCode, reason: string, frameType: FrameType.Close | FrameType.Reject = FrameType.Close): void {
    if (this.closed) return;
    this.cork();
    this.stream.write(encodeCode(frameType, code, reason));
    this.stream.end();
    this.finish(code, reason, false);
    // A peer that never reads must not hold the socket open forever.
    setTimeout(() => this.stream.destroy(), 2000).unref();
  }

  /** Drops the connection without a goodbye (used when the peer is already gone). */
  destroy(reason: string, code = CloseCode.Normal): void {
    this.stream.destroy();
    this.finish(code, reason, false);
  }

  private cork(): void {
    if (this.corked) return;
    this.corked = true;
    this.stream.cork();
    process.nextTick(() => {
      this.corked = false;
      this.stream.uncork();
    });
  }

  private onChunk(chunk: Buffer): void {
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
        this.events.onData(payload);
        return;
      case FrameType.Ping:
        this.sendControl(FrameType.Pong, payload);
        return;
      case FrameType.Pong:
        this.onPong(payload);
        return;
      case FrameType.Close:
      case FrameType.Reject: {
        const { code, reason } = decodeCodePayload(payload);
        this.stream.end();
        this.finish(code, reason, true);
        return;
      }
      default:
        this.events.onControl(type, payload);
    }
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
    this.pingPayload.writeDoubleBE(performance.now(), 0);
    this.sendControl(FrameType.Ping, this.pingPayload);
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
    if (this.keepaliveTimer) clearInterval(this.keepaliveTimer);
    this.events.onClose(code, reason, byPeer);
  }
}

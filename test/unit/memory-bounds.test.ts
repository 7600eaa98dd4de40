// What a peer can make either end hold: every byte bounded and counted, control frames included.
// A peer that sends Pings and never reads, one that pings before its hello, one that pings far
// faster than any keepalive, and a stalled queue beside other peers' traffic, first over a fake
// stream that never reads, then against the real server over loopback TLS.

import { expect } from 'chai';
import { Duplex } from 'node:stream';
import { setFlagsFromString } from 'node:v8';
import { runInNewContext } from 'node:vm';
import {
  CloseCode,
  FrameDecoder,
  FrameType,
  HEADER_SIZE,
  closeCodeName,
  decodeCodePayload,
  encodeFrame,
} from '../../src/protocol/index.js';
import { FramedConnection, type ConnectionEvents, type ConnectionOptions } from '../../src/link/connection.js';
import { setTimeout as sleep } from 'node:timers/promises';
import { APISERVER, Rigs, newPair, registryOf } from '../support/link-rig.js';
import { ipv4 } from '../support/packets.js';
import { waitFor } from '../support/wait.js';
import { duplexPair } from '../support/streams.js';

const MiB = 1024 * 1024;

/**
 * The near end of a connection whose peer never reads: no write ever completes, as on a socket
 * whose peer's receive window is closed, and the chunks handed to it stay referenced (a socket's
 * write request keeps them too). Frames from that peer arrive through `inject`.
 */
class StalledStream extends Duplex {
  readonly held: Buffer[] = [];

  override _write(chunk: Buffer, _encoding: BufferEncoding, _done: (error?: Error | null) => void): void {
    this.held.push(chunk);
  }

  override _writev(chunks: Array<{ chunk: Buffer }>, _done: (error?: Error | null) => void): void {
    for (const { chunk } of chunks) this.held.push(chunk);
  }

  override _read(): void {}

  inject(bytes: Buffer): void {
    this.push(bytes);
  }
}

function events(): ConnectionEvents & { closes: Array<{ code: CloseCode; reason: string }> } {
  const closes: Array<{ code: CloseCode; reason: string }> = [];
  return {
    closes,
    onData: () => undefined,
    onControl: () => undefined,
    onClose: (code, reason) => closes.push({ code, reason }),
  };
}

const OPTIONS: ConnectionOptions = {
  maxQueueBytes: 4096,
  keepaliveIntervalMs: 60_000,
  deadAfterMs: 120_000,
};

const ping = (size = 8): Buffer => encodeFrame(FrameType.Ping, Buffer.alloc(size, 1));

/** The garbage collector, which mocha does not expose: enough to measure what stays reachable. */
function collector(): () => void {
  setFlagsFromString('--expose-gc');
  return runInNewContext('gc') as () => void;
}

describe('bounded memory: peers that send and never read', function () {
  this.timeout(10_000);
  const connections: FramedConnection[] = [];
  const streams: Duplex[] = [];

  function connect(stream: Duplex, options: ConnectionOptions = OPTIONS) {
    const recorded = events();
    const connection = new FramedConnection(stream, recorded, options);
    connections.push(connection);
    streams.push(stream);
    return { connection, recorded };
  }

  afterEach(function () {
    for (const c of connections.splice(0)) c.destroy('test over');
    for (const s of streams.splice(0)) s.destroy();
  });

  describe('FramedConnection, both ends', function () {
    it('a peer that sends Pings and never reads costs at most --max-queue-bytes: the Pongs are not queued past it', async function () {
      const stream = new StalledStream();
      const { connection } = connect(stream);
      connection.startKeepalive();
      for (let round = 0; round < 50; round++) {
        stream.inject(Buffer.concat(Array.from({ length: 200 }, () => ping())));
        await sleep(25);
      }
      expect(connection.queuedBytes, 'bytes queued for a peer that reads nothing').to.be.at.most(
        OPTIONS.maxQueueBytes + 64,
      );
      expect(connection.isClosed).to.equal(false);
    });

    it('Pongs count against --max-queue-bytes like packets: past it they are dropped (queue_full)', async function () {
      const stream = new StalledStream();
      const { connection } = connect(stream);
      connection.startKeepalive();
      const packet = ipv4('198.19.1.5', APISERVER, Buffer.alloc(1000));
      while (connection.sendData(packet)) await new Promise<void>((resolve) => setImmediate(resolve));
      const queued = connection.queuedBytes;
      stream.inject(Buffer.concat(Array.from({ length: 10 }, () => ping())));
      await sleep(20);
      expect(connection.queuedBytes, 'bytes queued after 10 Pings').to.equal(queued);
      expect(connection.counters.drops.get('queue_full'), 'the packet that did not fit, then 10 Pongs').to.equal(11);
    });

    it('answers a reading peer at most 20 Pings a second, and counts the rest (ping_flood)', async function () {
      const [near, far] = duplexPair();
      streams.push(far);
      const { connection } = connect(near);
      let pongs = 0;
      const decoder = new FrameDecoder((type) => {
        if (type === FrameType.Pong) pongs++;
      });
      far.on('data', (chunk: Buffer) => decoder.push(chunk));
      connection.startKeepalive();
      far.write(Buffer.concat(Array.from({ length: 500 }, () => ping())));
      await waitFor('the Pings to be read', () => connection.counters.rxBytes === 0 && pongs > 0);
      await sleep(100);
      expect(pongs, 'Pongs for 500 Pings sent at once').to.be.at.least(1).and.at.most(20);
      expect(connection.counters.drops.get('ping_flood')).to.equal(500 - pongs);
    });

    it('closes on a Ping that is not 8 bytes (protocol_error) instead of echoing it', async function () {
      const stream = new StalledStream();
      const { connection, recorded } = connect(stream);
      connection.startKeepalive();
      stream.inject(ping(60_000));
      await waitFor('the close', () => recorded.closes.length > 0);
      expect(closeCodeName(recorded.closes[0]!.code)).to.equal('protocol_error');
      expect(recorded.closes[0]!.reason).to.match(/Ping of 60000 bytes/);
    });

    it('closing a connection whose peer reads nothing frees it at once, not after the goodbye grace', async function () {
      const stream = new StalledStream();
      const { connection } = connect(stream);
      connection.startKeepalive();
      const packet = ipv4('198.19.1.5', APISERVER, Buffer.alloc(1000));
      for (let i = 0; i < 20; i++) {
        connection.sendData(packet);
        await new Promise<void>((resolve) => setImmediate(resolve));
      }
      expect(connection.queuedBytes).to.be.above(OPTIONS.maxQueueBytes);
      connection.close(CloseCode.Timeout, 'test');
      await sleep(50);
      expect(stream.destroyed, 'destroyed within 50 ms').to.equal(true);
    });

    it('a packet that has to wait in a stalled queue is copied: the batch it was read in is freed', async function () {
      const gc = collector();
      const stream = new StalledStream();
      const { connection } = connect(stream, { ...OPTIONS, maxQueueBytes: MiB });
      const packet = ipv4(APISERVER, '198.19.1.5', Buffer.alloc(80, 3));
      const batches: Array<WeakRef<ArrayBufferLike>> = [];
      // One TUN read: a packet for the stalled peer beside a megabyte of other peers' traffic.
      const read = (): void => {
        const batch = Buffer.alloc(MiB, 7);
        packet.copy(batch, 0);
        batches.push(new WeakRef(batch.buffer));
        expect(connection.sendData(batch.subarray(0, packet.length))).to.equal(true);
      };
      for (let i = 0; i < 64; i++) {
        read();
        await new Promise<void>((resolve) => setImmediate(resolve)); // each read is a tick of its own
      }
      gc();
      await new Promise<void>((resolve) => setImmediate(resolve));
      gc();
      expect(connection.counters.txPackets).to.equal(64);
      expect(connection.queuedBytes).to.equal(64 * (HEADER_SIZE + packet.length));
      // The first went to a stream with nothing queued, as it is: the stream holds that batch.
      const alive = batches.filter((batch) => batch.deref() !== undefined).length;
      expect(alive, 'read batches kept alive by 64 queued packets of 100 bytes').to.be.at.most(1);
    });

    it('a packet for a stream with nothing waiting is written as it is: no copy on the fast path', async function () {
      const [near, far] = duplexPair();
      streams.push(far);
      const { connection } = connect(near);
      const written: Buffer[] = [];
      const write = near.write.bind(near);
      near.write = ((chunk: Buffer, ...rest: never[]) => {
        written.push(chunk);
        return write(chunk, ...rest);
      }) as typeof near.write;
      far.resume();
      // A lone packet on an idle link goes as one copied frame; the packets of a busy one do not.
      connection.sendData(ipv4('198.19.1.5', APISERVER, Buffer.alloc(20)));
      await new Promise<void>((resolve) => setImmediate(resolve));
      expect(near.writableLength).to.equal(0);
      const batch = Buffer.alloc(4096, 9);
      ipv4('198.19.1.5', APISERVER, Buffer.alloc(80)).copy(batch, 0);
      connection.sendData(batch.subarray(0, 100));
      expect(written.some((chunk) => chunk.buffer === batch.buffer)).to.equal(true);
    });
  });

  describe('the server over loopback TLS', function () {
    const rigs = new Rigs();
    const serverPair = newPair();
    const pairA = newPair();
    const registry = registryOf([{ name: 'node-a', pair: pairA, allowedIPs: ['198.19.1.0/24'] }]);

    afterEach(async function () {
      await rigs.stopAll();
    });

    it('no Pong before the hello: a Ping on a connection without one closes it (protocol_error)', async function () {
      const s = await rigs.server({ registry, keyPair: serverPair, handshakeTimeoutMs: 3000 });
      const raw = await rigs.raw(s.port);
      const started = Date.now();
      raw.socket.write(ping());
      await raw.closedPromise;
      expect(Date.now() - started, 'closed at once, not at the handshake deadline').to.be.below(1000);
      expect(raw.frame(FrameType.Pong), 'a Pong').to.equal(undefined);
      const close = raw.frame(FrameType.Close);
      expect(close, 'a Close frame').to.not.equal(undefined);
      expect(closeCodeName(decodeCodePayload(close!.payload).code)).to.equal('protocol_error');
    });
  });
});

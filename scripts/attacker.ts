// The attacker of the namespace security tests (test/netns/security.test.ts): run inside a
// namespace against the server's TLS port, it tries one attack and prints one JSON line with
// what happened. Every mode is bounded in connections and time.
//
//   attacker random  --target H:P [--count N] [--bytes B]     random bytes on N connections
//   attacker http    --target H:P                             a plain HTTP request
//   attacker tls12   --target H:P                             a TLS 1.2-only handshake
//   attacker slow    --target H:P [--count N] [--hold-ms T]   N half-open TLS handshakes, held
//   attacker flood   --target H:P [--count N]                 N new connections at once
//   attacker prehello --target H:P --src A --dst B [--count N]  Data frames before any hello
//   attacker node    --target H:P --server-key K --key FILE --name N --routes A,B
//                    --spoof S1,S2 --own S --dst D [--count N]
//                    a compromised node: authenticates with its real key, then sends ICMP echo
//                    requests from spoofed sources and from its own; reports the replies
//   attacker pingflood --target H:P [--count N] [--size B] [--seconds S] [--spacing-ms T]
//                    [--server-key K --key FILE --name N --routes A,B]
//                    Pings of B bytes, as fast as the socket takes them, and never a byte read:
//                    without --key on N connections before any hello; with it, in one session
//   attacker stallecho --target H:P --server-key K --key FILE --name N --routes A,B --src S --dst D
//                    [--seconds S] [--per-ms N]
//                    an authenticated node that never reads, sending N ICMP echo requests per ms
//                    from S to D (which keep its session alive): whatever the server has for it
//                    waits in its queue
//   attacker replaceloop --target H:P --server-key K --key FILE --name N --routes A,B
//                    [--rate R] [--seconds S]
//                    a stolen key: a new session R times a second, each replacing the last
//   attacker ptb     --target H:P --server-key K --key FILE --name N --routes A,B --own S
//                    --quote QSRC:QSPORT>QDST:QDPORT[;...] [--mtu M] [--count N]
//                    a compromised node sending ICMP "fragmentation needed" errors from its own
//                    address, each quoting a UDP datagram the control plane may have sent

import { randomBytes } from 'node:crypto';
import { connect as netConnect, type Socket } from 'node:net';
import { setTimeout as sleep } from 'node:timers/promises';
import { connect as tlsConnect, type TLSSocket } from 'node:tls';
import { EXPORTER_BYTES, EXPORTER_LABEL, decodeKey, encodeHello, keysEqual, readKeyFile } from '../src/auth/index.js';
import { FrameDecoder, FrameType, closeCodeName, decodeCodePayload, encodeFrame } from '../src/protocol/index.js';
import { internetChecksum, parseAddress } from '../src/routing/index.js';
import { serverPublicKey } from '../src/link-client/trust.js';
import { icmpEchoRequest } from '../test/support/packets.js';

const MAX_COUNT = 1000;
const MAX_WAIT_MS = 20_000;
/** The longest flood a mode runs, so that it ends well inside the 30 s guard. */
const MAX_FLOOD_S = 20;

function arg(name: string, fallback?: string): string {
  const i = process.argv.indexOf(`--${name}`);
  const value = i >= 0 ? process.argv[i + 1] : fallback;
  if (value === undefined) throw new Error(`--${name} is required`);
  return value;
}

function count(fallback: number): number {
  return Math.min(MAX_COUNT, Number(arg('count', String(fallback))));
}

function target(): { host: string; port: number } {
  const text = arg('target');
  const at = text.lastIndexOf(':');
  return { host: text.slice(0, at).replace(/^\[|\]$/g, ''), port: Number(text.slice(at + 1)) };
}

function tcp(): Promise<Socket> {
  const { host, port } = target();
  return new Promise((resolve, reject) => {
    const socket = netConnect(port, host, () => resolve(socket));
    socket.once('error', reject);
  });
}

/** Resolves with ms until the peer closed the socket, or null after maxMs (then destroys it). */
function closedAfter(socket: Socket, started: number, maxMs: number): Promise<number | null> {
  // Read (and drop) what the server sends, a TLS alert often: bytes left unread in a paused
  // socket hold back its 'end', so a server that closed cleanly after an alert looked silent
  // (about 1 random connection in 200 before this).
  socket.resume();
  return new Promise((resolve) => {
    if (socket.destroyed) return resolve(Date.now() - started);
    const timer = setTimeout(() => {
      socket.destroy();
      resolve(null);
    }, maxMs);
    socket.once('close', () => {
      clearTimeout(timer);
      resolve(Date.now() - started);
    });
  });
}

/** An ICMP echo request from src to dst, IPv4. */
function echoRequest(src: string, dst: string, seq: number): Buffer {
  return icmpEchoRequest(src, dst, seq, Buffer.from('nodelink-attack'));
}

async function random(): Promise<object> {
  const n = count(20);
  const bytes = Math.min(1 << 20, Number(arg('bytes', '4096')));
  const results = await Promise.all(
    Array.from({ length: n }, async () => {
      const socket = await tcp().catch(() => undefined);
      if (!socket) return { refused: true, closedMs: 0 };
      socket.on('error', () => undefined);
      const started = Date.now();
      socket.write(randomBytes(bytes));
      return { refused: false, closedMs: await closedAfter(socket, started, 5000) };
    }),
  );
  return {
    connections: n,
    bytesEach: bytes,
    closedByServer: results.filter((r) => r.closedMs !== null).length,
    maxCloseMs: Math.max(...results.map((r) => r.closedMs ?? Infinity)),
  };
}

async function http(): Promise<object> {
  const socket = await tcp();
  socket.on('error', () => undefined);
  const started = Date.now();
  let received = 0;
  socket.on('data', (chunk: Buffer) => {
    received += chunk.length;
  });
  socket.write(`GET / HTTP/1.1\r\nHost: ${arg('target')}\r\nUser-Agent: attacker\r\n\r\n`);
  const closedMs = await closedAfter(socket, started, 5000);
  return { closedMs, bytesReceived: received };
}

async function tls12(): Promise<object> {
  const { host, port } = target();
  const socket = tlsConnect({ host, port, rejectUnauthorized: false, maxVersion: 'TLSv1.2' });
  const outcome = await new Promise<string>((resolve) => {
    socket.once('secureConnect', () => resolve(`accepted ${socket.getProtocol()}`));
    socket.once('error', (err: NodeJS.ErrnoException) => resolve(err.code ?? err.message));
    setTimeout(() => resolve('timeout'), 5000);
  });
  socket.destroy();
  return { outcome };
}

/** A TLS record header and the start of a ClientHello, never completed. */
const PARTIAL_CLIENT_HELLO = Buffer.from([0x16, 0x03, 0x01, 0x02, 0x00, 0x01, 0x00, 0x01, 0xfc, 0x03, 0x03]);

async function slow(): Promise<object> {
  const n = count(24);
  const holdMs = Math.min(MAX_WAIT_MS, Number(arg('hold-ms', '10000')));
  const started = Date.now();
  const results = await Promise.all(
    Array.from({ length: n }, async (_, i) => {
      const socket = await tcp().catch(() => undefined);
      if (!socket) return null;
      socket.on('error', () => undefined);
      // half of them send a few bytes of a ClientHello, half send nothing at all
      if (i % 2 === 0) socket.write(PARTIAL_CLIENT_HELLO);
      return closedAfter(socket, started, holdMs);
    }),
  );
  const closed = results.filter((r): r is number => r !== null).sort((a, b) => a - b);
  return {
    connections: n,
    closedByServer: closed.length,
    closedWithin200ms: closed.filter((ms) => ms < 200).length,
    maxCloseMs: closed.length > 0 ? closed[closed.length - 1] : null,
    heldUntilGiveUp: n - closed.length,
  };
}

async function flood(): Promise<object> {
  const n = count(100);
  const started = Date.now();
  const sockets = await Promise.all(Array.from({ length: n }, () => tcp().catch(() => undefined)));
  const closed = await Promise.all(
    sockets.map((socket) => {
      if (!socket) return Promise.resolve(0);
      socket.on('error', () => undefined);
      return closedAfter(socket, started, 300);
    }),
  );
  for (const socket of sockets) socket?.destroy();
  return { connections: n, closedWithin300ms: closed.filter((ms) => ms !== null).length };
}

async function prehello(): Promise<object> {
  const { host, port } = target();
  const n = count(20);
  const socket = tlsConnect({ host, port, rejectUnauthorized: false, minVersion: 'TLSv1.3' });
  socket.on('error', () => undefined);
  await new Promise<void>((resolve, reject) => {
    socket.once('secureConnect', resolve);
    socket.once('error', reject);
  });
  for (let i = 0; i < n; i++) socket.write(encodeFrame(FrameType.Data, echoRequest(arg('src'), arg('dst'), i)));
  const closedMs = await closedAfter(socket, Date.now(), 4000);
  return { framesSent: n, closedMs };
}

function floodSeconds(fallback: number): number {
  return Math.min(MAX_FLOOD_S, Number(arg('seconds', String(fallback))));
}

/** A TLS 1.3 connection to the target, once its handshake is done; nothing sent yet. */
async function tlsSession(): Promise<TLSSocket> {
  const { host, port } = target();
  const socket: TLSSocket = tlsConnect({ host, port, rejectUnauthorized: false, minVersion: 'TLSv1.3' });
  socket.on('error', () => undefined);
  await new Promise<void>((resolve, reject) => {
    socket.once('secureConnect', resolve);
    socket.once('error', reject);
    socket.once('close', () => reject(new Error('closed before the TLS handshake ended')));
  });
  return socket;
}

interface Session {
  readonly socket: TLSSocket;
  readonly frames: Array<{ type: FrameType; payload: Buffer }>;
}

/**
 * A session of the node --key names, with --name and --routes: resolves once welcomed, with every
 * frame read so far (and later, while the socket is read). Rejects with the Reject's reason.
 */
async function authenticated(serverKey = decodeKey(arg('server-key'), '--server-key')): Promise<Session> {
  const keyPair = readKeyFile(arg('key'));
  const socket = await tlsSession();
  const presented = serverPublicKey(socket);
  if (!presented || !keysEqual(presented, serverKey)) {
    socket.destroy();
    throw new Error('not the server we were told to attack');
  }
  const frames: Session['frames'] = [];
  const decoder = new FrameDecoder((type, payload) => frames.push({ type, payload: Buffer.from(payload) }));
  socket.on('data', (chunk: Buffer) => decoder.push(chunk));
  const exporter = socket.exportKeyingMaterial(EXPORTER_BYTES, EXPORTER_LABEL, Buffer.alloc(0));
  socket.write(
    encodeFrame(
      FrameType.Hello,
      encodeHello(keyPair, exporter, { name: arg('name'), routes: arg('routes').split(',') }),
    ),
  );
  const deadline = Date.now() + 5000;
  const answer = (): { type: FrameType; payload: Buffer } | undefined =>
    frames.find((f) => f.type === FrameType.Welcome || f.type === FrameType.Reject || f.type === FrameType.Close);
  while (!answer() && !socket.destroyed && Date.now() < deadline) await sleep(5);
  const frame = answer();
  if (frame?.type !== FrameType.Welcome) {
    socket.destroy();
    const refusal = frame ? decodeCodePayload(frame.payload) : undefined;
    throw new RefusedError(refusal ? closeCodeName(refusal.code) : 'no_welcome', refusal?.reason ?? 'no welcome');
  }
  return { socket, frames };
}

class RefusedError extends Error {
  constructor(
    readonly code: string,
    reason: string,
  ) {
    super(`refused (${code}): ${reason}`);
  }
}

async function node(): Promise<object> {
  const spoof = arg('spoof').split(',').filter(Boolean);
  const own = arg('own');
  const dst = arg('dst');
  const n = count(10);
  const { socket, frames } = await authenticated();
  let seq = 0;
  for (let i = 0; i < n; i++) {
    for (const src of spoof) socket.write(encodeFrame(FrameType.Data, echoRequest(src, dst, seq++)));
  }
  for (let i = 0; i < n; i++) socket.write(encodeFrame(FrameType.Data, echoRequest(own, dst, seq++)));
  await sleep(1500);
  const replies = frames.filter((f) => f.type === FrameType.Data && f.payload[9] === 1 && f.payload[20] === 0);
  const repliesTo = (address: string): number =>
    replies.filter((f) => parseAddress(address).bytes.every((b, i) => f.payload[16 + i] === b)).length;
  socket.end(encodeFrame(FrameType.Close, Buffer.from([0, 0])));
  socket.destroy();
  return {
    spoofedSent: n * spoof.length,
    ownSent: n,
    repliesToOwn: repliesTo(own),
    repliesToSpoofed: spoof.reduce((sum, s) => sum + repliesTo(s), 0),
  };
}

/** Resolves after the socket drains, closes, or the deadline passes, whichever comes first. */
function drainedOrDone(socket: TLSSocket, deadline: number): Promise<void> {
  return new Promise((resolve) => {
    const done = (): void => {
      clearTimeout(timer);
      socket.off('drain', done);
      socket.off('close', done);
      resolve();
    };
    const timer = setTimeout(done, Math.max(0, deadline - Date.now()));
    socket.once('drain', done);
    socket.once('close', done);
  });
}

/** Writes `frame` over and over until the deadline, as fast as the socket takes it; never reads. */
async function writeUntil(socket: TLSSocket, frame: Buffer, deadline: number): Promise<number> {
  socket.pause();
  let sent = 0;
  while (Date.now() < deadline && !socket.destroyed) {
    sent++;
    if (!socket.write(frame)) await drainedOrDone(socket, deadline);
    else if (sent % 64 === 0) await new Promise<void>((resolve) => setImmediate(resolve));
  }
  return sent;
}

async function pingflood(): Promise<object> {
  const seconds = floodSeconds(5);
  const withKey = process.argv.includes('--key');
  const size = Number(arg('size', withKey ? '65000' : '4090'));
  const frame = encodeFrame(FrameType.Ping, randomBytes(size));
  const started = Date.now();
  const deadline = started + seconds * 1000;
  const flood = async (socket: TLSSocket): Promise<{ frames: number; closedMs: number | null }> => {
    let closedMs: number | null = null;
    socket.once('close', () => (closedMs = Date.now() - started));
    const frames = await writeUntil(socket, frame, deadline);
    await sleep(50);
    socket.destroy();
    return { frames, closedMs };
  };
  if (withKey) {
    const { socket } = await authenticated();
    const { frames, closedMs } = await flood(socket);
    return { authenticated: true, seconds, size, framesSent: frames, closedByServerAfterMs: closedMs };
  }
  const n = count(60);
  const spacingMs = Number(arg('spacing-ms', '25'));
  const results = await Promise.all(
    Array.from({ length: n }, async (_, i) => {
      await sleep(i * spacingMs);
      if (Date.now() >= deadline) return null;
      const socket = await tlsSession().catch(() => undefined);
      return socket ? flood(socket) : null;
    }),
  );
  const opened = results.filter((r) => r !== null);
  return {
    authenticated: false,
    seconds,
    size,
    connections: n,
    opened: opened.length,
    framesSent: opened.reduce((sum, r) => sum + r.frames, 0),
    closedByServer: opened.filter((r) => r.closedMs !== null).length,
  };
}

async function stallecho(): Promise<object> {
  const seconds = floodSeconds(10);
  const perMs = Math.min(100, Number(arg('per-ms', '1')));
  const src = arg('src');
  const dst = arg('dst');
  const { socket } = await authenticated();
  socket.pause();
  const started = Date.now();
  let sent = 0;
  for (let elapsed = 0; elapsed < seconds * 1000 && !socket.destroyed; elapsed = Date.now() - started) {
    const due = elapsed * perMs;
    while (sent < due) socket.write(encodeFrame(FrameType.Data, echoRequest(src, dst, sent++ & 0xffff)));
    await sleep(1);
  }
  const closedByServer = socket.destroyed;
  socket.destroy();
  return { seconds, echoesSent: sent, closedByServer };
}

async function replaceloop(): Promise<object> {
  const seconds = floodSeconds(5);
  const rate = Math.min(50, Number(arg('rate', '50')));
  const serverKey = decodeKey(arg('server-key'), '--server-key');
  const started = Date.now();
  const sockets: TLSSocket[] = [];
  const refused = new Map<string, number>();
  let attempts = 0;
  let welcomed = 0;
  const pending: Array<Promise<void>> = [];
  while (Date.now() - started < seconds * 1000) {
    attempts++;
    pending.push(
      authenticated(serverKey).then(
        ({ socket }) => {
          welcomed++;
          sockets.push(socket);
        },
        (err: unknown) => {
          const code = err instanceof RefusedError ? err.code : 'connection_error';
          refused.set(code, (refused.get(code) ?? 0) + 1);
        },
      ),
    );
    await sleep(1000 / rate);
  }
  await Promise.all(pending);
  for (const socket of sockets) socket.destroy();
  return { seconds, attempts, welcomed, refused: Object.fromEntries(refused) };
}

/**
 * An ICMP "fragmentation needed" (IPv4, next-hop MTU --mtu) from src to the quoted packet's
 * source, quoting a UDP datagram qsrc:qsport → qdst:qdport of 1500 bytes with DF set.
 */
function fragNeeded(
  src: string,
  quoted: { src: string; sport: number; dst: string; dport: number },
  mtu: number,
): Buffer {
  const p = Buffer.alloc(20 + 8 + 20 + 8);
  p[0] = 0x45;
  p.writeUInt16BE(p.length, 2);
  p[8] = 64;
  p[9] = 1;
  p.set(parseAddress(src).bytes, 12);
  p.set(parseAddress(quoted.src).bytes, 16);
  p.writeUInt16BE(internetChecksum(p, 0, 20), 10);
  p[20] = 3; // destination unreachable
  p[21] = 4; // fragmentation needed and DF set
  p.writeUInt16BE(mtu, 26);
  const inner = 28;
  p[inner] = 0x45;
  p.writeUInt16BE(1500, inner + 2);
  p[inner + 6] = 0x40; // DF
  p[inner + 8] = 64;
  p[inner + 9] = 17;
  p.set(parseAddress(quoted.src).bytes, inner + 12);
  p.set(parseAddress(quoted.dst).bytes, inner + 16);
  p.writeUInt16BE(internetChecksum(p, inner, inner + 20), inner + 10);
  p.writeUInt16BE(quoted.sport, inner + 20);
  p.writeUInt16BE(quoted.dport, inner + 22);
  p.writeUInt16BE(1480, inner + 24);
  p.writeUInt16BE(internetChecksum(p, 20, p.length), 22);
  return p;
}

/** ICMP "fragmentation needed" errors from --own, each quoting one of --quote QSRC:QSPORT>QDST:QDPORT;... */
async function ptb(): Promise<object> {
  const own = arg('own');
  const mtu = Number(arg('mtu', '552'));
  const quotes = arg('quote')
    .split(';')
    .filter(Boolean)
    .map((text) => {
      const m = /^([^:>]+):(\d+)>([^:>]+):(\d+)$/.exec(text);
      if (!m) throw new Error(`--quote ${text}: expected QSRC:QSPORT>QDST:QDPORT (IPv4)`);
      return { src: m[1]!, sport: Number(m[2]), dst: m[3]!, dport: Number(m[4]) };
    });
  const n = count(3);
  const { socket } = await authenticated();
  for (let i = 0; i < n; i++) {
    for (const quoted of quotes) socket.write(encodeFrame(FrameType.Data, fragNeeded(own, quoted, mtu)));
  }
  await sleep(500);
  socket.end(encodeFrame(FrameType.Close, Buffer.from([0, 0])));
  socket.destroy();
  return { ptbSent: n * quotes.length };
}

const MODES: Record<string, () => Promise<object>> = {
  random,
  http,
  tls12,
  slow,
  flood,
  prehello,
  node,
  pingflood,
  stallecho,
  replaceloop,
  ptb,
};

const mode = process.argv[2] ?? '';
const run = MODES[mode];
if (!run) {
  process.stderr.write(`attacker: mode must be one of ${Object.keys(MODES).join(', ')}\n`);
  process.exit(1);
}
const guard = setTimeout(() => {
  process.stderr.write('attacker: gave up after 30 s\n');
  process.exit(3);
}, 30_000);
guard.unref();
run().then(
  (result) => {
    process.stdout.write(`${JSON.stringify({ mode, ...result })}\n`);
    process.exit(0);
  },
  (err: unknown) => {
    process.stderr.write(`attacker: ${err instanceof Error ? err.message : String(err)}\n`);
    process.exit(1);
  },
);

// npm run bench:dial — the CPU one dial costs, outside the kernel's network path: the node's
// tls.connect (its TLS socket and ClientHello) with and without a session ticket, a whole TLS 1.3
// handshake resumed and in full (the server end in a process of its own, each end counted), and
// the hello's Ed25519 signature and verification (with the node's key already imported, and for a
// key seen the first time, as after a server restart). A reconnect storm is these, 5,000 times
// over, on each side.
//
// It uses a Unix socket in a temporary directory: no IP address, no namespace. Environment:
// N=2000 operations per case (at most 4000), ROUNDS=3; the median CPU µs per operation are reported.
import { fork } from 'node:child_process';
import { once } from 'node:events';
import { mkdtempSync, rmSync } from 'node:fs';
import { connect as netConnect, createServer as netCreateServer, type Socket } from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { setTimeout as sleep } from 'node:timers/promises';
import { connect as tlsConnect, createServer as tlsCreateServer, type TLSSocket } from 'node:tls';
import { encodeHello, EXPORTER_BYTES, generateSeed, keyPairFromSeed, verifyHello } from '../src/auth/index.js';
import { createServerCertificate, serverTlsOptions } from '../src/link-server/index.js';
import { clientTlsOptions } from '../src/link-client/trust.js';

// At most 4,000: the cold-key case's ROUNDS × N fresh keys must not push the warm ones out of
// the server's key cache (auth/keys.ts, 16,384 keys).
const N = Math.min(4000, Math.max(10, Number(process.env['N'] ?? 2000)));
const ROUNDS = Math.min(10, Math.max(1, Number(process.env['ROUNDS'] ?? 3)));
/** Only decides the node's TLS settings (an address: no SNI); nothing is dialed there. */
const SERVER_ADDRESS = '198.18.0.1';
/** Handshakes in flight at once in the handshake cases, as a storm has many. */
const CONCURRENCY = 64;

function cpuMicros(): number {
  const usage = process.cpuUsage();
  return usage.user + usage.system;
}

/** CPU µs that `run` takes. */
async function cpuOf(run: () => Promise<void> | void): Promise<number> {
  const before = cpuMicros();
  await run();
  return cpuMicros() - before;
}

/** The median, over ROUNDS rounds, of what `round` returns: CPU µs per operation. */
async function median(round: () => Promise<number>): Promise<number> {
  const rounds: number[] = [];
  for (let i = 0; i < ROUNDS; i++) rounds.push(await round());
  rounds.sort((a, b) => a - b);
  return rounds[Math.floor(rounds.length / 2)]!;
}

/** The server end, in a process of its own so that each end's CPU is counted apart. */
async function serverProcess(): Promise<void> {
  const pair = keyPairFromSeed(new Uint8Array(Buffer.from(process.env['NODELINK_BENCH_DIAL_SEED']!, 'base64')));
  const certificate = await createServerCertificate(pair);
  // The server's own TLS settings (TLS 1.3, ticket keys from its key, ticket lifetime).
  const server = tlsCreateServer(serverTlsOptions(certificate, pair), (socket) =>
    socket.on('error', () => undefined).write('x'),
  );
  server.listen(process.env['NODELINK_BENCH_DIAL_SERVER']!);
  await once(server, 'listening');
  process.on('message', () => process.send!(cpuMicros()));
  process.send!('ready');
  process.on('disconnect', () => process.exit(0));
}

async function main(): Promise<void> {
  const dir = mkdtempSync(path.join(os.tmpdir(), 'nodelink-bench-dial-'));
  const tlsPath = path.join(dir, 'tls.sock');
  const heldPath = path.join(dir, 'held.sock');
  const server = fork(fileURLToPath(import.meta.url), {
    env: {
      ...process.env,
      NODELINK_BENCH_DIAL_SERVER: tlsPath,
      NODELINK_BENCH_DIAL_SEED: Buffer.from(generateSeed()).toString('base64'),
    },
  });
  const serverCpu = async (): Promise<number> => {
    server.send('cpu');
    return (await once(server, 'message'))[0] as number;
  };
  // Accepts and never reads: a dial stops at its ClientHello, as one held in the server's line.
  const held = netCreateServer({ pauseOnConnect: true }, (socket) => socket.on('error', () => undefined));
  const sockets: Socket[] = [];
  try {
    held.listen(heldPath);
    await Promise.all([once(server, 'message'), once(held, 'listening')]);
    // The node's own dial settings, for a server it reaches by address (so no SNI), over the
    // Unix socket instead.
    const { secureContext, servername, rejectUnauthorized } = clientTlsOptions(SERVER_ADDRESS, 0, {});
    const dial = (ticket: Buffer | undefined, socket?: Socket): TLSSocket =>
      tlsConnect({
        ...(socket ? { socket } : { path: tlsPath }),
        secureContext,
        servername,
        rejectUnauthorized,
        session: ticket,
      }).on('error', () => undefined);
    const ticket = await new Promise<Buffer>((resolve) => {
      const socket = dial(undefined);
      socket.once('session', (session: Buffer) => {
        resolve(session);
        socket.destroy();
      });
    });

    const results: Array<[string, number]> = [];
    for (const [name, withTicket] of [
      ['tls.connect with a ticket (node)', true],
      ['tls.connect without a ticket (node)', false],
    ] as const) {
      results.push([
        name,
        await median(async () => {
          sockets.length = 0;
          // In batches: a Unix listener's backlog refuses (EAGAIN) what it has not accepted yet.
          while (sockets.length < N) {
            const batch = Array.from({ length: Math.min(256, N - sockets.length) }, () => netConnect(heldPath));
            await Promise.all(batch.map((socket) => once(socket, 'connect')));
            sockets.push(...batch);
            await sleep(20); // the listener accepts in its turn of the event loop
          }
          // Only the tls.connect calls count, not the Unix-socket connects under them.
          const opened: TLSSocket[] = [];
          const spent = await cpuOf(() => {
            for (const socket of sockets) opened.push(dial(withTicket ? ticket : undefined, socket));
          });
          for (const socket of opened) socket.destroy();
          await new Promise((resolve) => setImmediate(resolve));
          return spent / N;
        }),
      ]);
    }

    for (const [name, withTicket] of [
      ['TLS handshake, resumed', true],
      ['TLS handshake, full', false],
    ] as const) {
      const perSide: Array<{ node: number; server: number }> = [];
      for (let i = 0; i < ROUNDS; i++) {
        let next = 0;
        const worker = async (): Promise<void> => {
          while (next < N) {
            next++;
            const socket = dial(withTicket ? ticket : undefined);
            await once(socket, 'secureConnect');
            if (withTicket && !socket.isSessionReused()) throw new Error('the ticket was not taken');
            socket.destroy();
          }
        };
        const serverBefore = await serverCpu();
        const node = await cpuOf(() => Promise.all(Array.from({ length: CONCURRENCY }, worker)).then(() => undefined));
        perSide.push({ node: node / N, server: ((await serverCpu()) - serverBefore) / N });
      }
      const middle = (values: number[]): number => values.sort((a, b) => a - b)[Math.floor(values.length / 2)]!;
      results.push([`${name} (node)`, middle(perSide.map((side) => side.node))]);
      results.push([`${name} (server)`, middle(perSide.map((side) => side.server))]);
    }

    const exporter = new Uint8Array(EXPORTER_BYTES).fill(7);
    const body = { name: 'node-a', routes: ['198.18.1.0/24'] };
    const nodes = Array.from({ length: N }, () => keyPairFromSeed(generateSeed()));
    const hellos = nodes.map((pair) => encodeHello(pair, exporter, body));
    const each = (run: () => void) => median(async () => (await cpuOf(run)) / N);
    results.push([
      'hello signature (node)',
      await each(() => void nodes.map((pair) => encodeHello(pair, exporter, body))),
    ]);
    // The first verification of each key imports it (the server's cache is empty after a restart).
    const fresh = Array.from({ length: ROUNDS }, () =>
      Array.from({ length: N }, () => encodeHello(keyPairFromSeed(generateSeed()), exporter, body)),
    );
    let round = 0;
    results.push([
      'hello verification, key seen first (server)',
      await each(() => void fresh[round++]!.map((hello) => verifyHello(hello, exporter))),
    ]);
    for (const hello of hellos) verifyHello(hello, exporter); // imports their keys
    results.push([
      'hello verification, key imported (server)',
      await each(() => void hellos.map((hello) => verifyHello(hello, exporter))),
    ]);

    process.stdout.write(
      `CPU per operation, median of ${ROUNDS} rounds of ${N} (${os.cpus()[0]?.model ?? 'cpu'}, Node ${process.version}, OpenSSL ${process.versions.openssl}):\n`,
    );
    for (const [name, micros] of results)
      process.stdout.write(`  ${name.padEnd(46)} ${micros.toFixed(0).padStart(6)} µs\n`);
  } finally {
    for (const socket of sockets) socket.destroy();
    server.disconnect();
    held.close();
    rmSync(dir, { recursive: true, force: true });
  }
}

function fail(err: unknown): void {
  process.stderr.write(`bench-dial: ${err instanceof Error ? err.message : String(err)}\n`);
  process.exit(1);
}

// The server end stays up until the measuring process disconnects from it.
if (process.env['NODELINK_BENCH_DIAL_SERVER']) serverProcess().catch(fail);
else main().then(() => process.exit(0), fail);

// The reason vocabulary (src/reasons.ts): what the link really emits stays inside it, help texts
// and docs list it as it is, and a peer that goes silent is closed as `timeout` on both ends.

import { expect } from 'chai';
import { readFileSync, readdirSync } from 'node:fs';
import { createServer as createNetServer, connect as netConnect } from 'node:net';
import path from 'node:path';
import { connect as tlsConnect } from 'node:tls';
import { PassThrough, Duplex } from 'node:stream';
import { fileURLToPath } from 'node:url';
import { type KeyPair } from '../../src/auth/index.js';
import { LinkMetrics, type DaemonStatus } from '../../src/admin/index.js';
import { LinkServer } from '../../src/link-server/index.js';
import { LinkClient } from '../../src/link-client/index.js';
import { FramedConnection, type ConnectionOptions } from '../../src/link/connection.js';
import { CloseCode, closeCodeName } from '../../src/protocol/index.js';
import {
  CLOSE_REASONS,
  DIAL_FAILURES,
  DROP_REASONS,
  HANDSHAKE_FAILURES,
  REFUSALS,
  REJECTIONS,
  UNKNOWN_CLOSE_REASON,
} from '../../src/reasons.js';
import { FakeTun } from '../support/fake-tun.js';
import { setTimeout as sleep } from 'node:timers/promises';
import { Rigs, newPair, portOf, registryOf } from '../support/link-rig.js';
import { ipv4 } from '../support/packets.js';
import { waitFor } from '../support/wait.js';
import { serverStatus } from '../support/status.js';

const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../../..');
const DISCONNECT_REASONS: readonly string[] = [...CLOSE_REASONS, UNKNOWN_CLOSE_REASON];

/** Fast keepalive, so a silent peer is found dead within a second. */
const FAST: ConnectionOptions = { maxQueueBytes: 1 << 20, keepaliveIntervalMs: 50, deadAfterMs: 400 };

function metricsFor(role: 'server' | 'client', status: () => DaemonStatus): LinkMetrics {
  return new LinkMetrics({ role, version: 'x', status, processMetrics: false });
}

/** Every value of the `reason` label of one metric in a scrape. */
function reasonLabels(scrape: string, metric: string): string[] {
  const pattern = new RegExp(`^${metric}\\{[^}]*reason="([^"]*)"`, 'gm');
  return [...scrape.matchAll(pattern)].map((match) => match[1]!);
}

function helpText(scrape: string, metric: string): string {
  const line = scrape.split('\n').find((l) => l.startsWith(`# HELP ${metric} `));
  if (!line) throw new Error(`no HELP line for ${metric}`);
  return line;
}

/** The names listed in the first parenthesized list of a text: "(a, b, c)". */
function listedNames(text: string): string[] {
  const inner = /\(([a-z_]+(?:, [a-z_]+)+)\)/.exec(text)?.[1];
  if (!inner) throw new Error(`no list of names in: ${text}`);
  return inner.split(', ');
}

describe('reason vocabulary', function () {
  this.timeout(20_000);
  const serverPair = newPair();
  const nodePair = newPair();
  const registry = registryOf([{ name: 'node-a', pair: nodePair, allowedIPs: ['198.19.0.11/32'] }]);
  const cleanup: Array<() => unknown> = [];
  const rigs = new Rigs();

  afterEach(async function () {
    for (const step of cleanup.splice(0).reverse()) await step();
    await rigs.stopAll();
  });

  async function startServer(): Promise<{ server: LinkServer; metrics: LinkMetrics; tun: FakeTun }> {
    const metrics: LinkMetrics = metricsFor('server', () => rig.server.status());
    const rig = await rigs.server({
      registry,
      keyPair: serverPair,
      connection: FAST,
      handshakeTimeoutMs: 1000,
      observer: metrics,
    });
    return { server: rig.server, metrics, tun: rig.tun };
  }

  function startClient(
    port: number,
    options: { keyPair?: KeyPair; serverKey?: Uint8Array } = {},
  ): { client: LinkClient; metrics: LinkMetrics; tun: FakeTun } {
    const metrics: LinkMetrics = metricsFor('client', () => rig.client.status());
    const rig = rigs.client({
      port,
      name: 'node-a',
      keyPair: options.keyPair ?? nodePair,
      routes: ['198.19.0.11/32'],
      serverKey: options.serverKey ?? serverPair.publicKey,
      connection: FAST,
      handshakeTimeoutMs: 1000,
      backoffCapMs: 100,
      observer: metrics,
    });
    return { client: rig.client, metrics, tun: rig.tun };
  }

  it('names every wire close code in CloseCode order, and an unknown code `unknown`', function () {
    const codes = Object.values(CloseCode).filter((value): value is number => typeof value === 'number');
    expect(codes).to.deep.equal(CLOSE_REASONS.map((_, code) => code));
    for (const code of codes) {
      const snake = CloseCode[code]!.replace(/[A-Z]/g, (c, i: number) => (i > 0 ? '_' : '') + c.toLowerCase());
      expect(closeCodeName(code), CloseCode[code]).to.equal(snake);
    }
    expect(closeCodeName(codes.length)).to.equal(UNKNOWN_CLOSE_REASON);
  });

  it('a stream that stops answering is closed with the timeout code, not normal', async function () {
    const ours = new PassThrough();
    const theirs = new PassThrough();
    theirs.resume(); // the peer reads our pings and never writes a byte back
    const stream = Duplex.from({ readable: ours, writable: theirs });
    const closes: Array<{ code: CloseCode; byPeer: boolean }> = [];
    const connection = new FramedConnection(
      stream,
      {
        onData: () => undefined,
        onControl: () => undefined,
        onClose: (code, _r, byPeer) => closes.push({ code, byPeer }),
      },
      { ...FAST, keepaliveIntervalMs: 20, deadAfterMs: 100 },
    );
    cleanup.push(() => connection.destroy('test over'));
    connection.startKeepalive();
    await waitFor('the dead-peer close', () => closes.length > 0, 2000);
    expect(closes).to.deep.equal([{ code: CloseCode.Timeout, byPeer: false }]);
    expect(closeCodeName(closes[0]!.code)).to.equal('timeout');
  });

  it('a node and a server that stop hearing each other both record the disconnect as timeout', async function () {
    const { server, metrics: serverMetrics } = await startServer();
    const relay = await rigs.loadBalancer([portOf(server.listenAddress)]);
    const { client, metrics: clientMetrics } = startClient(relay.port);
    await waitFor('the session', () => client.isAuthenticated && server.status().peers[0]!.connected);

    relay.silence();
    await waitFor(
      'both ends to give up on the silent peer',
      () =>
        serverMetrics.peerEvents('node-a')?.lastError === 'disconnected: timeout' &&
        (clientMetrics.peerEvents('server')?.lastError ?? '').startsWith('disconnected: timeout'),
      5000,
    );
    await client.stop();
    const serverScrape = await serverMetrics.text();
    const clientScrape = await clientMetrics.text();
    expect(serverScrape).to.contain('nodelink_disconnects_total{peer="node-a",reason="timeout"} 1');
    expect(clientScrape).to.contain('nodelink_disconnects_total{peer="server",reason="timeout"} 1');
    expect(reasonLabels(serverScrape, 'nodelink_disconnects_total')).to.deep.equal(['timeout']);
    expect(reasonLabels(clientScrape, 'nodelink_disconnects_total')).to.deep.equal(['timeout']);
  });

  it('a handshake that runs out of time is handshake_timeout in status and metrics, in TLS or before the hello', async function () {
    const { server, metrics } = await startServer();
    const port = portOf(server.listenAddress);
    // One connection that never starts TLS, one that finishes TLS and never sends its hello.
    const silentTcp = netConnect(port, '127.0.0.1');
    silentTcp.on('error', () => undefined);
    const noHello = tlsConnect({ host: '127.0.0.1', port, rejectUnauthorized: false });
    noHello.on('error', () => undefined);
    cleanup.push(
      () => silentTcp.destroy(),
      () => noHello.destroy(),
    );
    await waitFor('both deadlines', () => server.status().refusedConnections?.handshake_timeout === 2, 5000);
    const scrape = await metrics.text();
    expect(reasonLabels(scrape, 'nodelink_handshake_failures_total')).to.deep.equal(['handshake_timeout']);
    expect(scrape).to.contain('nodelink_handshake_failures_total{reason="handshake_timeout"} 2');
    expect(server.status().refusedConnections).to.deep.equal({ handshake_timeout: 2 });
  });

  it('metrics and status label what really happens with names from the vocabulary only', async function () {
    const { server, metrics: serverMetrics, tun: serverTun } = await startServer();
    const port = portOf(server.listenAddress);
    const good = startClient(port);
    await waitFor('node-a connected', () => good.client.isAuthenticated);

    // A stranger's key, a client pinning the wrong server key, garbage on the TLS port, a dial
    // to a port nobody listens on.
    const stranger = startClient(port, { keyPair: newPair() });
    const wrongKey = startClient(port, { serverKey: newPair().publicKey });
    const garbage = netConnect(port, '127.0.0.1', () => garbage.end('GET / HTTP/1.0\r\n\r\n'));
    garbage.on('error', () => undefined);
    const closed = createNetServer();
    await new Promise<void>((resolve) => closed.listen(0, '127.0.0.1', resolve));
    const closedPort = (closed.address() as { port: number }).port;
    await new Promise<void>((resolve) => closed.close(() => resolve()));
    const refused = startClient(closedPort);
    // Drops: a packet for nobody from the server's TUN, a spoofed one from the node.
    serverTun.inject(ipv4('198.18.255.1', '198.19.9.9'));
    good.tun.inject(ipv4('198.19.0.99', '198.18.255.1'));

    await waitFor('every failure to be seen', () => {
      const last = (m: LinkMetrics) => m.peerEvents('server')?.lastError ?? '';
      return (
        last(stranger.metrics).startsWith('auth_failed') &&
        last(wrongKey.metrics).startsWith('server_key_mismatch') &&
        last(refused.metrics).startsWith('connection_refused') &&
        (server.status().refusedConnections?.tls_handshake_failed ?? 0) > 0 &&
        (server.status().dropsByReason.no_route ?? 0) > 0 &&
        (good.client.status().peers[0]!.dropsByReason.unannounced_source ?? 0) > 0
      );
    });
    await server.stop(); // every client sees server_shutdown, or a refused redial
    await waitFor('node-a told of the shutdown', () => !good.client.isAuthenticated);
    await sleep(100);

    const scrapes = [serverMetrics, good.metrics, stranger.metrics, wrongKey.metrics, refused.metrics];
    const seen = { drops: new Set<string>(), failures: new Set<string>(), disconnects: new Set<string>() };
    for (const scrape of await Promise.all(scrapes.map((m) => m.text()))) {
      for (const r of reasonLabels(scrape, 'nodelink_dropped_packets_total')) seen.drops.add(r);
      for (const r of reasonLabels(scrape, 'nodelink_handshake_failures_total')) seen.failures.add(r);
      for (const r of reasonLabels(scrape, 'nodelink_disconnects_total')) seen.disconnects.add(r);
    }
    expect([...seen.drops]).to.include.members(['no_route', 'unannounced_source']);
    expect(DROP_REASONS).to.include.members([...seen.drops]);
    expect([...seen.failures]).to.include.members([
      'unknown_key',
      'auth_failed',
      'server_key_mismatch',
      'connection_refused',
      'tls_handshake_failed',
    ]);
    expect(HANDSHAKE_FAILURES).to.include.members([...seen.failures]);
    expect([...seen.disconnects]).to.include('server_shutdown');
    expect(DISCONNECT_REASONS).to.include.members([...seen.disconnects]);

    const status = server.status();
    expect(REFUSALS).to.include.members(Object.keys(status.refusedConnections ?? {}));
    expect(DROP_REASONS).to.include.members([
      ...Object.keys(status.dropsByReason),
      ...status.peers.flatMap((peer) => Object.keys(peer.dropsByReason)),
    ]);
  });

  it("the metrics' help texts list each vocabulary exactly", async function () {
    const scrape = await metricsFor('server', () => serverStatus()).text();
    expect(listedNames(helpText(scrape, 'nodelink_dropped_packets_total'))).to.deep.equal([...DROP_REASONS]);
    expect(listedNames(helpText(scrape, 'nodelink_handshake_failures_total'))).to.deep.equal([...HANDSHAKE_FAILURES]);
    expect(listedNames(helpText(scrape, 'nodelink_disconnects_total'))).to.deep.equal([...DISCONNECT_REASONS]);
  });

  it('the handshake failures are the refusals, rejections, dial failures and close reasons together', function () {
    expect([...HANDSHAKE_FAILURES].sort()).to.deep.equal(
      [...new Set([...REFUSALS, ...REJECTIONS, ...DIAL_FAILURES, ...DISCONNECT_REASONS])].sort(),
    );
  });

  it('every list of reasons in the source (help texts, messages) names them from one vocabulary', function () {
    const vocabularies: ReadonlyArray<readonly string[]> = [DROP_REASONS, HANDSHAKE_FAILURES, DISCONNECT_REASONS];
    const known = new Set(vocabularies.flat());
    const strays: string[] = [];
    for (const file of sourceFiles(path.join(ROOT, 'src'))) {
      const text = readFileSync(file, 'utf8');
      // A list in parentheses, as help texts and messages write them: "(queue_full, no_route, …)".
      for (const match of text.matchAll(/\(([a-z_]+(?:, [a-z_]+)+)(?:, …)?\)/g)) {
        const names = match[1]!.split(', ');
        if (!names.some((name) => known.has(name))) continue;
        if (!vocabularies.some((vocabulary) => names.every((name) => vocabulary.includes(name)))) {
          strays.push(`${path.relative(ROOT, file)}: ${match[0]}`);
        }
      }
    }
    expect(strays).to.deep.equal([]);
  });

  it('the docs list each vocabulary as src/reasons.ts has it, nothing more and nothing missing', function () {
    const sections = docSections();
    const lists: Array<{ heading: string; vocabulary: readonly string[]; complete: readonly string[] }> = [
      { heading: 'Drop reasons', vocabulary: DROP_REASONS, complete: DROP_REASONS },
      {
        heading: 'Handshake failures',
        vocabulary: HANDSHAKE_FAILURES,
        complete: [...REFUSALS, ...REJECTIONS, ...DIAL_FAILURES],
      },
      { heading: 'Refused connections', vocabulary: REFUSALS, complete: REFUSALS },
      { heading: 'Disconnect reasons', vocabulary: DISCONNECT_REASONS, complete: DISCONNECT_REASONS },
    ];
    const problems: string[] = [];
    for (const { heading, vocabulary, complete } of lists) {
      const found = sections.filter((section) => section.heading === heading);
      if (found.length === 0) problems.push(`no docs section "${heading}"`);
      for (const { file, body } of found) {
        // Backticked lowercase names; flags (`--x`), metric series and field names do not match.
        const names = [...body.matchAll(/`([a-z]+(?:_[a-z0-9]+)*)`/g)]
          .map((match) => match[1]!)
          .filter((name) => !NOT_REASONS.includes(name));
        for (const name of names) if (!vocabulary.includes(name)) problems.push(`${file} ${heading}: ${name}`);
        for (const name of complete) if (!names.includes(name)) problems.push(`${file} ${heading}: misses ${name}`);
      }
    }
    expect(problems).to.deep.equal([]);
  });
});

/** Backticked words the reason sections use that are not reasons. */
const NOT_REASONS = ['status'];

/** Every section (a heading and the text up to the next heading) of README.md and docs/*.md. */
function docSections(): Array<{ file: string; heading: string; body: string }> {
  const files = ['README.md', ...readdirSync(path.join(ROOT, 'docs')).map((name) => path.join('docs', name))];
  return files
    .filter((file) => file.endsWith('.md'))
    .flatMap((file) =>
      readFileSync(path.join(ROOT, file), 'utf8')
        .split(/^(?=#+ )/m)
        .map((section) => {
          const [first, ...rest] = section.split('\n');
          return { file, heading: first!.replace(/^#+ /, '').trim(), body: rest.join('\n') };
        }),
    );
}

function sourceFiles(dir: string): string[] {
  return readdirSync(dir, { withFileTypes: true }).flatMap((entry) => {
    const full = path.join(dir, entry.name);
    if (entry.isDirectory()) return sourceFiles(full);
    return entry.name.endsWith('.ts') ? [full] : [];
  });
}

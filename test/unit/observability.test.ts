// Observability without root: metrics and the health endpoint, the link's observer hooks over
// loopback TLS and status text (settings: settings.test.ts; the diagnose probe: diagnose.test.ts).

import { expect } from 'chai';
import { createServer as createNetServer } from 'node:net';
import { generateSeed, keyPairFromSeed, type KeyPair } from '../../src/auth/index.js';
import {
  LinkMetrics,
  ObservabilityServer,
  PeerEventLog,
  formatStatus,
  formatSummary,
  report,
  type DaemonStatus,
  type PeerStatus,
} from '../../src/admin/index.js';
import { LinkServer } from '../../src/link-server/index.js';
import { PathChecker, pathTargets } from '../../src/link-server/path-check.js';
import { LinkClient } from '../../src/link-client/index.js';
import type { ConnectionOptions } from '../../src/link/connection.js';
import { Prefix } from '../../src/routing/index.js';
import { FakeTun } from '../support/fake-tun.js';
import { silentLogger } from '../../src/log.js';
import { setTimeout as sleep } from 'node:timers/promises';
import { Rigs, newPair, portOf, registryOf } from '../support/link-rig.js';
import { waitFor } from '../support/wait.js';
import { metricValue } from '../support/metrics.js';

function peerStatus(overrides: Partial<PeerStatus> = {}): PeerStatus {
  return {
    name: 'node-a',
    publicKey: 'KEY',
    connected: true,
    endpoint: '198.18.0.1:40000',
    routes: ['198.19.0.11/32', '198.19.1.0/24'],
    allowedIPs: ['198.19.0.11/32', '198.19.1.0/24'],
    connectedSince: new Date(Date.now() - 5000).toISOString(),
    lastPongMs: 1.5,
    rxBytes: 1000,
    txBytes: 2000,
    rxPackets: 10,
    txPackets: 20,
    drops: 3,
    dropsByReason: { queue_full: 2, spoofed_source: 1 },
    queuedBytes: 64,
    ...overrides,
  };
}

function daemonStatus(peers: PeerStatus[]): DaemonStatus {
  return {
    role: 'server',
    tun: 'nl0',
    tunnelAddress: '198.18.255.1',
    tunnelAddresses: ['198.18.255.1'],
    listen: '198.18.0.2:8443',
    startedAt: new Date(Date.now() - 60_000).toISOString(),
    dropsByReason: { no_route: 4 },
    peers,
  };
}

describe('observability', function () {
  this.timeout(10_000);

  describe('LinkMetrics', function () {
    it('derives traffic, drops and queue depth from status at scrape time, and counts events', async function () {
      let status = daemonStatus([
        peerStatus(),
        peerStatus({ name: 'node-b', connected: false, rxBytes: 0, dropsByReason: { peer_offline: 7 } }),
      ]);
      const metrics = new LinkMetrics({
        role: 'server',
        version: '1.2.3',
        status: () => status,
        ready: async () => true,
        processMetrics: false,
      });
      metrics.connected('node-a');
      metrics.disconnected('node-a', 'timeout');
      metrics.connected('node-a');
      metrics.handshakeFailed('unknown_key');
      metrics.pong('node-a', 2.5);
      metrics.pathChecked('node-a', {
        state: 'ok',
        target: '198.19.0.11:10250',
        checkedAt: null,
        lastOkAt: null,
        rttMs: 1.5,
        error: null,
        checks: 1,
        failures: 0,
      });
      const text = await metrics.text();
      expect(metricValue(text, 'nodelink_info{role="server",version="1.2.3",tun="nl0"}')).to.equal(1);
      expect(metricValue(text, 'nodelink_ready')).to.equal(1);
      expect(metricValue(text, 'nodelink_peers')).to.equal(2);
      expect(metricValue(text, 'nodelink_peers_connected')).to.equal(1);
      expect(metricValue(text, 'nodelink_peer_connected{peer="node-b"}')).to.equal(0);
      expect(metricValue(text, 'nodelink_peer_receive_bytes_total{peer="node-a"}')).to.equal(1000);
      expect(metricValue(text, 'nodelink_peer_transmit_packets_total{peer="node-a"}')).to.equal(20);
      expect(metricValue(text, 'nodelink_dropped_packets_total{peer="node-a",reason="queue_full"}')).to.equal(2);
      expect(metricValue(text, 'nodelink_dropped_packets_total{peer="node-b",reason="peer_offline"}')).to.equal(7);
      expect(metricValue(text, 'nodelink_dropped_packets_total{peer="",reason="no_route"}')).to.equal(4);
      expect(metricValue(text, 'nodelink_peer_queued_bytes{peer="node-a"}')).to.equal(64);
      expect(metricValue(text, 'nodelink_handshakes_total{peer="node-a"}')).to.equal(2);
      expect(metricValue(text, 'nodelink_reconnects_total{peer="node-a"}')).to.equal(1);
      expect(metricValue(text, 'nodelink_disconnects_total{peer="node-a",reason="timeout"}')).to.equal(1);
      expect(metricValue(text, 'nodelink_handshake_failures_total{reason="unknown_key"}')).to.equal(1);
      expect(metricValue(text, 'nodelink_rtt_seconds_bucket{le="0.0025",peer="node-a"}')).to.equal(1);
      expect(metricValue(text, 'nodelink_rtt_seconds_count{peer="node-a"}')).to.equal(1);
      expect(metricValue(text, 'nodelink_path_up{peer="node-a"}')).to.equal(1);
      expect(metricValue(text, 'nodelink_path_checks_total{peer="node-a",result="ok"}')).to.equal(1);
      expect(metricValue(text, 'nodelink_peer_rtt_seconds{peer="node-a"}')).to.equal(0.0025);
      expect(text).to.match(/# TYPE nodelink_peer_receive_bytes_total counter/);
      // Counters follow the status, and a peer that is gone from it is gone from the scrape.
      status = daemonStatus([peerStatus({ rxBytes: 5000 })]);
      await sleep(250);
      const later = await metrics.text();
      expect(metricValue(later, 'nodelink_peer_receive_bytes_total{peer="node-a"}')).to.equal(5000);
      expect(metricValue(later, 'nodelink_peer_connected{peer="node-b"}')).to.equal(undefined);
      expect(metrics.peerEvents('node-a')).to.include({ handshakes: 2, reconnects: 1, lastRttMs: 2.5 });
    });

    it('registers path metrics only on the server, and records events in the log it is given', async function () {
      const health = {
        state: 'failing' as const,
        target: '198.19.0.11:10250',
        checkedAt: null,
        lastOkAt: null,
        rttMs: null,
        error: 'no answer',
        checks: 1,
        failures: 1,
      };
      const events = new PeerEventLog();
      const client = new LinkMetrics({
        role: 'client',
        version: 'x',
        events,
        status: () => daemonStatus([peerStatus({ name: 'server' })]),
        processMetrics: false,
      });
      client.pathChecked('server', health);
      client.connected('server');
      expect(await client.text()).not.to.contain('nodelink_path_');
      expect(events.get('server')).to.include({ handshakes: 1 });
      const server = new LinkMetrics({
        role: 'server',
        version: 'x',
        status: () => daemonStatus([peerStatus()]),
        processMetrics: false,
      });
      expect(await server.text()).to.contain('# TYPE nodelink_path_up gauge');
      server.pathChecked('node-a', health);
      const text = await server.text();
      expect(metricValue(text, 'nodelink_path_up{peer="node-a"}')).to.equal(0);
      expect(metricValue(text, 'nodelink_path_checks_total{peer="node-a",result="failed"}')).to.equal(1);
    });

    it('includes process metrics under the nodelink_ prefix', async function () {
      const metrics = new LinkMetrics({ role: 'client', version: 'x', status: () => daemonStatus([]) });
      const text = await metrics.text();
      expect(text)
        .to.match(/^nodelink_process_cpu_seconds_total /m)
        .and.match(/^nodelink_nodejs_eventloop_lag_seconds /m);
      for (const line of text.split('\n').filter((l) => l && !l.startsWith('#'))) expect(line).to.match(/^nodelink_/);
    });
  });

  describe('ObservabilityServer', function () {
    let http: ObservabilityServer | undefined;
    let ready = false;
    after(() => http?.close());

    it('serves /metrics, /healthz and /readyz (503 with the failing check while not ready)', async function () {
      const metrics = new LinkMetrics({
        role: 'client',
        version: 'x',
        status: () => daemonStatus([peerStatus()]),
        processMetrics: false,
      });
      http = await ObservabilityServer.start({
        host: '127.0.0.1',
        port: 0,
        metrics: () => metrics.text(),
        contentType: metrics.contentType,
        ready: async () => report({ authenticated: { ok: ready, detail: ready ? 'yes' : 'not yet' } }),
      });
      const base = `http://${http.address}`;
      const m = await fetch(`${base}/metrics`);
      expect(m.status).to.equal(200);
      expect(m.headers.get('content-type')).to.match(/text\/plain/);
      expect(await m.text()).to.contain('nodelink_peer_receive_bytes_total{peer="node-a"} 1000');
      expect((await fetch(`${base}/healthz`)).status).to.equal(200);
      const notReady = await fetch(`${base}/readyz`);
      expect(notReady.status).to.equal(503);
      expect(await notReady.json()).to.deep.equal({
        status: 'fail',
        checks: { authenticated: { ok: false, detail: 'not yet' } },
      });
      ready = true;
      expect((await fetch(`${base}/readyz`)).status).to.equal(200);
      expect((await fetch(`${base}/other`)).status).to.equal(404);
      expect((await fetch(`${base}/metrics`, { method: 'POST' })).status).to.equal(405);
    });

    it('fails with one line when the port is taken', async function () {
      const taken = http!.address;
      const port = portOf(taken);
      const error = await ObservabilityServer.start({
        host: '127.0.0.1',
        port,
        metrics: async () => '',
        contentType: 'text/plain',
        ready: async () => report({}),
      }).then(
        () => undefined,
        (err: Error) => err,
      );
      expect(error?.message).to.match(/--metrics 127\.0\.0\.1:\d+ is already in use/);
    });
  });

  describe('observer hooks over loopback TLS', function () {
    const TUNNEL_CIDRS = [Prefix.parse('198.18.255.0/24')];
    const CONNECTION: ConnectionOptions = {
      maxQueueBytes: 1 << 20,
      keepaliveIntervalMs: 100,
      deadAfterMs: 1000,
    };
    const serverPair = newPair();
    const nodePair = newPair();
    const registry = registryOf([{ name: 'node-a', pair: nodePair, allowedIPs: ['198.19.0.11/32'] }], TUNNEL_CIDRS);
    let server: LinkServer | undefined;
    let port = 0;
    const clients = new Rigs();
    const serverMetrics = new LinkMetrics({
      role: 'server',
      version: 'x',
      status: () => server!.status(),
      processMetrics: false,
    });

    before(async function () {
      server = new LinkServer({
        host: '127.0.0.1',
        port: 0,
        keyPair: serverPair,
        registry,
        tun: new FakeTun('srv0'),
        tunnelCidrs: TUNNEL_CIDRS,
        tunnelAddresses: [Prefix.fromAddress('198.18.255.1')],
        connection: CONNECTION,
        handshakeTimeoutMs: 2000,
        installRoutes: async () => undefined,
        log: silentLogger(),
        observer: serverMetrics,
      });
      await server.start();
      port = portOf(server.listenAddress);
    });

    after(async function () {
      await clients.stopAll();
      await server?.stop();
    });

    function client(keyPair: KeyPair, metrics: LinkMetrics, serverKey = serverPair.publicKey): LinkClient {
      return clients.client({
        port,
        name: 'node-a',
        keyPair,
        routes: ['198.19.0.11/32'],
        serverKey,
        tunName: 'c0',
        connection: CONNECTION,
        backoffCapMs: 100,
        observer: metrics,
      }).client;
    }

    it('counts handshakes, pongs, rejections and key mismatches on both sides', async function () {
      const clientMetrics = new LinkMetrics({
        role: 'client',
        version: 'x',
        status: () => daemonStatus([]),
        processMetrics: false,
      });
      const good = client(nodePair, clientMetrics);
      await waitFor('authenticated', () => good.isAuthenticated);
      await waitFor(
        'pongs on both sides',
        () =>
          (serverMetrics.peerEvents('node-a')?.lastPongAt ?? null) !== null &&
          (clientMetrics.peerEvents('server')?.lastPongAt ?? null) !== null,
      );
      expect(serverMetrics.peerEvents('node-a')?.handshakes).to.equal(1);
      expect(clientMetrics.peerEvents('server')?.handshakes).to.equal(1);

      const strangerMetrics = new LinkMetrics({
        role: 'client',
        version: 'x',
        status: () => daemonStatus([]),
        processMetrics: false,
      });
      client(keyPairFromSeed(generateSeed()), strangerMetrics);
      await waitFor('rejection seen by the stranger', () =>
        (strangerMetrics.peerEvents('server')?.lastError ?? '').startsWith('auth_failed'),
      );
      expect(await serverMetrics.text()).to.contain('nodelink_handshake_failures_total{reason="unknown_key"} 1');

      const pinnedWrong = new LinkMetrics({
        role: 'client',
        version: 'x',
        status: () => daemonStatus([]),
        processMetrics: false,
      });
      client(nodePair, pinnedWrong, keyPairFromSeed(generateSeed()).publicKey);
      await waitFor('server key mismatch', () =>
        (pinnedWrong.peerEvents('server')?.lastError ?? '').startsWith('server_key_mismatch'),
      );
      expect(await pinnedWrong.text()).to.match(
        /nodelink_handshake_failures_total\{reason="server_key_mismatch"\} [1-9]/,
      );
    });
  });

  describe('PathChecker', function () {
    it('counts a completed connect and a refusal as a working path; reports each peer', async function () {
      const listener = createNetServer((socket) => socket.destroy());
      await new Promise<void>((resolve) => listener.listen(0, '127.0.0.1', resolve));
      const open = (listener.address() as { port: number }).port;
      const results: string[] = [];
      const checker = new PathChecker({
        intervalMs: 0,
        timeoutMs: 1000,
        port: open,
        log: silentLogger(),
        sourceAddress: () => undefined,
        targets: () => [{ peer: 'node-a', address: '127.0.0.1', family: 4 }],
        onResult: (peer, health) => results.push(`${peer}:${health.state}`),
      });
      await checker.checkAll();
      expect(checker.health('node-a')).to.include({ state: 'ok', target: `127.0.0.1:${open}`, checks: 1, failures: 0 });
      listener.close();
      await new Promise((resolve) => listener.once('close', resolve));
      await checker.checkAll(); // refused: the "node" answered with RST
      expect(checker.health('node-a')).to.include({ state: 'ok', checks: 2 });
      expect(checker.health('node-b').state).to.equal('unknown');
      expect(results).to.deep.equal(['node-a:ok', 'node-a:ok']);
      checker.stop();
    });

    it('targets each connected node by its first announced host route, IPv4 first', function () {
      const node = (name: string, routes: string[]) => ({ name, routes: routes.map((route) => Prefix.parse(route)) });
      const connected = [
        node('node-a', ['fd00:19::b/128', '198.19.1.0/24', '198.19.0.11/32']),
        node('node-b', ['fd00:19::c/128']),
        node('node-c', ['198.19.3.0/24']),
      ];
      expect(pathTargets(connected)).to.deep.equal([
        { peer: 'node-a', address: '198.19.0.11', family: 4 },
        { peer: 'node-b', address: 'fd00:19::c', family: 6 },
      ]);
    });
  });

  describe('status text', function () {
    it('leads with a summary line and shows path, route states, pongs and drops by reason', function () {
      const now = Date.now();
      const status = daemonStatus([
        peerStatus({
          lastPongAt: new Date(now - 1000).toISOString(),
          handshakes: 3,
          reconnects: 2,
          path: {
            state: 'failing',
            target: '198.19.0.11:10250',
            checkedAt: new Date(now - 2000).toISOString(),
            lastOkAt: null,
            rttMs: null,
            error: 'no answer within 3000 ms',
            checks: 4,
            failures: 4,
          },
          routeStates: [
            { route: '198.19.0.11/32', state: 'active', kernel: true },
            { route: '198.19.1.0/24', state: 'missing', kernel: false },
          ],
        }),
        peerStatus({
          name: 'node-b',
          connected: false,
          lastError: 'disconnected: timeout',
          path: {
            state: 'unknown',
            target: null,
            checkedAt: null,
            lastOkAt: null,
            rttMs: null,
            error: 'peer not connected',
            checks: 0,
            failures: 0,
          },
        }),
      ]);
      const text = formatStatus(status, now);
      const lines = text.split('\n');
      expect(lines[0]).to.equal(formatSummary(status));
      expect(lines[0]).to.equal(
        'nodelink server on nl0: 1/2 peers connected, 0/1 paths ok, 1 route MISSING, 1.95 KiB received, 3.91 KiB sent, 10 dropped',
      );
      expect(text).to.contain('  connected: since').and.contain('3 handshakes (2 reconnects)');
      expect(text).to.contain('  last pong: 1.5 ms rtt, 1s ago');
      expect(text).to.contain(
        '  path: FAILING, 198.19.0.11:10250: no answer within 3000 ms, checked 2s ago, never ok (4 of 4 checks failed)',
      );
      expect(text).to.contain('  routes: 198.19.0.11/32 (active), 198.19.1.0/24 (MISSING from the kernel)');
      expect(text).to.contain('  drops: 2 queue_full, 1 spoofed_source');
      expect(text).to.contain('  last error: disconnected: timeout');
      expect(text).to.contain('  drops: 4 no_route');
    });
  });
});

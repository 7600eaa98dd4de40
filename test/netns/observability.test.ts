// Metrics, health and path checks through the real CLI in the namespace harness: /healthz and
// /readyz through a node's life (starting, ready, server gone), /metrics counters that move with
// traffic, a broken data path that status and metrics show while the session stays up, and
// `status` with its summary, route states and path health.

import { expect } from 'chai';
import { writeFileSync } from 'node:fs';
import path from 'node:path';
import { runCli } from '../../scripts/cluster.js';
import type { DaemonStatus } from '../../src/admin/index.js';
import { clusterRig } from '../support/cluster-rig.js';
import { waitFor } from '../support/wait.js';

const SERVER_METRICS = '127.0.0.1:9472';
const CLIENT_METRICS = '127.0.0.1:9473';

/** Parses Prometheus text: `name{labels} value` → value, keyed by `name{labels}` as printed. */
function parseMetrics(text: string): Map<string, number> {
  const values = new Map<string, number>();
  for (const line of text.split('\n')) {
    if (line.startsWith('#') || line.trim() === '') continue;
    const space = line.lastIndexOf(' ');
    values.set(line.slice(0, space), Number(line.slice(space + 1)));
  }
  return values;
}

describe('observability in namespaces (real CLI): metrics, health, path checks', function () {
  this.timeout(60_000);
  let configFile = '';
  const rig = clusterRig(
    { nodes: 1 },
    {
      cluster: (h) => {
        configFile = path.join(h.dir, 'server.yaml');
        // Settings from a config file (below flags and env), so SIGHUP can change them.
        writeFileSync(
          configFile,
          `metrics: ${SERVER_METRICS}\npath-check-interval-ms: 300\npath-check-timeout-ms: 1000\nlog-level: info\n`,
        );
        return { extraServerArgs: ['--config', configFile, '--keepalive-ms', '500', '--dead-after-ms', '3000'] };
      },
    },
  );
  const node = (): string => rig.h.ns.node(1);
  const get = (ns: string, address: string, path: string) =>
    rig.h.curl(ns, `http://${address}${path}`, { timeoutS: 3 });
  const scrape = async (ns: string, address: string): Promise<Map<string, number>> => {
    const result = await get(ns, address, '/metrics');
    expect(result.status, result.error).to.equal(200);
    return parseMetrics(result.body);
  };
  const status = (): Promise<DaemonStatus> => rig.cluster.status();

  it('a starting node is alive but not ready: /healthz 200, /readyz 503 naming why', async function () {
    rig.cluster.startClient(1, ['--metrics', CLIENT_METRICS, '--keepalive-ms', '500', '--dead-after-ms', '3000']);
    await waitFor(
      'client /healthz',
      async () => (await get(node(), CLIENT_METRICS, '/healthz')).status === 200,
      10_000,
    );
    const ready = await get(node(), CLIENT_METRICS, '/readyz');
    expect(ready.status).to.equal(503);
    const body = JSON.parse(ready.body) as { status: string; checks: Record<string, { ok: boolean; detail: string }> };
    expect(body.status).to.equal('fail');
    expect(body.checks['authenticated']!.ok).to.equal(false);
    expect(body.checks['authenticated']!.detail).to.match(/connection_refused|not connected/);
    expect(body.checks['tun']!.ok).to.equal(true);
  });

  it('once the server is up, both sides are ready', async function () {
    const { h } = rig;
    await rig.cluster.startServer();
    await rig.cluster.waitConnected([1]);
    await waitFor(
      'client /readyz 200',
      async () => (await get(node(), CLIENT_METRICS, '/readyz')).status === 200,
      10_000,
    );
    const server = await get(h.ns.cp, SERVER_METRICS, '/readyz');
    expect(server.status).to.equal(200);
    expect(server.body).to.contain('listening').and.contain('nl0 is up');
    expect((await get(h.ns.cp, SERVER_METRICS, '/healthz')).status).to.equal(200);
    expect((await get(h.ns.cp, SERVER_METRICS, '/nope')).status).to.equal(404);
  });

  it('/metrics counters move with traffic; drops, handshakes, RTT, path and process metrics are there', async function () {
    const { h } = rig;
    const before = await scrape(h.ns.cp, SERVER_METRICS);
    const peer = '{peer="node-1"}';
    const size = 2 * 1024 * 1024;
    const bulk = await h.curl(h.ns.cp, h.podURL(1, 1, `/bytes/${size}`), { timeoutS: 20 });
    expect(bulk.ok, bulk.error).to.equal(true);
    expect(await h.ping(h.ns.cp, '198.18.255.77', { timeoutS: 1 })).to.equal(false); // nobody owns it: no_route
    await waitFor(
      'path_up 1',
      async () => ((await scrape(h.ns.cp, SERVER_METRICS)).get('nodelink_path_up{peer="node-1"}') ?? 0) === 1,
      5000,
    );
    // One rendering is served for up to a second: wait for one made after the transfer.
    const received = (m: Map<string, number>): number => m.get(`nodelink_peer_receive_bytes_total${peer}`) ?? 0;
    await waitFor(
      'the transfer to show in /metrics',
      async () => received(await scrape(h.ns.cp, SERVER_METRICS)) - received(before) > size,
      5000,
    );
    const after = await scrape(h.ns.cp, SERVER_METRICS);
    const delta = (name: string): number => (after.get(name) ?? 0) - (before.get(name) ?? 0);
    expect(delta(`nodelink_peer_receive_bytes_total${peer}`)).to.be.greaterThan(size);
    expect(delta(`nodelink_peer_receive_packets_total${peer}`)).to.be.greaterThan(size / 65536);
    expect(delta(`nodelink_peer_transmit_bytes_total${peer}`)).to.be.greaterThan(0);
    expect(delta(`nodelink_peer_transmit_packets_total${peer}`)).to.be.greaterThan(0);
    expect(delta('nodelink_dropped_packets_total{peer="",reason="no_route"}')).to.be.greaterThan(0);
    expect(after.get('nodelink_peers_connected')).to.equal(1);
    expect(after.get(`nodelink_peer_connected${peer}`)).to.equal(1);
    expect(after.get(`nodelink_handshakes_total${peer}`)).to.equal(1);
    expect(after.get(`nodelink_rtt_seconds_count${peer}`)).to.be.greaterThan(0);
    expect(after.get(`nodelink_peer_queued_bytes${peer}`)).to.be.a('number');
    expect(after.get(`nodelink_path_checks_total{peer="node-1",result="ok"}`)).to.be.greaterThan(0);
    expect(after.get('nodelink_process_cpu_seconds_total')).to.be.greaterThan(0);
    expect(after.get('nodelink_ready')).to.equal(1);
    expect([...after.keys()].every((name) => name.startsWith('nodelink_'))).to.equal(true);

    const client = await scrape(node(), CLIENT_METRICS);
    expect(client.get('nodelink_peer_connected{peer="server"}')).to.equal(1);
    expect(client.get('nodelink_peer_transmit_bytes_total{peer="server"}')).to.be.greaterThan(size);
    expect(client.get('nodelink_handshake_failures_total{reason="connection_refused"}')).to.be.greaterThan(0);
    expect(client.get('nodelink_rtt_seconds_count{peer="server"}')).to.be.greaterThan(0);
  });

  it('status shows the summary line, route states, pongs and path health', async function () {
    const s = await status();
    const peer = s.peers[0]!;
    expect(peer.path?.state).to.equal('ok');
    expect(peer.path?.target).to.equal('198.19.0.11:10250');
    expect(peer.routeStates?.map((r) => r.state)).to.deep.equal(['active', 'active', 'active', 'active']);
    expect(Date.parse(peer.lastPongAt!)).to.be.greaterThan(0);
    expect(s.metrics).to.equal(SERVER_METRICS);
    const text = await runCli(['status', '--admin-socket', rig.cluster.serverSocket]);
    expect(text.stdout.split('\n')[0]).to.match(
      /^nodelink server on nl0: 1\/1 peers connected, 1\/1 paths ok, .* received, .* sent, \d+ dropped$/,
    );
    expect(text.stdout).to.match(/path: ok, 198\.19\.0\.11:10250 answered through the tunnel/);
    expect(text.stdout).to.match(/routes: 198\.19\.0\.11\/32 \(active\)/);
    const client = await rig.cluster.status(rig.cluster.clientSocket(1));
    expect(client.peers[0]!.routeStates?.every((r) => r.state === 'installed')).to.equal(true);
    expect(client.publicKey).to.equal(rig.cluster.nodeKeys.get(1)!.publicKey);
    const watch = await runCli([
      'status',
      '--admin-socket',
      rig.cluster.clientSocket(1),
      '--watch',
      '--interval',
      '0.2',
      '--count',
      '2',
    ]);
    expect(watch.stdout.match(/^nodelink client node-1 on nl0: connected to the server/gm)).to.have.length(2);
  });

  it('a broken data path shows in status and metrics while the session stays up', async function () {
    const { h } = rig;
    // The node loses its route back into the tunnel: pings on the TLS stream still flow, packets do not.
    await h.exec(node(), ['ip', 'route', 'del', h.tunnelCIDR, 'dev', 'nl0']);
    try {
      await waitFor('path failing', async () => (await status()).peers[0]!.path?.state === 'failing', 8000);
      const s = await status();
      expect(s.peers[0]!.connected).to.equal(true);
      expect(s.peers[0]!.path!.error).to.match(/no answer/);
      const metrics = await scrape(h.ns.cp, SERVER_METRICS);
      expect(metrics.get('nodelink_path_up{peer="node-1"}')).to.equal(0);
      expect(metrics.get('nodelink_path_checks_total{peer="node-1",result="failed"}')).to.be.greaterThan(0);
      const text = await runCli(['status', '--admin-socket', rig.cluster.serverSocket]);
      expect(text.stdout)
        .to.match(/0\/1 paths ok/)
        .and.match(/path: FAILING/);
      const client = await rig.cluster.status(rig.cluster.clientSocket(1));
      expect(client.peers[0]!.routeStates?.find((r) => r.route === h.tunnelCIDR)?.state).to.equal('missing');
    } finally {
      await h.exec(node(), ['ip', 'route', 'replace', h.tunnelCIDR, 'dev', 'nl0']);
    }
    await waitFor('path recovered', async () => (await status()).peers[0]!.path?.state === 'ok', 8000);
    expect(rig.cluster.server!.output()).to.contain('path check failed').and.contain('path check recovered');
  });

  it('SIGHUP re-reads the config file: the log level changes live, other changes are named as needing a restart', async function () {
    const { h } = rig;
    const server = rig.cluster.server!;
    writeFileSync(
      configFile,
      `metrics: ${SERVER_METRICS}\npath-check-interval-ms: 300\npath-check-timeout-ms: 1000\nlog-level: debug\nmtu: 1400\n`,
    );
    server.kill('SIGHUP');
    await server.waitForOutput('settings reloaded', 5000);
    await server.waitForOutput('take effect only after a restart', 5000);
    const reload = server
      .output()
      .split('\n')
      .find((line) => line.includes('settings reloaded'))!;
    expect(JSON.parse(reload)).to.deep.include({ changed: { logLevel: 'debug' } });
    expect(server.running).to.equal(true);
    expect((await get(h.ns.cp, SERVER_METRICS, '/readyz')).status).to.equal(200);
  });

  it('when the server goes away the node stays alive but is no longer ready', async function () {
    await rig.cluster.server!.stop();
    await waitFor(
      'client /readyz 503',
      async () => (await get(node(), CLIENT_METRICS, '/readyz')).status === 503,
      8000,
    );
    expect((await get(node(), CLIENT_METRICS, '/healthz')).status).to.equal(200);
    const metrics = await scrape(node(), CLIENT_METRICS);
    expect(metrics.get('nodelink_peer_connected{peer="server"}')).to.equal(0);
    expect(metrics.get('nodelink_disconnects_total{peer="server",reason="server_shutdown"}')).to.equal(1);
    expect(metrics.get('nodelink_ready')).to.equal(0);
    // One log line per event, never per packet: the 2 MiB transfer left no trace in the logs.
    const lines = rig.cluster.clients
      .get(1)!
      .output()
      .split('\n')
      .filter((line) => line.trim() !== '');
    expect(lines.length).to.be.lessThan(40);
  });
});

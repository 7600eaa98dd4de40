// A server of two worker processes (--workers 2), through the real CLI: connections spread over
// both, each node's routes go into the TUN of the worker holding its session, every kubelet and
// pod is reachable, bulk data arrives intact, status is one server's, a killed worker's nodes
// come back, and SIGTERM leaves the backstops and no TUN.

import { expect } from 'chai';
import { readFileSync, writeFileSync } from 'node:fs';
import { expectedSha256 } from '../../scripts/harness/index.js';
import { runCli } from '../../scripts/cluster.js';
import type { DaemonStatus } from '../../src/admin/index.js';
import { routeTableFor, type KernelRoute } from '../../src/tun/index.js';
import { nodelinkRoutes, routeDevice as deviceFor } from '../support/kernel-routes.js';
import { clusterRig, leavesNothingBehind } from '../support/cluster-rig.js';
import { waitFor } from '../support/wait.js';
import { metricValue } from '../support/metrics.js';

const NODES = [1, 2, 3, 4];
/** The node the reload removes from the peers file. */
const REMOVED = 4;
const TUNS = ['nl0', 'nl0-1'];
const METRICS = '127.0.0.1:9477';

describe('server with --workers 2 (real CLI)', function () {
  this.timeout(120_000);
  const rig = clusterRig(
    { nodes: NODES.length },
    { start: true, cluster: () => ({ extraServerArgs: ['--workers', '2', '--metrics', METRICS] }) },
  );
  const table = routeTableFor('nl0');

  /** The nodes in the peers file now. */
  let current = [...NODES];
  const allowedIPs = (): string[] => current.flatMap((n) => rig.h.nodeRoutes(n));

  /** Every IPv4 and IPv6 route of the control plane with protocol 78. */
  const ownRoutes = (): Promise<KernelRoute[]> => nodelinkRoutes(rig.h, rig.h.ns.cp);

  /** The device `ip route get` picks for an address in the control plane (undefined: none). */
  const routeDevice = (address: string): Promise<string | undefined> => deviceFor(rig.h, rig.h.ns.cp, address);

  /** Each node's IPv4 and IPv6 node IP is routed into the TUN of the worker its status names. */
  const expectRoutesFollowSessions = async (status: DaemonStatus): Promise<void> => {
    const { h } = rig;
    for (const n of current) {
      const peer = status.peers.find((p) => p.name === h.nodeName(n))!;
      expect(peer.worker, `${peer.name} held by a worker`).to.be.oneOf([0, 1]);
      const tun = TUNS[peer.worker!];
      for (const address of [h.nodeIP(n), h.nodeIP6(n), h.podIP(n, 1)])
        expect(await routeDevice(address), `route to ${address} (${peer.name})`).to.equal(tun);
    }
  };

  const reachesAll = async (): Promise<void> => {
    const { h } = rig;
    for (const n of NODES) {
      for (const v6 of [false, true]) {
        const kubelet = await h.curl(h.ns.cp, h.kubeletURL(n, '/healthz', v6), { timeoutS: 5 });
        expect(kubelet.ok, `kubelet ${n} v6=${v6}: ${kubelet.error}`).to.equal(true);
        const pod = await h.curl(h.ns.cp, h.podURL(n, 1, '/', v6), { timeoutS: 5 });
        expect(pod.ok, `pod ${n} v6=${v6}: ${pod.error}`).to.equal(true);
        expect(pod.body).to.contain(h.podName(n, 1));
      }
    }
  };

  /** Waits until every node is connected and the kernel routes agree with the sessions. */
  const settled = async (timeoutMs: number): Promise<DaemonStatus> => {
    let status: DaemonStatus | undefined;
    await waitFor(
      'every node connected, its routes into its worker’s TUN',
      async () => {
        status = await rig.cluster.status().catch(() => undefined);
        if (!status || status.peers.length !== current.length || !status.peers.every((p) => p.connected)) return false;
        return expectRoutesFollowSessions(status).then(
          () => true,
          () => false,
        );
      },
      timeoutMs,
    );
    return status!;
  };

  it('spreads the four sessions over both workers, one server ID, each node routed into its worker’s TUN', async function () {
    const status = await settled(15_000);
    expect(status.workers!.map((w) => w.tun)).to.deep.equal(TUNS);
    expect(status.workers!.every((w) => w.state === 'running' && w.pid !== null)).to.equal(true);
    const sessions = status.workers!.map((w) => w.sessions);
    expect(sessions.reduce((a, b) => a + b, 0)).to.equal(NODES.length);
    expect(Math.min(...sessions), `sessions per worker ${sessions.join(', ')}`).to.be.greaterThan(0);
    expect(new Set(status.peers.map((p) => p.worker))).to.deep.equal(new Set([0, 1]));
    expect(status).to.include({ role: 'server', tun: 'nl0', tunnelAddress: '198.18.255.1' });
    expect(status.serverId).to.be.a('string').and.not.equal('');
    expect(status.debug?.sessions).to.equal(NODES.length);
    // Both TUNs exist in the control plane, with the tunnel address.
    for (const tun of TUNS) {
      const link = await rig.h.exec(rig.h.ns.cp, ['ip', '-j', 'addr', 'show', 'dev', tun]);
      expect(link.stdout).to.contain('198.18.255.1');
    }
    // Under every node route, the first worker's route and the backstop.
    const routes = await ownRoutes();
    for (const cidr of allowedIPs()) {
      const under = routes.filter((r) => r.dst.text === cidr && r.table === table);
      expect(
        under.map((r) => (r.type === 7 ? `unreachable ${r.metric}` : `${r.dev} ${r.metric}`)).sort(),
      ).to.include.members(['nl0 128', 'unreachable 4096']);
    }
  });

  it('one /metrics and /readyz for the server: every worker’s sessions and handshakes', async function () {
    const { h } = rig;
    const ready = await h.curl(h.ns.cp, `http://${METRICS}/readyz`);
    expect(ready.ok, ready.error).to.equal(true);
    const metrics = await h.curl(h.ns.cp, `http://${METRICS}/metrics`);
    expect(metrics.ok, metrics.error).to.equal(true);
    expect(metrics.body).to.match(/^nodelink_peers_connected 4$/m);
    // Handshakes happen in the workers; the primary counts them all.
    const handshakes = [...metrics.body.matchAll(/^nodelink_handshakes_total\{peer="([^"]+)"\} (\d+)$/gm)];
    expect(handshakes.filter((m) => Number(m[2]) >= 1).map((m) => m[1])).to.have.members(
      NODES.map((n) => h.nodeName(n)),
    );
  });

  it('keepalive pongs from both workers reach the primary: every peer has a round trip and a recent pong', async function () {
    const { h } = rig;
    // Pongs arrive in the workers and are forwarded: every node's must reach the primary's
    // metrics, whichever worker holds it.
    const since = Date.now() / 1000 - 1;
    let missing: string[] = [];
    await waitFor(
      'a pong from every node in the primary’s metrics',
      async () => {
        const metrics = await h.curl(h.ns.cp, `http://${METRICS}/metrics`);
        if (!metrics.ok) return false;
        const value = (name: string, peer: string): number | undefined =>
          metricValue(metrics.body, `${name}{peer="${peer}"}`);
        missing = NODES.map((n) => h.nodeName(n)).filter((peer) => {
          const rtt = value('nodelink_peer_rtt_seconds', peer);
          const lastPong = value('nodelink_peer_last_pong_timestamp_seconds', peer);
          return !(rtt !== undefined && rtt > 0 && rtt < 1 && lastPong !== undefined && lastPong > since);
        });
        return missing.length === 0;
      },
      15_000,
    ).catch((err: Error) => {
      throw new Error(`${err.message}; no recent pong for ${missing.join(', ')}`);
    });
    const status = await rig.cluster.status();
    expect(new Set(status.peers.map((peer) => peer.worker))).to.have.keys([0, 1]);
  });

  it('reaches every kubelet and pod, IPv4 and IPv6, and nodelink status lists all four peers', async function () {
    await reachesAll();
    const table = await runCli(['status', '--admin-socket', rig.cluster.serverSocket]);
    expect(table.code, table.stderr).to.equal(0);
    for (const n of NODES) expect(table.stdout).to.contain(rig.h.nodeName(n));
  });

  it('carries 20 MB intact from a pod whose node the second worker holds', async function () {
    const { h } = rig;
    const status = await rig.cluster.status();
    const n = NODES.find((node) => status.peers.find((p) => p.name === h.nodeName(node))?.worker === 1)!;
    const size = 20 * 1024 * 1024;
    const result = await h.curl(h.ns.cp, h.podURL(n, 1, `/bytes/${size}`), { timeoutS: 40 });
    expect(result.ok, result.error).to.equal(true);
    expect(result.bytes).to.equal(size);
    expect(result.sha256).to.equal(expectedSha256(size));
    const after = await rig.cluster.status();
    const peer = after.peers.find((p) => p.name === h.nodeName(n))!;
    expect(peer.rxBytes).to.be.greaterThan(size);
  });

  it('a killed worker is started again; its nodes come back, routed into the TUN of the worker holding them', async function () {
    const before = await rig.cluster.status();
    const victim = before.workers![1]!;
    const moved = before.peers.filter((p) => p.worker === 1).map((p) => p.name);
    expect(moved.length).to.be.greaterThan(0);
    process.kill(victim.pid!, 'SIGKILL');
    await waitFor(
      'the second worker started again',
      async () => {
        const status = await rig.cluster.status().catch(() => undefined);
        const w = status?.workers?.[1];
        return w !== undefined && w.restarts === 1 && w.pid !== victim.pid && w.state === 'running';
      },
      15_000,
    );
    const status = await settled(30_000);
    for (const name of moved) expect(status.peers.find((p) => p.name === name)!.connected).to.equal(true);
    await reachesAll();
  });

  it('SIGHUP reaches every worker: a node removed from the peers file is disconnected and loses every route', async function () {
    const { h, cluster } = rig;
    const file = JSON.parse(readFileSync(cluster.peersFile, 'utf8')) as { peers: Array<{ name: string }> };
    writeFileSync(
      cluster.peersFile,
      JSON.stringify({ peers: file.peers.filter((p) => p.name !== h.nodeName(REMOVED)) }, null, 2),
    );
    cluster.server!.kill('SIGHUP');
    await waitFor(
      `${h.nodeName(REMOVED)} gone from status, its client told so`,
      async () => {
        const status = await cluster.status().catch(() => undefined);
        return status?.peers.length === NODES.length - 1 && !cluster.clients.get(REMOVED)!.running;
      },
      15_000,
    );
    expect(cluster.clients.get(REMOVED)!.output()).to.contain("removed from the server's peers file");
    await waitFor(
      `no route left for ${h.nodeName(REMOVED)}`,
      async () => {
        const left = (await ownRoutes()).filter((r) => h.nodeRoutes(REMOVED).includes(r.dst.text));
        return left.length === 0;
      },
      5000,
    );
    current = NODES.filter((n) => n !== REMOVED);
    const status = await settled(15_000);
    expect(status.workers!.every((w) => w.state === 'running')).to.equal(true);
  });

  it('SIGTERM stops every worker: no TUN left, only the backstops stay', async function () {
    const { h, cluster } = rig;
    const pids = (await cluster.status()).workers!.map((w) => w.pid!);
    const exit = await cluster.server!.stop('SIGTERM', 5000);
    expect(exit.code).to.equal(0);
    for (const pid of pids) {
      let alive = true;
      try {
        process.kill(pid, 0);
      } catch {
        alive = false;
      }
      expect(alive, `worker ${pid} still running`).to.equal(false);
    }
    for (const tun of TUNS) {
      const link = await h.exec(h.ns.cp, ['ip', 'link', 'show', tun], { allowFail: true });
      expect(link.code, `${tun} still exists`).to.not.equal(0);
    }
    const left = (await ownRoutes()).map(
      (r) => `${r.type === 7 ? 'unreachable' : `dev ${r.dev}`} ${r.dst.text} ${r.table}`,
    );
    expect(left.sort()).to.deep.equal(
      allowedIPs()
        .map((cidr) => `unreachable ${cidr} ${table}`)
        .sort(),
    );
  });

  leavesNothingBehind(rig);
});

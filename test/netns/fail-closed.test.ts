// Fail closed and route ownership: whenever no server runs (before its first start, after
// SIGTERM, after SIGKILL), the apiserver's dials to node IPs and pod CIDRs fail at once and no
// packet for them leaves by the control plane's default route; nodelink adds, replaces and
// deletes only its own routes, and refuses routes that would take over the host's.

import { expect } from 'chai';
import { readFileSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import type { Apiserver } from '../../scripts/harness/index.js';
import { runCli } from '../../scripts/cluster.js';
import { routeTableFor, type KernelRoute } from '../../src/tun/index.js';
import { nodelinkRoutes } from '../support/kernel-routes.js';
import { clusterRig, clusterServerFlags, killServer, leavesNothingBehind } from '../support/cluster-rig.js';

const ROGUE = path.join(path.dirname(new URL(import.meta.url).pathname), 'rogue-server.js');
const LEAK_TABLE = 'nodelink_leakwatch';
/** A dial that a route answers at once; the bound a timeout-based failure could never meet. */
const FAST_MS = 100;

describe('fail closed: node routes answer at once whenever no server runs', function () {
  this.timeout(120_000);
  // A default route on the control plane: without the backstops, node traffic would leave by it.
  const rig = clusterRig({ nodes: 2, cpDefaultRoute: true });
  let api: Apiserver;
  const table = routeTableFor('nl0');
  const measured: number[] = [];

  /** The node IPs and pod IPs the apiserver dials (kubelet over HTTPS, pods over HTTP), both families. */
  const targets = (): Array<{ host: string; port: number; tls: boolean }> => {
    const t = rig.h;
    return [1, 2].flatMap((n) => [
      { host: t.nodeIP(n), port: t.kubeletPort, tls: true },
      { host: t.nodeIP6(n), port: t.kubeletPort, tls: true },
      { host: t.podIP(n, 1), port: 8080, tls: false },
      { host: t.podIP6(n, 1), port: 8080, tls: false },
    ]);
  };

  const allowedIPs = (): string[] => [1, 2].flatMap((n) => rig.h.nodeRoutes(n));

  /** Every IPv4 and IPv6 route of the control plane with protocol 78. */
  const ownRoutes = (): Promise<KernelRoute[]> => nodelinkRoutes(rig.h, rig.h.ns.cp);
  const listed = (routes: KernelRoute[]): string[] =>
    routes.map((r) => `${r.type === 7 ? 'unreachable' : `dev ${r.dev}`} ${r.dst.text} table ${r.table}`).sort();

  /** Packets counted leaving the control plane's default-route interface for the node network. */
  const leaked = async (): Promise<number> => {
    const r = await rig.h.exec(rig.h.ns.cp, ['nft', '-j', 'list', 'table', 'inet', LEAK_TABLE]);
    let packets = 0;
    for (const item of (JSON.parse(r.stdout) as { nftables: Array<Record<string, any>> }).nftables) {
      for (const expr of item['rule']?.expr ?? []) if (expr.counter) packets += expr.counter.packets as number;
    }
    return packets;
  };
  const watchLeaks = async (): Promise<void> => {
    const { h } = rig;
    await h.exec(h.ns.cp, ['nft', 'delete', 'table', 'inet', LEAK_TABLE], { allowFail: true });
    await h.exec(h.ns.cp, ['nft', '-f', '-'], {
      input: `
table inet ${LEAK_TABLE} {
  chain output {
    type filter hook output priority filter; policy accept;
    oifname "eth0" ip daddr 198.19.0.0/16 counter
    oifname "eth0" ip6 daddr fd00:19::/48 counter
  }
}
`,
    });
  };

  /** Every target dialed from the apiserver's namespace fails with EHOSTUNREACH within FAST_MS. */
  const failsFast = async (): Promise<void> => {
    for (const target of targets()) {
      const result = await api.dial({ ...target, timeoutMs: 2000 });
      expect(result.ok, `${target.host} must not answer`).to.equal(false);
      expect(result.error, `${target.host}`).to.equal('EHOSTUNREACH');
      expect(result.ms, `${target.host} failed after ${result.ms} ms`).to.be.below(FAST_MS);
      measured.push(result.ms);
    }
  };

  const reachesAll = async (): Promise<void> => {
    for (const target of targets()) {
      const result = await api.dial({ ...target, path: '/whoami', timeoutMs: 5000 });
      expect(result, `${target.host} through the link`).to.include({ ok: true, status: 200 });
    }
  };

  /**
   * `nodelink server` beside the running one, with the cluster's key and its own port, peers
   * file, tunnel networks, TUN and admin socket; runs until it exits (these are refused at start).
   */
  const otherServer = (server: {
    port: number;
    peers: string;
    tunnelCIDRs: string[];
    tun: string;
    socket: string;
  }): ReturnType<typeof runCli> => {
    const { h, cluster } = rig;
    return runCli(
      [
        'server',
        '--listen',
        `${h.cpAddress}:${server.port}`,
        '--key',
        cluster.serverKey.keyFile,
        '--peers',
        server.peers,
        ...server.tunnelCIDRs.flatMap((cidr) => ['--tunnel-cidr', cidr]),
        '--tun',
        server.tun,
        '--admin-socket',
        path.join(h.dir, server.socket),
      ],
      { ns: h.ns.cp },
    );
  };

  before(async function () {
    api = await rig.h.startApiserver();
    await watchLeaks();
  });

  it('without nodelink a dial to a node leaves by the default route: the leak counter sees it', async function () {
    const result = await api.dial({ host: rig.h.nodeIP(1), port: rig.h.kubeletPort, tls: true, timeoutMs: 300 });
    expect(result.ok).to.equal(false);
    expect(result.error, 'the router drops it: the dial just times out').to.equal('timeout');
    expect(await leaked()).to.be.greaterThan(0);
    await watchLeaks();
    expect(await leaked()).to.equal(0);
  });

  it('`server --init-routes` puts a backstop per allowedIP in place before any server runs, and prunes stale ones', async function () {
    const { h } = rig;
    // A backstop left by an earlier peers file: not authorized any more, so it goes.
    await h.exec(h.ns.cp, ['ip', 'route', 'add', 'unreachable', '198.19.99.0/24', 'proto', '78', 'table', `${table}`]);
    const result = await runCli(
      [
        'server',
        '--init-routes',
        '--listen',
        h.serverEndpoint,
        '--key',
        path.join(h.dir, 'not-read.key'),
        ...clusterServerFlags(rig),
      ],
      { ns: h.ns.cp },
    );
    expect(result.code, result.stderr).to.equal(0);
    expect(result.stderr).to.include('fail-closed routes in place');
    expect(listed(await ownRoutes())).to.deep.equal(
      allowedIPs()
        .map((cidr) => `unreachable ${cidr} table ${table}`)
        .sort(),
    );
    const rules = (await h.exec(h.ns.cp, ['ip', 'rule', 'show'])).stdout;
    expect(rules).to.match(new RegExp(`4877:\\s+from all ipproto tcp sport 8443 lookup main proto 78`));
    expect(rules).to.match(new RegExp(`4878:\\s+from all lookup ${table} proto 78`));
    await failsFast();
    expect(await leaked(), 'packets for nodes on the default route').to.equal(0);
  });

  it('the server takes the routes over: every allowedIP into nl0, the backstop beneath it', async function () {
    await rig.cluster.up();
    const routes = listed(await ownRoutes());
    for (const cidr of allowedIPs()) {
      expect(routes).to.include(`dev nl0 ${cidr} table ${table}`);
      expect(routes).to.include(`unreachable ${cidr} table ${table}`);
    }
    expect(routes).to.have.length(allowedIPs().length * 2);
    await reachesAll();
  });

  it('kill -9: the apiserver’s dials to nodes and pods fail in < 100 ms, and no packet leaves by the default route', async function () {
    await watchLeaks();
    await killServer(rig);
    measured.length = 0;
    await failsFast();
    expect(await leaked(), 'packets for nodes on the default route').to.equal(0);
    const sorted = [...measured].sort((a, b) => a - b);
    console.log(
      `      → after kill -9: ${measured.length} dials failed with EHOSTUNREACH in ${sorted[0]}-${sorted.at(-1)} ms (median ${sorted[Math.floor(sorted.length / 2)]} ms); packets on the default route: 0`,
    );
    expect(listed(await ownRoutes())).to.deep.equal(
      allowedIPs()
        .map((cidr) => `unreachable ${cidr} table ${table}`)
        .sort(),
    );
  });

  it('the server comes back and takes the routes over again; the clients reconnect', async function () {
    const { cluster } = rig;
    await cluster.startServer();
    await cluster.waitConnected([1, 2], 30_000);
    await reachesAll();
    expect(listed(await ownRoutes())).to.have.length(allowedIPs().length * 2);
  });

  it('SIGTERM removes the routes into nl0 and keeps the backstops', async function () {
    const { cluster } = rig;
    await watchLeaks();
    await cluster.server!.stop('SIGTERM');
    expect(listed(await ownRoutes())).to.deep.equal(
      allowedIPs()
        .map((cidr) => `unreachable ${cidr} table ${table}`)
        .sort(),
    );
    await failsFast();
    expect(await leaked()).to.equal(0);
    await cluster.startServer();
    await cluster.waitConnected([1, 2], 30_000);
  });

  it('a second server with another TUN name can neither take over nor delete the first one’s routes', async function () {
    const { h, cluster } = rig;
    const before = listed(await ownRoutes());
    const result = await otherServer({
      port: 8444,
      peers: cluster.peersFile,
      tunnelCIDRs: ['198.18.254.0/24', 'fd00:18:fe::/64'],
      tun: 'nl1',
      socket: 'second.sock',
    });
    expect(result.code).to.equal(1);
    expect(result.stderr.trim().split('\n')).to.have.length(1);
    expect(result.stderr).to.match(
      /peer "node-1" allowedIPs 198\.19\.0\.11\/32 covers another nodelink's route 198\.19\.0\.11\/32 dev nl0 proto 78 table \d+/,
    );
    expect(listed(await ownRoutes())).to.deep.equal(before);
    expect((await h.exec(h.ns.cp, ['ip', 'link', 'show', 'nl1'], { allowFail: true })).code, 'no nl1').to.not.equal(0);
    await reachesAll();
  });

  it('an allowedIPs entry covering the control-plane network is refused naming both, at start and on reload', async function () {
    const { h, cluster } = rig;
    const intruder = {
      name: 'intruder',
      publicKey: cluster.makeIdentity('intruder').publicKey,
      allowedIPs: ['198.18.0.0/24'],
    };
    const good = JSON.parse(readFileSync(cluster.peersFile, 'utf8')) as { peers: object[] };
    const bad = path.join(h.dir, 'peers-bad.json');
    writeFileSync(bad, JSON.stringify({ peers: [intruder] }));
    const started = await otherServer({
      port: 8446,
      peers: bad,
      tunnelCIDRs: ['198.18.253.0/24'],
      tun: 'nl3',
      socket: 'third.sock',
    });
    expect(started.code).to.equal(1);
    expect(started.stderr.trim()).to.match(
      /^nodelink: peer "intruder" allowedIPs 198\.18\.0\.0\/24 covers the host's route 198\.18\.0\.0\/24 dev eth0 proto kernel table main: .+$/,
    );
    // The same file by SIGHUP to the running server: refused, the old peers and the host's route stay.
    const original = readFileSync(cluster.peersFile, 'utf8');
    writeFileSync(cluster.peersFile, JSON.stringify({ peers: [...good.peers, intruder] }));
    try {
      cluster.server!.kill('SIGHUP');
      await cluster.server!.waitForOutput('reload step failed', 10_000);
      expect(cluster.server!.output()).to.match(
        /peer \\"intruder\\" allowedIPs 198\.18\.0\.0\/24 covers the host's route/,
      );
      const get = await h.exec(h.ns.cp, ['ip', 'route', 'get', '198.18.0.1']);
      expect(get.stdout).to.match(/dev eth0/);
      await reachesAll();
    } finally {
      writeFileSync(cluster.peersFile, original);
    }
  });

  it('the node never installs a default route or a route over the server’s address from a welcome', async function () {
    const { h, cluster } = rig;
    await cluster.clients.get(2)!.stop();
    for (const [port, cidrs, reason] of [
      [8447, '0.0.0.0/0,::/0', /tunnel CIDR 0\.0\.0\.0\/0 would be a default route on this node/],
      [8448, '198.18.0.0/16', /tunnel CIDR 198\.18\.0\.0\/16 holds the server's own address 198\.18\.0\.2/],
    ] as const) {
      const rogue = h.spawn(
        h.ns.cp,
        [
          process.execPath,
          ROGUE,
          '--listen',
          `${h.cpAddress}:${port}`,
          '--key',
          cluster.serverKey.keyFile,
          '--tunnel-cidrs',
          cidrs,
        ],
        { name: `rogue-${port}` },
      );
      await rogue.waitForOutput('listening on', 10_000);
      const args = cluster.clientArgs(2);
      args[args.indexOf('--server') + 1] = `${h.cpAddress}:${port}`;
      const client = h.spawn(h.ns.node(2), args, { name: `client-2-rogue-${port}` });
      try {
        await client.waitForOutput('cannot install routes to the control plane', 15_000);
        expect(client.output()).to.match(reason);
        const main = (await h.exec(h.ns.node(2), ['ip', 'route', 'show'])).stdout;
        const main6 = (await h.exec(h.ns.node(2), ['ip', '-6', 'route', 'show'])).stdout;
        expect(main).to.match(/^default via 198\.19\.0\.1 dev eth0/m);
        expect(main6).to.match(/^default via fd00:19::1 dev eth0/m);
        expect(main + main6, 'nothing into nl0').to.not.match(/dev nl0/);
      } finally {
        await client.stop();
        await rogue.stop();
      }
    }
    const main = (await h.exec(h.ns.node(2), ['ip', 'route', 'show'])).stdout;
    expect(main, 'the default route survives the client').to.match(/^default via 198\.19\.0\.1 dev eth0/m);
    cluster.startClient(2);
    await cluster.waitConnected([1, 2]);
  });

  it('the stand-in and the server leave nothing in the apiserver namespace but the backstops', async function () {
    await rig.cluster.stop();
    expect(listed(await ownRoutes())).to.deep.equal(
      allowedIPs()
        .map((cidr) => `unreachable ${cidr} table ${table}`)
        .sort(),
    );
  });

  leavesNothingBehind(rig);
});

// Several servers: every node keeps a session to each control plane's server, so losing one
// server loses no reachability from the other control plane (issue 8).

import { expect } from 'chai';
import path from 'node:path';
import { Harness, type ManagedProcess } from '../../scripts/harness.js';
import { CLI, NodelinkCluster } from '../../scripts/cluster.js';
import { skipUnlessRoot } from './root.js';

describe('two servers, every node connected to both', function () {
  this.timeout(120_000);
  let h: Harness | undefined;
  let cluster: NodelinkCluster | undefined;
  let second: ManagedProcess | undefined;
  let secondSocket = '';

  const startSecond = async (): Promise<void> => {
    const t = h!;
    second = t.spawn(
      t.ns.controlPlane(2),
      [
        process.execPath,
        CLI,
        'server',
        '--listen',
        t.serverEndpointOf(2),
        '--key',
        cluster!.serverKey.keyFile,
        '--peers',
        cluster!.peersFile,
        '--tunnel-cidr',
        t.tunnelCIDROf(2),
        '--tunnel-cidr',
        t.tunnelCIDR6Of(2),
        '--admin-socket',
        secondSocket,
      ],
      { name: 'nodelink-server-2' },
    );
    await t.waitForOutput(second, 'server ready', 15_000);
  };

  const reachesAll = async (ns: string): Promise<boolean[]> => {
    const t = h!;
    const urls = [t.kubeletURL(1), t.kubeletURL(2), t.podURL(1, 1), t.podURL(2, 1, '/', true)];
    return (await Promise.all(urls.map((url) => t.curl(ns, url, { timeoutS: 5 })))).map((r) => r.ok);
  };

  before(async function () {
    skipUnlessRoot(this);
    h = await Harness.create({ nodes: 2, controlPlanes: 2 });
    cluster = new NodelinkCluster(h);
    secondSocket = path.join(h.dir, 'server-2.sock');
    await cluster.startServer();
    await startSecond();
    for (const n of [1, 2]) cluster.startClient(n, ['--server', h.serverEndpointOf(2)]);
    await cluster.waitConnected([1, 2]);
    await h.waitFor(
      async () => (await cluster!.status(secondSocket)).peers.every((peer) => peer.connected),
      15_000,
      'both nodes on server 2',
    );
  });

  after(async function () {
    await second?.stop();
    await cluster?.stop();
    await h?.destroy();
  });

  it('both control planes reach every kubelet and pod', async function () {
    expect(await reachesAll(h!.ns.cp)).to.deep.equal([true, true, true, true]);
    expect(await reachesAll(h!.ns.controlPlane(2))).to.deep.equal([true, true, true, true]);
  });

  it('a node shows one session per server', async function () {
    const status = await cluster!.status(cluster!.clientSocket(1));
    expect(status.peers.map((peer) => peer.name)).to.deep.equal([
      `server ${h!.serverEndpoint}`,
      `server ${h!.serverEndpointOf(2)}`,
    ]);
    expect(status.peers.every((peer) => peer.connected)).to.equal(true);
    expect(status.peers[1]!.routes).to.include(h!.tunnelCIDROf(2));
  });

  it('losing server 1 loses nothing from control plane 2; server 1 back, nodes return to it', async function () {
    const t = h!;
    await cluster!.server!.stop('SIGKILL');
    expect(await reachesAll(t.ns.controlPlane(2))).to.deep.equal([true, true, true, true]);
    await cluster!.startServer();
    await cluster!.waitConnected([1, 2], 30_000);
    expect(await reachesAll(t.ns.cp)).to.deep.equal([true, true, true, true]);
  });

  it('losing server 2 leaves control plane 1 untouched', async function () {
    const t = h!;
    await second!.stop('SIGTERM');
    expect(await reachesAll(t.ns.cp)).to.deep.equal([true, true, true, true]);
    await startSecond();
    await t.waitFor(
      async () => (await cluster!.status(secondSocket)).peers.every((peer) => peer.connected),
      30_000,
      'nodes back on server 2',
    );
    expect(await reachesAll(t.ns.controlPlane(2))).to.deep.equal([true, true, true, true]);
  });
});

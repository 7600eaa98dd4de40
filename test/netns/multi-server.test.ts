// Several servers: every node keeps a session to each control plane's server, so losing one
// server loses no reachability from the other control plane.

import { expect } from 'chai';
import path from 'node:path';
import type { ManagedProcess } from '../../scripts/harness/index.js';
import { CLI } from '../../scripts/cluster.js';
import { clusterRig, leavesNothingBehind } from '../support/cluster-rig.js';
import { waitFor } from '../support/wait.js';

describe('two servers, every node connected to both', function () {
  this.timeout(120_000);
  const rig = clusterRig({ nodes: 2, controlPlanes: 2 });
  let second: ManagedProcess | undefined;
  let secondSocket = '';

  const startSecond = async (): Promise<void> => {
    const { h, cluster } = rig;
    second = h.spawn(
      h.ns.controlPlane(2),
      [
        process.execPath,
        CLI,
        'server',
        '--listen',
        h.serverEndpointOf(2),
        '--key',
        cluster.serverKey.keyFile,
        '--peers',
        cluster.peersFile,
        '--tunnel-cidr',
        h.tunnelCIDROf(2),
        '--tunnel-cidr',
        h.tunnelCIDR6Of(2),
        '--admin-socket',
        secondSocket,
      ],
      { name: 'nodelink-server-2' },
    );
    await second.waitForOutput('server ready', 15_000);
  };

  const reachesAll = async (ns: string): Promise<boolean[]> => {
    const { h } = rig;
    const urls = [h.kubeletURL(1), h.kubeletURL(2), h.podURL(1, 1), h.podURL(2, 1, '/', true)];
    return (await Promise.all(urls.map((url) => h.curl(ns, url, { timeoutS: 5 })))).map((r) => r.ok);
  };

  before(async function () {
    const { h, cluster } = rig;
    secondSocket = path.join(h.dir, 'server-2.sock');
    await cluster.startServer();
    await startSecond();
    for (const n of [1, 2]) cluster.startClient(n, ['--server', h.serverEndpointOf(2)]);
    await cluster.waitConnected([1, 2]);
    await waitFor(
      'both nodes on server 2',
      async () => (await cluster.status(secondSocket)).peers.every((peer) => peer.connected),
      15_000,
    );
  });

  it('both control planes reach every kubelet and pod', async function () {
    const { h } = rig;
    expect(await reachesAll(h.ns.cp)).to.deep.equal([true, true, true, true]);
    expect(await reachesAll(h.ns.controlPlane(2))).to.deep.equal([true, true, true, true]);
  });

  it('a node shows one session per server', async function () {
    const { h, cluster } = rig;
    const status = await cluster.status(cluster.clientSocket(1));
    expect(status.peers.map((peer) => peer.name)).to.deep.equal([
      `server ${h.serverEndpoint}`,
      `server ${h.serverEndpointOf(2)}`,
    ]);
    expect(status.peers.every((peer) => peer.connected)).to.equal(true);
    expect(status.peers[1]!.routes).to.include(h.tunnelCIDROf(2));
  });

  it('losing server 1 loses nothing from control plane 2; server 1 back, nodes return to it', async function () {
    const { h, cluster } = rig;
    await cluster.server!.stop('SIGKILL');
    expect(await reachesAll(h.ns.controlPlane(2))).to.deep.equal([true, true, true, true]);
    await cluster.startServer();
    await cluster.waitConnected([1, 2], 30_000);
    expect(await reachesAll(h.ns.cp)).to.deep.equal([true, true, true, true]);
  });

  it('losing server 2 leaves control plane 1 untouched', async function () {
    const { h, cluster } = rig;
    await second!.stop('SIGTERM');
    expect(await reachesAll(h.ns.cp)).to.deep.equal([true, true, true, true]);
    await startSecond();
    await waitFor(
      'nodes back on server 2',
      async () => (await cluster.status(secondSocket)).peers.every((peer) => peer.connected),
      30_000,
    );
    expect(await reachesAll(h.ns.controlPlane(2))).to.deep.equal([true, true, true, true]);
  });

  leavesNothingBehind(rig);
});

// Dead-peer detection with the default keepalive (ping every 2 s, dead after 10 s of silence):
// a node whose packets vanish in the network (power cut, cable pulled upstream) is noticed by
// both ends in about 10 s, the other node is untouched, and the node is back once the network
// returns.

import { expect } from 'chai';
import { connected, peer, quickStatus, report, faultRig } from './util.js';
import { leavesNothingBehind } from '../support/cluster-rig.js';
import { waitFor } from '../support/wait.js';

describe('faults: dead peer detection', function () {
  this.timeout(90_000);
  const rig = faultRig({ nodes: 2, stubs: false });

  it('a silent node is noticed by the server and by the node in about 10 s', async function () {
    const { h } = rig;
    const before = (await peer(rig.cluster, 1))!;
    expect(before.lastPongMs, 'RTT is measured').to.be.a('number');
    await rig.underlay.blackhole(1);
    const cutAt = Date.now();
    const clientSocket = rig.cluster.clientSocket(1);
    const [serverMs, clientMs] = await Promise.all([
      waitFor('the server to drop node-1', async () => !(await connected(rig.cluster, 1)), 20_000),
      waitFor(
        'node-1 to drop the server',
        async () => !(await quickStatus(rig.cluster, clientSocket)).peers[0]!.connected,
        20_000,
      ),
    ]);
    report(
      `dead node noticed: by the server after ${serverMs} ms, by the node after ${clientMs} ms (keepalive 2 s, dead after 10 s)`,
    );
    for (const ms of [serverMs, clientMs]) expect(ms).to.be.within(8000, 13_000);
    // Node 2 never noticed anything.
    expect(await h.ping(h.ns.cp, h.nodeIP(2), { timeoutS: 3 })).to.equal(true);
    const node2 = (await peer(rig.cluster, 2))!;
    expect(Date.parse(node2.connectedSince!)).to.be.below(cutAt);
    // Traffic for the dead node is refused at once (ICMP unreachable), not black-holed.
    const ping = await h.exec(h.ns.cp, ['ping', '-c', '1', '-W', '2', h.nodeIP(1)], { allowFail: true });
    expect(ping.stdout + ping.stderr).to.match(/Unreachable/i);
  });

  it('when the network returns the node is back on its own', async function () {
    const { h } = rig;
    await rig.underlay.clear();
    const backMs = await waitFor('node-1 to reconnect', () => connected(rig.cluster, 1), 30_000);
    report(
      `node back ${backMs} ms after the network returned (a dial in flight may first wait out its 5 s handshake timeout)`,
    );
    expect(await h.ping(h.ns.cp, h.nodeIP(1), { timeoutS: 3 })).to.equal(true);
  });

  leavesNothingBehind(rig);
});

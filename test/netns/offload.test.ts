// TUN offloads end to end, through the real CLI at --mtu 1500: TCP crosses the link in packets
// of up to 64 KiB (Offload frames) between ends that both take them, data arrives intact over
// IPv4 and IPv6 both ways, and a node or server without offloads (here: built without the
// native TUN module, as an older release behaves on the wire) gets plain packets only, while the
// other nodes keep theirs.

import { expect } from 'chai';
import { writeFileSync } from 'node:fs';
import path from 'node:path';
import { expectedBytes, expectedSha256 } from '../../scripts/harness/index.js';
import { NodelinkCluster } from '../../scripts/cluster.js';
import { expectNothingLeft, harnessRig } from '../support/cluster-rig.js';

const MTU = 1500;
/** The TUN through the addon's streams: no virtio headers, so no offloads offered or agreed. */
const PLAIN = { NODELINK_TUNIO: 'streams' };
const MiB = 1024 * 1024;

describe('offloads in namespaces (real CLI, --mtu 1500)', function () {
  this.timeout(180_000);
  const rig = harnessRig({ nodes: 2 });
  let cluster: NodelinkCluster | undefined;

  afterEach(async function () {
    await cluster?.stop();
    cluster = undefined;
  });

  async function start(options: { plainServer?: boolean; plainNodes?: number[] }): Promise<NodelinkCluster> {
    cluster = new NodelinkCluster(rig.h, { mtu: MTU, ...(options.plainServer ? { serverEnv: PLAIN } : {}) });
    await cluster.startServer();
    for (const n of [1, 2]) {
      if (options.plainNodes?.includes(n)) cluster.startClient(n, [], `nodelink-client-${n}-plain`, PLAIN);
      else cluster.startClient(n);
    }
    await cluster.waitConnected([1, 2]);
    return cluster;
  }

  /** The server's counters for node n: bytes and packets each way. */
  async function counters(n: number) {
    const status = await cluster!.status();
    const peer = status.peers.find((p) => p.name === rig.h.nodeName(n))!;
    return { rxBytes: peer.rxBytes, rxPackets: peer.rxPackets, txBytes: peer.txBytes, txPackets: peer.txPackets };
  }

  /**
   * 20 MB from node n's pod and 20 MB echoed through it (IPv4 and IPv6, alternating), checked by
   * sha256. Returns the average packet the server received from the node during the download,
   * and sent it during the upload: above the MTU only if offloaded packets crossed.
   */
  async function transfersIntact(n: number, v6Down: boolean): Promise<{ down: number; up: number }> {
    const { h } = rig;
    const size = 20 * MiB;
    const before = await counters(n);
    const down = await h.curl(h.ns.cp, h.podURL(n, 1, `/bytes/${size}`, v6Down), { timeoutS: 60 });
    expect(down.ok, `download from node ${n}: ${down.error}`).to.equal(true);
    expect(down.sha256, `20 MB from node ${n} (v6=${v6Down})`).to.equal(expectedSha256(size));
    const middle = await counters(n);
    const body = path.join(h.dir, 'upload.bin');
    writeFileSync(body, expectedBytes(size));
    const up = await h.curl(h.ns.cp, h.podURL(n, 1, '/echo', !v6Down), {
      timeoutS: 60,
      args: ['-X', 'POST', '--data-binary', `@${body}`, '-H', 'Content-Type: application/octet-stream'],
    });
    expect(up.ok, `upload to node ${n}: ${up.error}`).to.equal(true);
    expect(up.sha256, `20 MB echoed by node ${n} (v6=${!v6Down})`).to.equal(expectedSha256(size));
    const after = await counters(n);
    return {
      down: (middle.rxBytes - before.rxBytes) / (middle.rxPackets - before.rxPackets),
      up: (after.txBytes - middle.txBytes) / (after.txPackets - middle.txPackets),
    };
  }

  it('both ends with offloads: packets above the MTU cross, 20 MB intact both ways over IPv4 and IPv6', async function () {
    await start({});
    for (const n of [1, 2]) {
      const average = await transfersIntact(n, n === 2);
      expect(average.down, `node ${n} → server: bytes per packet`).to.be.above(MTU);
      expect(average.up, `server → node ${n}: bytes per packet`).to.be.above(MTU);
    }
  });

  it('a node without offloads gets plain packets only; the other node still sends offloaded ones, and gets them once it is gone', async function () {
    await start({ plainNodes: [1] });
    const plain = await transfersIntact(1, false);
    expect(plain.down, 'node 1 → server: bytes per packet').to.be.at.most(MTU);
    expect(plain.up, 'server → node 1: bytes per packet').to.be.at.most(MTU);
    // The server's TUN hands over plain packets while node 1 is connected; node 2 still offloads.
    const mixed = await transfersIntact(2, true);
    expect(mixed.down, 'node 2 → server: bytes per packet').to.be.above(MTU);
    expect(mixed.up, 'server → node 2 with a plain node connected: bytes per packet').to.be.at.most(MTU);
    await cluster!.clients.get(1)!.stop();
    const alone = await transfersIntact(2, false);
    expect(alone.up, 'server → node 2 once node 1 left: bytes per packet').to.be.above(MTU);
  });

  it('a server without offloads: its nodes send and get plain packets, 20 MB intact both ways', async function () {
    await start({ plainServer: true });
    for (const n of [1, 2]) {
      const average = await transfersIntact(n, n === 1);
      expect(average.down, `node ${n} → server: bytes per packet`).to.be.at.most(MTU);
      expect(average.up, `server → node ${n}: bytes per packet`).to.be.at.most(MTU);
    }
  });

  it('leaves nothing behind', async function () {
    await cluster?.stop();
    cluster = undefined;
    await rig.h.destroy();
    await expectNothingLeft(rig.prefix);
  });
});

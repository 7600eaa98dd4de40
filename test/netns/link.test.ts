// The link end to end, through the real CLI in the namespace harness: the control plane reaches
// kubelets and pods only through nodelink, bulk data arrives intact, status tells the truth,
// bad peers are rejected with a reason, and nothing is left behind.

import { expect } from 'chai';
import { writeFileSync } from 'node:fs';
import { expectedSha256 } from '../../scripts/harness/index.js';
import { runCli } from '../../scripts/cluster.js';
import { clusterRig, expectNothingLeft } from '../support/cluster-rig.js';
import { waitFor } from '../support/wait.js';

describe('link in namespaces (real CLI)', function () {
  this.timeout(60_000);
  const rig = clusterRig({ nodes: 2 });

  it('without the link the control plane reaches no node or pod', async function () {
    const { h } = rig;
    const urls = [h.kubeletURL(1), h.kubeletURL(2, '/healthz', true), h.podURL(1, 1), h.podURL(2, 1, '/', true)];
    const results = await Promise.all(urls.map((url) => h.curl(h.ns.cp, url, { timeoutS: 2 })));
    expect(results.map((r) => r.ok)).to.deep.equal([false, false, false, false]);
  });

  it('with the link it reaches both kubelets and both pods, IPv4 and IPv6', async function () {
    const { h } = rig;
    await rig.cluster.up();
    for (const n of [1, 2]) {
      for (const v6 of [false, true]) {
        const kubelet = await h.curl(h.ns.cp, h.kubeletURL(n, '/containerLogs/ns/pod/c', v6), { timeoutS: 5 });
        expect(kubelet.ok, `kubelet ${n} v6=${v6}: ${kubelet.error}`).to.equal(true);
        expect(kubelet.body).to.contain(`kubelet ${h.nodeName(n)}`);
        const pod = await h.curl(h.ns.cp, h.podURL(n, 1, '/', v6), { timeoutS: 5 });
        expect(pod.ok, `pod ${n} v6=${v6}: ${pod.error}`).to.equal(true);
        expect(pod.body).to.contain(h.podName(n, 1));
      }
    }
  });

  it("kubelet and pods see the server's tunnel address as the source", async function () {
    const { h } = rig;
    const who = await h.curl(h.ns.cp, h.podURL(1, 1, '/whoami'), { timeoutS: 5 });
    expect(who.body).to.contain('198.18.255.1');
  });

  it('carries 20 MB from a pod intact (sha256)', async function () {
    const { h } = rig;
    const size = 20 * 1024 * 1024;
    const started = Date.now();
    const result = await h.curl(h.ns.cp, h.podURL(2, 1, `/bytes/${size}`), { timeoutS: 40 });
    const seconds = (Date.now() - started) / 1000;
    expect(result.ok, result.error).to.equal(true);
    expect(result.bytes).to.equal(size);
    expect(result.sha256).to.equal(expectedSha256(size));
    console.log(
      `      20 MiB pod → control plane in ${seconds.toFixed(2)} s (${((size * 8) / seconds / 1e6).toFixed(0)} Mbit/s)`,
    );
  });

  it('status --json on the server has every status field and moving counters', async function () {
    const { h } = rig;
    const status = await rig.cluster.status();
    expect(status).to.include({ role: 'server', tun: 'nl0', tunnelAddress: '198.18.255.1' });
    expect(status.peers).to.have.length(2);
    for (const n of [1, 2]) {
      const peer = status.peers.find((p) => p.name === h.nodeName(n))!;
      expect(peer).to.include({ connected: true, publicKey: rig.cluster.nodeKeys.get(n)!.publicKey });
      expect(peer.endpoint).to.match(/^198\.18\.0\.1:\d+$/); // the NAT router's address
      expect(peer.routes).to.deep.equal(h.nodeRoutes(n).map((r) => r));
      expect(Date.parse(peer.connectedSince!)).to.be.greaterThan(0);
      expect(peer.lastPongMs).to.be.a('number');
      expect(peer.rxBytes).to.be.greaterThan(0);
      expect(peer.txBytes).to.be.greaterThan(0);
      expect(peer.rxPackets).to.be.greaterThan(0);
      expect(peer.txPackets).to.be.greaterThan(0);
      expect(peer.drops).to.be.a('number');
    }
  });

  it('status on a node shows its one peer, the server', async function () {
    const status = await rig.cluster.status(rig.cluster.clientSocket(1));
    expect(status.role).to.equal('client');
    expect(status.peers).to.have.length(1);
    expect(status.peers[0]).to.include({ name: 'server', connected: true, publicKey: rig.cluster.serverKey.publicKey });
    expect(status.peers[0]!.routes).to.deep.equal([rig.h.tunnelCIDR, rig.h.tunnelCIDR6]);
    const table = await runCli(['status', '--admin-socket', rig.cluster.clientSocket(1)]);
    expect(table.code).to.equal(0);
    expect(table.stdout)
      .to.match(/role: client/)
      .and.match(/peer: server/);
  });

  it('a packet for an authorized but offline node is dropped, counted and answered with ICMP unreachable', async function () {
    const { h } = rig;
    await rig.cluster.clients.get(2)!.stop();
    await waitFor(
      'node-2 offline',
      async () => !(await rig.cluster.status()).peers.find((p) => p.name === 'node-2')!.connected,
      10_000,
    );
    const ping = await h.exec(h.ns.cp, ['ping', '-c', '1', '-W', '2', h.podIP(2, 1)], { allowFail: true });
    expect(ping.code).to.not.equal(0);
    expect(ping.stdout + ping.stderr).to.match(/Unreachable/i);
    // The kernel route stays on nl0 while the node is away: nothing leaks to another interface.
    const route = await h.exec(h.ns.cp, ['ip', 'route', 'get', h.podIP(2, 1)]);
    expect(route.stdout).to.contain('dev nl0');
    const peer = (await rig.cluster.status()).peers.find((p) => p.name === 'node-2')!;
    expect(peer.dropsByReason['peer_offline']).to.be.greaterThan(0);
    rig.cluster.startClient(2);
    await rig.cluster.waitConnected([2]);
    expect((await h.curl(h.ns.cp, h.podURL(2, 1), { timeoutS: 5 })).ok).to.equal(true);
  });

  it('an unknown key is rejected, and the client prints the reason and exits non-zero', async function () {
    const { h } = rig;
    const stranger = rig.cluster.makeIdentity('stranger');
    const args = rig.cluster.clientArgs(1, { identity: stranger }).slice(2);
    const result = await runCli([...args.slice(0, -2), '--admin-socket', `${h.dir}/stranger.sock`, '--tun', 'nlx'], {
      ns: h.ns.node(1),
    });
    expect(result.code).to.not.equal(0);
    expect(result.stderr).to.match(/rejected.*not in the server's peers file/);
  });

  it("a route outside the node's allowedIPs is rejected with a reason", async function () {
    const { h } = rig;
    const args = rig.cluster.clientArgs(1, { routes: [...h.nodeRoutes(1), h.podCIDR(2)] }).slice(2);
    const result = await runCli([...args.slice(0, -2), '--admin-socket', `${h.dir}/hijack.sock`, '--tun', 'nlx'], {
      ns: h.ns.node(1),
    });
    expect(result.code).to.not.equal(0);
    expect(result.stderr).to.match(/rejected.*198\.19\.2\.0\/24 is outside allowedIPs/);
    // The legitimate node-1 session was not disturbed.
    expect((await h.curl(h.ns.cp, h.podURL(1, 1), { timeoutS: 5 })).ok).to.equal(true);
  });

  it('a second server on the same port fails with one clear line', async function () {
    const { h } = rig;
    // Peers of its own: the first server's would be refused as another nodelink's routes.
    const peersFile = `${h.dir}/second-peers.json`;
    const peer = {
      name: 'node-x',
      publicKey: rig.cluster.makeIdentity('node-x').publicKey,
      allowedIPs: ['198.19.200.0/24'],
    };
    writeFileSync(peersFile, JSON.stringify({ peers: [peer] }));
    const result = await runCli(
      [
        'server',
        '--listen',
        h.serverEndpoint,
        '--key',
        rig.cluster.serverKey.keyFile,
        '--peers',
        peersFile,
        '--tunnel-cidr',
        '198.18.254.0/24',
        '--tun',
        'nly',
        '--admin-socket',
        `${h.dir}/second.sock`,
      ],
      { ns: h.ns.cp },
    );
    expect(result.code).to.equal(1);
    expect(result.stderr.trim().split('\n')).to.have.length(1);
    expect(result.stderr).to.match(/already in use/);
  });

  it('leaves no namespace, device, route or process behind', async function () {
    const { h } = rig;
    await rig.cluster.stop();
    const servers = [rig.cluster.server!, ...rig.cluster.clients.values()];
    await h.destroy();
    await expectNothingLeft(rig.prefix);
    for (const proc of servers) expect(proc.running).to.equal(false);
  });
});

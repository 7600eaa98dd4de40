// A flat network: no NAT between nodes and control plane, so a node dials the server from its
// own node IP, which lies inside its allowedIPs. The server routes that address into nl0; only
// the rule that sends the server's own TLS traffic (tcp sport <listen port>) to the main table
// keeps its replies out of its own tunnel. Strict rp_filter everywhere, as the hardest case.

import { expect } from 'chai';
import type { Apiserver } from '../../scripts/harness/index.js';
import { OWN_TRAFFIC_RULE_PRIORITY } from '../../src/tun/index.js';
import { clusterRig, killServer, leavesNothingBehind } from '../support/cluster-rig.js';

describe('flat network (no NAT): a node dials the server from an address inside its own allowedIPs', function () {
  this.timeout(120_000);
  const rig = clusterRig({ nodes: 2, nat: false, rpFilter: 1 }, { start: true });
  let api: Apiserver;

  const ruleArgs = (family: 4 | 6, verb: 'add' | 'del'): string[] => [
    'ip',
    `-${family}`,
    'rule',
    verb,
    'priority',
    String(OWN_TRAFFIC_RULE_PRIORITY),
    'ipproto',
    'tcp',
    'sport',
    String(rig.h.serverPort),
    'lookup',
    'main',
    'protocol',
    '78',
  ];

  before(async function () {
    api = await rig.h.startApiserver();
  });

  it('the server sees each node connect from its node IP, which its own routes send into nl0', async function () {
    const { h, cluster } = rig;
    const status = await cluster.status();
    for (const n of [1, 2]) {
      const peer = status.peers.find((p) => p.name === h.nodeName(n))!;
      expect(peer.connected).to.equal(true);
      expect(peer.endpoint).to.match(new RegExp(`^${h.nodeIP(n).replace(/\./g, '\\.')}:\\d+$`));
    }
    const toNode = await h.exec(h.ns.cp, ['ip', 'route', 'get', h.nodeIP(1)]);
    expect(toNode.stdout, "the apiserver's packets for the node").to.match(/dev nl0/);
    const reply = await h.exec(h.ns.cp, [
      'ip',
      'route',
      'get',
      h.nodeIP(1),
      'ipproto',
      'tcp',
      'sport',
      String(h.serverPort),
    ]);
    expect(reply.stdout, "the server's own TLS replies to it").to.match(/via 198\.18\.0\.1 dev eth0/);
  });

  it("the apiserver reaches kubelets and pods through the link, seen from the server's tunnel address", async function () {
    const { h } = rig;
    for (const n of [1, 2]) {
      for (const target of [
        { host: h.nodeIP(n), port: h.kubeletPort, tls: true },
        { host: h.podIP(n, 1), port: 8080, tls: false },
        { host: h.podIP6(n, 1), port: 8080, tls: false },
      ]) {
        const result = await api.dial({ ...target, path: '/whoami', timeoutMs: 5000 });
        expect(result, `${target.host}`).to.include({ ok: true, status: 200 });
        expect(result.body.trim()).to.be.oneOf(['198.18.255.1', 'fd00:18:ff::1']);
      }
    }
  });

  it('without the rule for its own traffic, a node that dials anew never gets a welcome', async function () {
    const { h, cluster } = rig;
    await h.exec(h.ns.cp, ruleArgs(4, 'del'));
    try {
      await cluster.clients.get(2)!.stop();
      const client = cluster.startClient(2);
      await client.waitForOutput('no welcome within', 15_000);
      expect(client.output()).to.not.include('connected to server');
    } finally {
      await h.exec(h.ns.cp, ruleArgs(4, 'add'));
    }
    await cluster.clients.get(2)!.waitForOutput('connected to server', 30_000);
  });

  it('after kill -9 the dial fails at once; a restarted server and its nodes come back on the flat network', async function () {
    const { h, cluster } = rig;
    await killServer(rig);
    const down = await api.dial({ host: h.nodeIP(1), port: h.kubeletPort, tls: true, timeoutMs: 2000 });
    expect(down).to.include({ ok: false, error: 'EHOSTUNREACH' });
    expect(down.ms).to.be.below(100);
    await cluster.startServer();
    await cluster.waitConnected([1, 2], 30_000);
    const up = await api.dial({ host: h.nodeIP(1), port: h.kubeletPort, tls: true, path: '/whoami', timeoutMs: 5000 });
    expect(up).to.include({ ok: true, status: 200 });
  });

  leavesNothingBehind(rig);
});

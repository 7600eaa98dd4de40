// The namespace harness itself: it must build the baseline topology (nodes behind NAT, control plane
// without a path to them) and leave nothing behind. Runs only as root.

import { expect } from 'chai';
import {
  Harness,
  expectedSha256,
  expectedBytes,
  leftovers,
  rootNamespaceViolations,
  listNamespaces,
  url,
} from '../../scripts/harness/index.js';
import { harnessRig, skipUnlessRoot } from '../support/cluster-rig.js';

describe('netns harness', function () {
  this.timeout(60_000);

  describe('a 2-node topology', function () {
    const rig = harnessRig({ nodes: 2 });

    it('names namespaces and addresses as documented', function () {
      const { h } = rig;
      expect(h.prefix).to.match(/^nl[0-9a-f]{5}$/);
      expect(h.ns.cp).to.equal(`${h.prefix}-cp`);
      expect(h.ns.rt).to.equal(`${h.prefix}-rt`);
      expect(h.ns.node(2)).to.equal(`${h.prefix}-n2`);
      expect(h.ns.pod(1, 1)).to.equal(`${h.prefix}-n1p1`);
      expect(h.serverEndpoint).to.equal('198.18.0.2:8443');
      expect(h.nodeIP(1)).to.equal('198.19.0.11');
      expect(h.nodeIP6(1)).to.equal('fd00:19::b');
      expect(h.podIP(2, 1)).to.equal('198.19.2.2');
      expect(h.podIP6(2, 1)).to.equal('fd00:19:2::2');
      expect(h.podCIDR(2)).to.equal('198.19.2.0/24');
      expect(h.podCIDR6(2)).to.equal('fd00:19:2::/64');
      expect(() => h.nodeIP(3)).to.throw(/out of range/);
    });

    it('each node reaches its own kubelet stub over IPv4 and IPv6', async function () {
      const { h } = rig;
      const checks = await Promise.all(
        [1, 2].flatMap((n) => [
          h.curl(h.ns.node(n), h.kubeletURL(n, '/healthz')),
          h.curl(h.ns.node(n), h.kubeletURL(n, '/containerLogs/default/x/y', true)),
        ]),
      );
      expect(checks.map((c) => c.body)).to.deep.equal([
        'ok',
        'kubelet node-1 /containerLogs/default/x/y',
        'ok',
        'kubelet node-2 /containerLogs/default/x/y',
      ]);
    });

    it('each node reaches its pods, and pod bytes are deterministic', async function () {
      const { h } = rig;
      for (const n of [1, 2]) {
        const v4 = await h.curl(h.ns.node(n), h.podURL(n, 1));
        const v6 = await h.curl(h.ns.node(n), h.podURL(n, 1, '/', true));
        expect(v4.body).to.equal(`pod node-${n}/pod-1`);
        expect(v6.body).to.equal(`pod node-${n}/pod-1`);
      }
      const size = 1_000_003;
      const bytes = await h.curl(h.ns.node(1), h.podURL(1, 1, `/bytes/${size}`));
      expect(bytes.ok).to.equal(true);
      expect(bytes.bytes).to.equal(size);
      expect(bytes.sha256).to.equal(expectedSha256(size));
      const remote = await h.curl(h.ns.node(1), h.podURL(1, 1, `/sha256/${size}`));
      expect(remote.body).to.equal(expectedSha256(size));
      expect(expectedBytes(100).subarray(0, 100).length).to.equal(100);
    });

    it('the control plane cannot reach node IPs, node IPv6 or pod IPs', async function () {
      const { h } = rig;
      const cp = h.ns.cp;
      const targets = [
        h.kubeletURL(1),
        h.kubeletURL(2),
        h.kubeletURL(1, '/healthz', true),
        h.kubeletURL(2, '/healthz', true),
        h.podURL(1, 1),
        h.podURL(2, 1),
        h.podURL(1, 1, '/', true),
      ];
      const results = await Promise.all(targets.map((url) => h.curl(cp, url, { timeoutS: 2 })));
      results.forEach((r, i) => expect(r.ok, `cp reached ${targets[i]}`).to.equal(false));
      const pings = await Promise.all(
        [h.nodeIP(1), h.nodeIP6(1), h.podIP(1, 1)].map((a) => h.ping(cp, a, { timeoutS: 1 })),
      );
      expect(pings).to.deep.equal([false, false, false]);
      const routes = await h.exec(cp, ['ip', 'route', 'show', 'table', 'all']);
      expect(routes.stdout).not.to.match(/198\.19\./);
    });

    it('the router drops new connections from the control plane even when it has a route', async function () {
      const { h } = rig;
      const cp = h.ns.cp;
      await h.exec(cp, ['ip', 'route', 'add', '198.19.0.0/16', 'via', h.natAddress]);
      await h.exec(cp, ['ip', '-6', 'route', 'add', 'fd00:19::/48', 'via', h.natAddress6]);
      try {
        const [v4, v6] = await Promise.all([
          h.curl(cp, h.kubeletURL(1), { timeoutS: 2 }),
          h.curl(cp, h.podURL(2, 1, '/', true), { timeoutS: 2 }),
        ]);
        expect(v4.ok).to.equal(false);
        expect(v6.ok).to.equal(false);
      } finally {
        await h.exec(cp, ['ip', 'route', 'del', '198.19.0.0/16'], { allowFail: true });
        await h.exec(cp, ['ip', '-6', 'route', 'del', 'fd00:19::/48'], { allowFail: true });
      }
    });

    it('nodes and pods reach the control plane through the masquerading router', async function () {
      const { h } = rig;
      const server = await h.startStub(h.ns.cp, 'pod', 'cp-probe', h.serverPort);
      try {
        const fromNode = await h.curl(h.ns.node(1), url('http', h.cpAddress, h.serverPort, '/whoami'));
        const fromNode6 = await h.curl(h.ns.node(2), url('http', h.cpAddress6, h.serverPort, '/whoami'));
        const fromPod = await h.curl(h.ns.pod(2, 1), url('http', h.cpAddress, h.serverPort, '/whoami'));
        expect(fromNode.body).to.equal(h.natAddress);
        expect(fromNode6.body).to.equal(h.natAddress6);
        expect(fromPod.body).to.equal(h.natAddress);
        expect(await h.ping(h.ns.node(1), h.cpAddress)).to.equal(true);
      } finally {
        await server.stop();
      }
      expect(server.running).to.equal(false);
    });

    it('stop() escalates to SIGKILL for a process that ignores SIGTERM', async function () {
      const { h } = rig;
      const stubborn = h.spawn(
        h.ns.node(1),
        [
          process.execPath,
          '-e',
          "process.on('SIGTERM', () => console.log('ignored')); console.log('ready'); setInterval(() => {}, 1000)",
        ],
        { name: 'stubborn' },
      );
      await stubborn.waitForOutput('ready', 5000);
      const exit = await stubborn.stop('SIGTERM', 300);
      expect(exit.signal).to.equal('SIGKILL');
      expect(stubborn.output()).to.include('ignored');
    });

    it('destroy() leaves no namespace, process or root-namespace route behind', async function () {
      const { h } = rig;
      const pids = h.processes.map((p) => p.pid);
      expect(pids.length).to.be.greaterThan(0);
      await h.destroy();
      await h.destroy(); // idempotent
      expect(await leftovers(rig.prefix)).to.deep.equal([]);
      const names = await listNamespaces();
      expect(names.filter((n) => n.startsWith(rig.prefix))).to.deep.equal([]);
      expect(await rootNamespaceViolations()).to.deep.equal([]);
      for (const pid of pids) expect(() => process.kill(pid, 0), `pid ${pid} still alive`).to.throw();
      expect(() => h.spawn(h.ns.cp, ['true'])).to.throw(/destroyed/);
    });
  });

  describe('a failed create()', function () {
    it('removes what it built and leaves foreign namespaces alone', async function () {
      skipUnlessRoot(this);
      const prefix = `nlfail${Math.floor(Math.random() * 0xfffff).toString(16)}`;
      const { execFileSync } = await import('node:child_process');
      const foreign = `${prefix}-n2`; // collides with the harness's second node
      execFileSync('ip', ['netns', 'add', foreign]);
      try {
        let error: unknown;
        try {
          await Harness.create({ nodes: 2, prefix });
        } catch (e) {
          error = e;
        }
        expect(String(error)).to.match(/netns add/);
        expect(await leftovers(prefix)).to.deep.equal([`netns ${foreign}`]);
      } finally {
        execFileSync('ip', ['netns', 'del', foreign]);
      }
      expect(await leftovers(prefix)).to.deep.equal([]);
    });
  });
});

// The namespace harness itself: it must build the SPEC's baseline (nodes behind NAT, control plane
// without a path to them) and leave nothing behind. Runs only as root.

import { expect } from 'chai';
import { Harness } from '../../scripts/harness.js';
import { skipUnlessRoot } from './root.js';

describe('netns harness', function () {
  this.timeout(60_000);

  describe('a 2-node topology', function () {
    let h: Harness | undefined;
    let prefix = '';

    before(async function () {
      skipUnlessRoot(this);
      h = await Harness.create({ nodes: 2 });
      prefix = h.prefix;
    });

    after(async function () {
      await h?.destroy();
    });

    const harness = (): Harness => {
      if (!h) throw new Error('harness not created');
      return h;
    };

    it('names namespaces and addresses as documented', function () {
      const t = harness();
      expect(t.prefix).to.match(/^nl[0-9a-f]{5}$/);
      expect(t.ns.cp).to.equal(`${t.prefix}-cp`);
      expect(t.ns.rt).to.equal(`${t.prefix}-rt`);
      expect(t.ns.node(2)).to.equal(`${t.prefix}-n2`);
      expect(t.ns.pod(1, 1)).to.equal(`${t.prefix}-n1p1`);
      expect(t.serverEndpoint).to.equal('198.18.0.2:8443');
      expect(t.nodeIP(1)).to.equal('198.19.0.11');
      expect(t.nodeIP6(1)).to.equal('fd00:19::b');
      expect(t.podIP(2, 1)).to.equal('198.19.2.2');
      expect(t.podIP6(2, 1)).to.equal('fd00:19:2::2');
      expect(t.podCIDR(2)).to.equal('198.19.2.0/24');
      expect(t.podCIDR6(2)).to.equal('fd00:19:2::/64');
      expect(() => t.nodeIP(3)).to.throw(/out of range/);
    });

    it('each node reaches its own kubelet stub over IPv4 and IPv6', async function () {
      const t = harness();
      const checks = await Promise.all(
        [1, 2].flatMap((n) => [
          t.curl(t.ns.node(n), t.kubeletURL(n, '/healthz')),
          t.curl(t.ns.node(n), t.kubeletURL(n, '/containerLogs/default/x/y', true)),
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
      const t = harness();
      for (const n of [1, 2]) {
        const v4 = await t.curl(t.ns.node(n), t.podURL(n, 1));
        const v6 = await t.curl(t.ns.node(n), t.podURL(n, 1, '/', true));
        expect(v4.body).to.equal(`pod node-${n}/pod-1`);
        expect(v6.body).to.equal(`pod node-${n}/pod-1`);
      }
      const size = 1_000_003;
      const bytes = await t.curl(t.ns.node(1), t.podURL(1, 1, `/bytes/${size}`));
      expect(bytes.ok).to.equal(true);
      expect(bytes.bytes).to.equal(size);
      expect(bytes.sha256).to.equal(Harness.expectedSha256(size));
      const remote = await t.curl(t.ns.node(1), t.podURL(1, 1, `/sha256/${size}`));
      expect(remote.body).to.equal(Harness.expectedSha256(size));
      expect(Harness.expectedBytes(100).subarray(0, 100).length).to.equal(100);
    });

    it('the control plane cannot reach node IPs, node IPv6 or pod IPs', async function () {
      const t = harness();
      const cp = t.ns.cp;
      const targets = [
        t.kubeletURL(1),
        t.kubeletURL(2),
        t.kubeletURL(1, '/healthz', true),
        t.kubeletURL(2, '/healthz', true),
        t.podURL(1, 1),
        t.podURL(2, 1),
        t.podURL(1, 1, '/', true),
      ];
      const results = await Promise.all(targets.map((url) => t.curl(cp, url, { timeoutS: 2 })));
      results.forEach((r, i) => expect(r.ok, `cp reached ${targets[i]}`).to.equal(false));
      const pings = await Promise.all(
        [t.nodeIP(1), t.nodeIP6(1), t.podIP(1, 1)].map((a) => t.ping(cp, a, { timeoutS: 1 })),
      );
      expect(pings).to.deep.equal([false, false, false]);
      const routes = await t.exec(cp, ['ip', 'route', 'show', 'table', 'all']);
      expect(routes.stdout).not.to.match(/198\.19\./);
    });

    it('the router drops new connections from the control plane even when it has a route', async function () {
      const t = harness();
      const cp = t.ns.cp;
      await t.exec(cp, ['ip', 'route', 'add', '198.19.0.0/16', 'via', t.natAddress]);
      await t.exec(cp, ['ip', '-6', 'route', 'add', 'fd00:19::/48', 'via', t.natAddress6]);
      try {
        const [v4, v6] = await Promise.all([
          t.curl(cp, t.kubeletURL(1), { timeoutS: 2 }),
          t.curl(cp, t.podURL(2, 1, '/', true), { timeoutS: 2 }),
        ]);
        expect(v4.ok).to.equal(false);
        expect(v6.ok).to.equal(false);
      } finally {
        await t.exec(cp, ['ip', 'route', 'del', '198.19.0.0/16'], { allowFail: true });
        await t.exec(cp, ['ip', '-6', 'route', 'del', 'fd00:19::/48'], { allowFail: true });
      }
    });

    it('nodes and pods reach the control plane through the masquerading router', async function () {
      const t = harness();
      const server = await t.startStub(t.ns.cp, 'pod', 'cp-probe', t.serverPort);
      try {
        const fromNode = await t.curl(t.ns.node(1), Harness.url('http', t.cpAddress, t.serverPort, '/whoami'));
        const fromNode6 = await t.curl(t.ns.node(2), Harness.url('http', t.cpAddress6, t.serverPort, '/whoami'));
        const fromPod = await t.curl(t.ns.pod(2, 1), Harness.url('http', t.cpAddress, t.serverPort, '/whoami'));
        expect(fromNode.body).to.equal(t.natAddress);
        expect(fromNode6.body).to.equal(t.natAddress6);
        expect(fromPod.body).to.equal(t.natAddress);
        expect(await t.ping(t.ns.node(1), t.cpAddress)).to.equal(true);
      } finally {
        await server.stop();
      }
      expect(server.running).to.equal(false);
    });

    it('stop() escalates to SIGKILL for a process that ignores SIGTERM', async function () {
      const t = harness();
      const stubborn = t.spawn(
        t.ns.node(1),
        [
          process.execPath,
          '-e',
          "process.on('SIGTERM', () => console.log('ignored')); console.log('ready'); setInterval(() => {}, 1000)",
        ],
        { name: 'stubborn' },
      );
      await t.waitForOutput(stubborn, 'ready', 5000);
      const exit = await stubborn.stop('SIGTERM', 300);
      expect(exit.signal).to.equal('SIGKILL');
      expect(stubborn.output()).to.include('ignored');
    });

    it('destroy() leaves no namespace, process or root-namespace route behind', async function () {
      const t = harness();
      const pids = t.processes.map((p) => p.pid);
      expect(pids.length).to.be.greaterThan(0);
      await t.destroy();
      await t.destroy(); // idempotent
      expect(await Harness.leftovers(prefix)).to.deep.equal([]);
      const names = await Harness.listNamespaces();
      expect(names.filter((n) => n.startsWith(prefix))).to.deep.equal([]);
      expect(await Harness.rootNamespaceViolations()).to.deep.equal([]);
      for (const pid of pids) expect(() => process.kill(pid, 0), `pid ${pid} still alive`).to.throw();
      expect(() => t.spawn(t.ns.cp, ['true'])).to.throw(/destroyed/);
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
        expect(await Harness.leftovers(prefix)).to.deep.equal([`netns ${foreign}`]);
      } finally {
        execFileSync('ip', ['netns', 'del', foreign]);
      }
      expect(await Harness.leftovers(prefix)).to.deep.equal([]);
    });
  });
});

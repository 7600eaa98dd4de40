// MTU: full-size packets with DF set cross in both directions, and what happens above the MTU is
// defined: with DF the sender is told the MTU (a local EMSGSIZE on the host that owns the TUN, an
// ICMP "fragmentation needed" / "packet too big" for a pod routed through it); without DF the
// kernel fragments before the TUN and the far end reassembles. Checked at the default MTU and at
// 1420 (a pod's 1500-byte packets exceed it), and with the two ends on different MTUs.

import { expect } from 'chai';
import { expectedSha256 } from '../../scripts/harness/index.js';
import { NodelinkCluster } from '../../scripts/cluster.js';
import { DEFAULTS } from '../../src/cli/config.js';
import { expectNothingLeft, harnessRig } from '../support/cluster-rig.js';
import { report } from './util.js';

const IPV4_HEADERS = 28; // IPv4 20 + ICMP 8
const IPV6_HEADERS = 48; // IPv6 40 + ICMPv6 8
const MAX_PING_PAYLOAD_V4 = 65_507;

describe('faults: MTU', function () {
  this.timeout(120_000);
  const rig = harnessRig({ nodes: 1 });
  let cluster: NodelinkCluster | undefined;

  afterEach(async function () {
    await cluster?.stop();
    cluster = undefined;
  });

  async function mtuOf(ns: string): Promise<number> {
    const out = await rig.h.exec(ns, ['ip', '-j', 'link', 'show', 'dev', 'nl0']);
    return (JSON.parse(out.stdout) as Array<{ mtu: number }>)[0]!.mtu;
  }

  /** ping with DF; returns exit code and all output. */
  async function dfPing(ns: string, addr: string, size: number, df = true): Promise<{ ok: boolean; text: string }> {
    const args = ['ping', '-n', '-c', '2', '-i', '0.2', '-W', '2', '-M', df ? 'do' : 'dont', '-s', String(size)];
    if (addr.includes(':')) args.push('-6');
    const r = await rig.h.exec(ns, [...args, addr], { allowFail: true });
    return { ok: r.code === 0, text: r.stdout + r.stderr };
  }

  for (const mtu of [DEFAULTS.mtu, 1420]) {
    it(`--mtu ${mtu}: full-size DF packets cross both ways; above the MTU is defined`, async function () {
      const { h } = rig;
      // Node → server pings are flows a node opens: this suite checks MTU handling in both
      // directions, so it lets them through (the flow filter has test/netns/node-initiated.test.ts).
      const allow = { extraServerArgs: ['--allow-node-initiated'] };
      cluster = new NodelinkCluster(h, mtu === DEFAULTS.mtu ? allow : { ...allow, mtu });
      await cluster.up();
      expect(await mtuOf(h.ns.cp)).to.equal(mtu);
      expect(await mtuOf(h.ns.node(1))).to.equal(mtu);
      const server4 = '198.18.255.1';
      const server6 = 'fd00:18:ff::1';
      // Full size, DF, both directions, both families.
      for (const [from, to] of [
        [h.ns.cp, h.nodeIP(1)],
        [h.ns.node(1), server4],
      ] as const) {
        const r = await dfPing(from, to, mtu - IPV4_HEADERS);
        expect(r.ok, `${from} → ${to} at ${mtu} bytes with DF: ${r.text}`).to.equal(true);
      }
      for (const [from, to] of [
        [h.ns.cp, h.nodeIP6(1)],
        [h.ns.node(1), server6],
      ] as const) {
        const r = await dfPing(from, to, mtu - IPV6_HEADERS);
        expect(r.ok, `${from} → ${to} at ${mtu} bytes (v6): ${r.text}`).to.equal(true);
      }
      // One byte over with DF on the host that owns the TUN: refused locally, naming the MTU.
      const over = await dfPing(h.ns.cp, h.nodeIP(1), mtu - IPV4_HEADERS + 1);
      expect(over.ok).to.equal(false);
      expect(over.text).to.match(new RegExp(`message too long, mtu[= ]+${mtu}`, 'i'));
      // Over the MTU without DF: fragmented before the TUN, reassembled at the far end.
      const big = Math.min(mtu * 2, MAX_PING_PAYLOAD_V4 - 100);
      if (big > mtu - IPV4_HEADERS) {
        for (const [from, to] of [
          [h.ns.cp, h.nodeIP(1)],
          [h.ns.node(1), server4],
        ] as const) {
          const r = await dfPing(from, to, big, false);
          expect(r.ok, `${from} → ${to} ${big} bytes without DF: ${r.text}`).to.equal(true);
        }
      }
      // A pod (eth0 MTU 1500) routed through the node: when its packet exceeds the TUN MTU the
      // node answers "fragmentation needed" with the MTU, so PMTU discovery works.
      if (mtu < 1500) {
        const pod = await dfPing(h.ns.pod(1, 1), server4, 1500 - IPV4_HEADERS);
        expect(pod.ok).to.equal(false);
        expect(pod.text).to.match(new RegExp(`Frag needed and DF set \\(mtu = ${mtu}\\)`));
        const pod6 = await dfPing(h.ns.pod(1, 1), server6, 1500 - IPV6_HEADERS);
        expect(pod6.ok).to.equal(false);
        expect(pod6.text).to.match(new RegExp(`Packet too big: mtu=${mtu}`));
        // Then TCP from the pod still works (MSS and PMTU do their job).
        const curl = await h.curl(h.ns.cp, h.podURL(1, 1, '/bytes/1000000'), { timeoutS: 10 });
        expect(curl.ok && curl.sha256 === expectedSha256(1_000_000), curl.error).to.equal(true);
      }
      report(
        `--mtu ${mtu}: DF ${mtu}-byte packets cross both ways (v4, v6); ${mtu + 1} with DF → "message too long, mtu=${mtu}"`,
      );
    });
  }

  it('ends on different MTUs (server default, node 1420): TCP and large pings still work', async function () {
    const { h } = rig;
    cluster = new NodelinkCluster(h);
    await cluster.startServer();
    cluster.startClient(1, ['--mtu', '1420'], 'nodelink-client-1-mtu1420');
    await cluster.waitConnected([1]);
    expect(await mtuOf(h.ns.node(1))).to.equal(1420);
    const size = 4 * 1024 * 1024;
    const kubelet = await h.curl(h.ns.cp, h.kubeletURL(1, `/bytes/${size}`), { timeoutS: 20 });
    expect(kubelet.ok, kubelet.error).to.equal(true);
    expect(kubelet.sha256).to.equal(expectedSha256(size));
    const ping = await dfPing(h.ns.cp, h.nodeIP(1), 8000, false);
    expect(ping.ok, ping.text).to.equal(true);
    report('server MTU 65000 / node MTU 1420: 4 MiB from the kubelet intact, 8000-byte pings answered');
  });

  it('leaves nothing behind', async function () {
    await rig.h.destroy();
    await expectNothingLeft(rig.prefix);
  });
});

// Does a larger TUN MTU help kubelet traffic? The TLS stream carries any packet size, so the MTU
// only sets how many packets (TUN reads, frames, kernel passes) a byte costs. Measured with
// kubelet-style HTTPS downloads from the node itself (hostNetwork: its TCP MSS follows the TUN
// MTU) and HTTP from a pod (eth0 MTU 1500: its MSS stays 1460 whatever the TUN MTU). Figures only;
// the one assertion is that every transfer arrives intact. Runs under npm run test:faults.

import { expect } from 'chai';
import { expectedSha256 } from '../../scripts/harness/index.js';
import { NodelinkCluster } from '../../scripts/cluster.js';
import { expectNothingLeft, harnessRig } from '../support/cluster-rig.js';
import { MiB, cpuSeconds, mbit, report } from './util.js';

const SIZE = 128 * MiB;
const ROUNDS = 3;

describe('faults: TUN MTU and kubelet transfer speed (figures)', function () {
  this.timeout(600_000);
  const rig = harnessRig({ nodes: 1 });

  interface Figures {
    rates: number[];
    cpuPerGB: number | undefined;
  }

  /** Transfer rates, and the CPU the nodelink processes (pids) spent per GB moved. */
  async function measure(ns: string, url: string, pids: number[] = []): Promise<Figures> {
    const { h } = rig;
    const rates: number[] = [];
    const cpuBefore = pids.reduce((sum, pid) => sum + cpuSeconds(pid), 0);
    for (let round = 0; round < ROUNDS; round++) {
      const started = Date.now();
      const result = await h.curl(ns, url, { timeoutS: 120 });
      const ms = Date.now() - started;
      expect(result.ok, result.error).to.equal(true);
      expect(result.sha256).to.equal(expectedSha256(SIZE));
      rates.push(mbit(SIZE, ms));
    }
    const cpu = pids.reduce((sum, pid) => sum + cpuSeconds(pid), 0) - cpuBefore;
    return {
      rates: rates.sort((a, b) => a - b),
      cpuPerGB: pids.length > 0 ? cpu / ((SIZE * ROUNDS) / 1e9) : undefined,
    };
  }

  const summary = ({ rates, cpuPerGB }: Figures): string =>
    `median ${rates[Math.floor(rates.length / 2)]!.toFixed(0)} Mbit/s ` +
    `(${rates.map((r) => r.toFixed(0)).join('/')})${cpuPerGB === undefined ? '' : `, nodelink CPU ${cpuPerGB.toFixed(1)} s/GB`}`;

  it('underlay reference: the router fetches straight from kubelet and pod', async function () {
    const { h } = rig;
    const kubelet = await measure(h.ns.rt, h.kubeletURL(1, `/bytes/${SIZE}`));
    const pod = await measure(h.ns.rt, h.podURL(1, 1, `/bytes/${SIZE}`));
    report(`underlay (no tunnel): kubelet HTTPS ${summary(kubelet)}; pod HTTP ${summary(pod)}`);
  });

  for (const mtu of [1420, 9000, 65000]) {
    it(`--mtu ${mtu}: 128 MiB from the kubelet (HTTPS) and from a pod (HTTP)`, async function () {
      const { h } = rig;
      const cluster = new NodelinkCluster(h, { mtu });
      try {
        await cluster.up();
        const pids = [cluster.server!.pid, cluster.clients.get(1)!.pid];
        const kubelet = await measure(h.ns.cp, h.kubeletURL(1, `/bytes/${SIZE}`), pids);
        const pod = await measure(h.ns.cp, h.podURL(1, 1, `/bytes/${SIZE}`), pids);
        report(`--mtu ${mtu}: kubelet HTTPS ${summary(kubelet)}; pod HTTP ${summary(pod)}`);
      } finally {
        await cluster.stop();
      }
    });
  }

  it('leaves nothing behind', async function () {
    await rig.h.destroy();
    await expectNothingLeft(rig.prefix);
  });
});

// Underlay faults under a running transfer: a 10 s link flap, a flush of the NAT router's
// connection tracking (its NAT bindings are forgotten), and a bandwidth limit. The link survives
// or recovers on its own, and every byte of the transfer arrives intact (sha256).

import { expect } from 'chai';
import { type CurlResult, expectedSha256 } from '../../scripts/harness/index.js';
import { MiB, mbit, peer, report, faultRig } from './util.js';
import { leavesNothingBehind } from '../support/cluster-rig.js';
import { setTimeout as sleep } from 'node:timers/promises';
import { waitFor } from '../support/wait.js';

/** curl's --limit-rate: keeps the transfer in flight across the fault however fast the link is. */
const RATE = '2M';

describe('faults: link flap, NAT state flush, bandwidth limit', function () {
  this.timeout(120_000);
  const rig = faultRig({ nodes: 2 });

  function download(size: number, timeoutS: number, rate?: string): Promise<CurlResult> {
    const { h } = rig;
    return h.curl(h.ns.cp, h.podURL(1, 1, `/bytes/${size}`), { timeoutS, args: rate ? ['--limit-rate', rate] : [] });
  }

  function expectIntact(result: CurlResult, size: number): void {
    expect(result.ok, `transfer: ${result.error}`).to.equal(true);
    expect(result.bytes).to.equal(size);
    expect(result.sha256).to.equal(expectedSha256(size));
  }

  async function pingable(n: number): Promise<boolean> {
    return rig.h.ping(rig.h.ns.cp, rig.h.nodeIP(n), { timeoutS: 1 });
  }

  /**
   * A 16 MiB transfer from node 1's pod, rate-limited so that it is still running when `fault`
   * strikes `startAfterMs` into it: node 1 answers ping again, every byte arrives intact, and the
   * report says how long the node took to answer and whether its session survived.
   */
  async function acrossFault(run: {
    startAfterMs: number;
    fault: () => Promise<unknown>;
    waitingFor: string;
    answers: (ms: number) => string;
  }): Promise<void> {
    const size = 16 * MiB;
    const before = await peer(rig.cluster, 1);
    const transfer = download(size, 90, RATE);
    await sleep(run.startAfterMs);
    await run.fault();
    const pingMs = await waitFor(run.waitingFor, () => pingable(1), 30_000);
    const result = await transfer;
    expectIntact(result, size);
    const after = await peer(rig.cluster, 1);
    const survived = after!.connectedSince === before!.connectedSince;
    report(
      `${run.answers(pingMs)}; session ${survived ? 'survived' : 'was re-established'}; ` +
        `16 MiB transfer across it intact`,
    );
  }

  it('a 10 s link flap: the link recovers and a transfer across it arrives intact', async function () {
    const { h } = rig;
    await acrossFault({
      startAfterMs: 1000,
      fault: async () => {
        await rig.underlay.link(1, false);
        await sleep(10_000);
        await rig.underlay.link(1, true);
      },
      waitingFor: 'node-1 to answer again',
      answers: (ms) => `10 s flap: node answers ${ms} ms after the link is back`,
    });
    expect(await h.ping(h.ns.cp, h.podIP(1, 1), { timeoutS: 3 })).to.equal(true);
  });

  it("a flush of the router's NAT state: the link recovers and a transfer across it arrives intact", async function () {
    await acrossFault({
      startAfterMs: 2000,
      fault: () => rig.underlay.flushConntrack(),
      waitingFor: 'node-1 to answer after the flush',
      answers: (ms) => `conntrack -F in the router: node answers ${ms} ms later`,
    });
    // Node 2's session went through the same NAT: it comes back too, on its own backoff.
    await waitFor('node-2 to answer after the flush', () => pingable(2), 15_000);
  });

  it('a 10 Mbit/s bandwidth limit: the link stays up and a transfer runs at the limit, intact', async function () {
    const { h } = rig;
    const size = 8 * MiB;
    const before = await peer(rig.cluster, 1);
    await rig.underlay.limit('cp0', 10); // router → control plane: everything the nodes send
    try {
      const started = Date.now();
      const transfer = download(size, 60);
      await sleep(3000);
      const during = await peer(rig.cluster, 1);
      const result = await transfer;
      const ms = Date.now() - started;
      expectIntact(result, size);
      const rate = mbit(size, ms);
      const after = await peer(rig.cluster, 1);
      report(
        `tbf 10 Mbit/s: 8 MiB in ${(ms / 1000).toFixed(1)} s = ${rate.toFixed(1)} Mbit/s, intact; ` +
          `RTT under load ${during!.lastPongMs?.toFixed(1)} ms`,
      );
      expect(rate).to.be.within(5, 11);
      expect(after!.connectedSince, 'no reconnect under the limit').to.equal(before!.connectedSince);
    } finally {
      await rig.underlay.unlimit('cp0');
    }
    expect(await h.ping(h.ns.cp, h.nodeIP(1), { timeoutS: 3 })).to.equal(true);
  });

  leavesNothingBehind(rig);
});

// Random loss in the underlay (nft numgen in the router, both directions): large transfers from a
// pod still arrive intact (sha256) at 5% and 20% loss, and the figures say how fast. The outer
// TCP stream hides the loss from the packets inside it (they see delay, never loss), so the
// inner TCP does not back off; the outer one does. Long: runs under npm run test:faults only.

import { expect } from 'chai';
import { expectedSha256 } from '../../scripts/harness/index.js';
import { MiB, mbit, peer, report, faultRig } from './util.js';
import { leavesNothingBehind } from '../support/cluster-rig.js';

describe('faults: random loss in the underlay', function () {
  this.timeout(600_000);
  const rig = faultRig({ nodes: 1 });

  const cases: Array<{ percent: number; size: number; timeoutS: number }> = [
    { percent: 0, size: 64 * MiB, timeoutS: 60 },
    { percent: 5, size: 64 * MiB, timeoutS: 240 },
    { percent: 20, size: 32 * MiB, timeoutS: 400 },
  ];

  for (const { percent, size, timeoutS } of cases) {
    it(`${percent}% loss: ${size / MiB} MiB from a pod arrive intact`, async function () {
      const { h } = rig;
      if (percent > 0) await rig.underlay.loss(percent);
      try {
        const before = await peer(rig.cluster, 1);
        const started = Date.now();
        const result = await h.curl(h.ns.cp, h.podURL(1, 1, `/bytes/${size}`), { timeoutS });
        const ms = Date.now() - started;
        expect(result.ok, result.error).to.equal(true);
        expect(result.bytes).to.equal(size);
        expect(result.sha256).to.equal(expectedSha256(size));
        const after = await peer(rig.cluster, 1);
        const reconnected = after?.connectedSince !== before?.connectedSince;
        report(
          `${percent}% loss: ${size / MiB} MiB in ${(ms / 1000).toFixed(1)} s = ${mbit(size, ms).toFixed(1)} Mbit/s, sha256 intact; ` +
            `session ${reconnected ? 're-established during the transfer' : 'stayed up'}; RTT now ${after?.lastPongMs?.toFixed(1)} ms`,
        );
      } finally {
        await rig.underlay.clear();
      }
    });
  }

  leavesNothingBehind(rig);
});

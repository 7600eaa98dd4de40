// Property-based tests (fast-check) of every parser that reads attacker-controlled bytes: the
// frame decoder, the hello parser, the packet parser with the ICMP builder and prefix table,
// and the peers file. The same properties run a million times in `npm run fuzz`.

import fc from 'fast-check';
import { expect } from 'chai';
import { mutate, targets } from '../../scripts/fuzz-targets.js';

describe('properties (fast-check; npm run fuzz runs these at scale)', function () {
  this.timeout(30_000);

  for (const target of targets) {
    it(target.name, function () {
      fc.assert(target.property, { numRuns: Math.max(40, Math.round(300 * target.weight)) });
    });
  }

  it('mutate applies every kind of mutation without throwing, at any position', function () {
    const input = Buffer.from([1, 2, 3, 4, 5, 6, 7, 8]);
    expect(mutate(input, [{ kind: 'flip', at: 9, bit: 0 }])[1]).to.equal(3);
    expect(mutate(input, [{ kind: 'truncate', at: 3 }])).to.have.length(3);
    expect(mutate(input, [{ kind: 'u32', at: 0, value: 0xffffffff }]).readUInt32BE(0)).to.equal(0xffffffff);
    expect(
      mutate(Buffer.alloc(0), [
        { kind: 'u16', at: 5, value: 1 },
        { kind: 'set', at: 1, value: 1 },
        { kind: 'delete', at: 0, count: 3 },
      ]),
    ).to.have.length(0);
  });
});

// The pure parts of src/tun: reading iproute2's JSON output, and how a tool's failure is told.

import { expect } from 'chai';
import { TunError, routeDestinations } from '../../src/tun/index.js';
import { runTool } from '../../src/tun/exec.js';

describe('routeDestinations (ip -j route show)', function () {
  it('gives host routes their full length and keeps network routes as printed', function () {
    const json = JSON.stringify([
      { dst: '198.18.255.0/24', dev: 'nl0', protocol: 'kernel', scope: 'link' },
      { dst: '198.19.0.11', dev: 'nl0', scope: 'link' },
      { dst: 'fd00:19::b', dev: 'nl0', metric: 1024 },
      { dst: 'fd00:19:1::/64', dev: 'nl0', metric: 1024 },
    ]);
    expect(routeDestinations(json)).to.deep.equal([
      '198.18.255.0/24',
      '198.19.0.11/32',
      'fd00:19::b/128',
      'fd00:19:1::/64',
    ]);
  });

  it('leaves out the default route, and reads empty output as no routes', function () {
    expect(routeDestinations(JSON.stringify([{ dst: 'default', gateway: '198.19.0.1', dev: 'eth0' }]))).to.deep.equal(
      [],
    );
    expect(routeDestinations('')).to.deep.equal([]);
    expect(routeDestinations('[]')).to.deep.equal([]);
  });
});

describe('runTool (the one runner for ip and nft)', function () {
  async function failure(run: Promise<unknown>): Promise<TunError> {
    const err = await run.then(
      () => undefined,
      (e: unknown) => e,
    );
    expect(err).to.be.instanceOf(TunError);
    return err as TunError;
  }

  it('resolves with stdout and feeds input on stdin', async function () {
    expect(await runTool('cat', [], { code: 'tool', timeoutMs: 5_000, input: 'fed\n' })).to.equal('fed\n');
  });

  it('names a failure in one line: the command, then the first line of stderr', async function () {
    const err = await failure(
      runTool('sh', ['-c', 'echo first >&2; echo second >&2; exit 3'], { code: 'tool', timeoutMs: 5_000 }),
    );
    expect(err.code).to.equal('tool');
    expect(err.message).to.equal('sh -c echo first >&2; echo second >&2; exit 3 failed: first');
  });

  it('uses the label in place of the command when one is given', async function () {
    const err = await failure(
      runTool('sh', ['-c', 'echo why >&2; exit 1'], { code: 'tool', label: 'sh -batch', timeoutMs: 5_000 }),
    );
    expect(err.message).to.equal('sh -batch failed: why');
  });

  it('raises the missing error for an absent tool, and the one-line failure without one', async function () {
    const absent = 'nodelink-no-such-tool';
    const missing = await failure(
      runTool(absent, [], { code: 'tool', timeoutMs: 5_000, missing: () => new TunError('tool_missing', 'not here') }),
    );
    expect(missing.code).to.equal('tool_missing');
    expect(missing.message).to.equal('not here');
    const plain = await failure(runTool(absent, ['x'], { code: 'tool', timeoutMs: 5_000 }));
    expect(plain.code).to.equal('tool');
    expect(plain.message).to.match(new RegExp(`^${absent} x failed: spawn ${absent} ENOENT$`));
  });
});

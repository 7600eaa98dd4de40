// The fault-handling flags reach the config through the real CLI (yargs runs in strict mode, so
// a flag missing from main.ts is refused as unknown).

import { expect } from 'chai';
import { runCli } from '../../scripts/cluster.js';

describe('CLI: reconnect and keepalive flags', function () {
  this.timeout(20_000);
  const base = ['client', '--name', 'node-1', '--route', '198.19.0.11/32'];

  it('accepts --backoff-base-ms and --backoff-cap-ms and validates them', async function () {
    const result = await runCli([...base, '--backoff-base-ms', '200', '--backoff-cap-ms', '100']);
    expect(result.code).to.equal(1);
    expect(result.stderr.trim().split('\n')).to.have.length(1);
    expect(result.stderr).to.match(/--backoff-cap-ms must be a whole number from 200 to/);
  });

  it('rejects a dead-peer timeout not longer than the keepalive interval', async function () {
    const result = await runCli([...base, '--keepalive-ms', '2000', '--dead-after-ms', '2000']);
    expect(result.code).to.equal(1);
    expect(result.stderr).to.match(/--dead-after-ms must be longer than --keepalive-ms/);
  });

  it('lists the backoff flags in client --help', async function () {
    const result = await runCli(['client', '--help']);
    expect(result.stdout).to.contain('--backoff-base-ms').and.contain('--backoff-cap-ms');
  });
});

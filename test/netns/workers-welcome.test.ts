// A server of two workers (--workers 2) claims a node's routes into the welcoming worker's TUN
// before the Welcome goes out: a node dialing again while its previous session (in the other
// worker) is still open finds, at the very moment it reads its Welcome, its address already
// routed into the TUN of the worker that welcomed it, not the other worker's or the first
// worker's offline route. A hand-spoken node (workers-welcome-probe.ts) reads the control
// plane's route when its Welcome arrives.
import { expect } from 'chai';
import path from 'node:path';
import { clusterRig, leavesNothingBehind } from '../support/cluster-rig.js';

const PROBE = path.join(path.dirname(new URL(import.meta.url).pathname), 'workers-welcome-probe.js');
const ROUNDS = 8;

describe('server with --workers 2: a node’s routes are in its worker’s TUN before its Welcome', function () {
  this.timeout(60_000);
  const rig = clusterRig({ nodes: 1 }, { cluster: () => ({ extraServerArgs: ['--workers', '2'] }) });

  it('each of eight sessions, alternating between the workers, finds its route moved at its Welcome', async function () {
    const { h, cluster } = rig;
    await cluster.startServer();
    const probe = h.spawn(
      h.ns.node(1),
      [
        process.execPath,
        PROBE,
        '--server',
        h.serverEndpoint,
        '--key',
        cluster.nodeKeys.get(1)!.keyFile,
        '--name',
        h.nodeName(1),
        '--route',
        h.nodeRoutes(1).join(','),
        '--control-plane',
        h.ns.cp,
        '--address',
        h.nodeIP(1),
        '--rounds',
        String(ROUNDS),
      ],
      { name: 'welcome-probe' },
    );
    await probe.waitForOutput('probe done', 40_000);
    const results = probe
      .output()
      .split('\n')
      .filter((line) => line.startsWith('{'))
      .map((line) => JSON.parse(line) as { round: number; atWelcome: string; settled: string });
    expect(results).to.have.length(ROUNDS);
    // The dials went to both workers in turn, so the route had to move every round.
    expect(new Set(results.map((r) => r.settled))).to.deep.equal(new Set(['nl0', 'nl0-1']));
    for (const r of results) expect(r.atWelcome, `round ${r.round}: route at the Welcome`).to.equal(r.settled);
  });

  leavesNothingBehind(rig);
});

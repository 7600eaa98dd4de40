// Churn without leaks: 20 nodes connect and disconnect at random for 60 s (SIGTERM, SIGKILL,
// restarts, some killed mid-handshake). Afterwards the server holds exactly one session per
// running node, no handshake in flight, timers and file descriptors back to what the connected
// nodes need, and the kernel routes it set up at start, no more and no fewer.
// Long (about 2 min): runs under npm run test:faults only.

import { expect } from 'chai';
import type { DaemonStatus } from '../../src/admin/index.js';
import { routeDestinations, routeTableFor } from '../../src/tun/index.js';
import { fdCount, quickStatus, report, faultRig } from './util.js';
import { leavesNothingBehind } from '../support/cluster-rig.js';
import { setTimeout as sleep } from 'node:timers/promises';

const NODES = 20;
const CHURN_MS = 60_000;
const MAX_STEPS = 2000;
const STEADY_POLLS = 8;

describe('faults: churn of 20 nodes for 60 s', function () {
  this.timeout(600_000);
  const rig = faultRig({ nodes: NODES, stubs: false }, false);
  const all = Array.from({ length: NODES }, (_, i) => i + 1);

  interface Counts {
    sessions: number;
    handshaking: number;
    fds: number;
    timers: number;
    procFds: number;
    connected: number;
  }

  async function counts(): Promise<Counts> {
    const status: DaemonStatus = await quickStatus(rig.cluster);
    const debug = status.debug!;
    return {
      sessions: debug.sessions!,
      handshaking: debug.handshaking!,
      fds: debug.fds,
      timers: debug.timers,
      procFds: fdCount(rig.cluster.server!.pid),
      connected: status.peers.filter((p) => p.connected).length,
    };
  }

  /** Polls until the server's counts match; returns the last counts either way. */
  async function settle(check: (c: Counts) => boolean, timeoutMs: number): Promise<Counts> {
    const deadline = Date.now() + timeoutMs;
    let last = await counts();
    while (!check(last) && Date.now() < deadline) {
      await sleep(250);
      last = await counts();
    }
    return last;
  }

  /**
   * Polls until `check` holds and fds and timers stayed the same for STEADY_POLLS polls in a row:
   * a baseline taken while a join's last route batch or closing socket is still in flight would
   * count that as what every node needs.
   */
  async function steady(check: (c: Counts) => boolean, timeoutMs: number): Promise<Counts> {
    const deadline = Date.now() + timeoutMs;
    let last = await counts();
    let same = 0;
    while (Date.now() < deadline) {
      await sleep(250);
      const next = await counts();
      same = check(next) && next.fds === last.fds && next.timers === last.timers ? same + 1 : 0;
      last = next;
      if (same >= STEADY_POLLS) break;
    }
    return last;
  }

  const running = (): number[] => all.filter((n) => rig.cluster.clients.get(n)?.running);

  let idle: Counts;
  let full: Counts;

  it('baseline: counts with no node, then with all 20 connected', async function () {
    await rig.cluster.startServer();
    idle = await steady(() => true, 10_000);
    for (const n of all) rig.cluster.startClient(n);
    await rig.cluster.waitConnected(all, 120_000);
    full = await steady((c) => c.sessions === NODES && c.handshaking === 0, 20_000);
    report(
      `server with 0 nodes: fds ${idle.fds}, timers ${idle.timers}; with 20 nodes: fds ${full.fds}, timers ${full.timers}, sessions ${full.sessions}`,
    );
    expect(full.sessions).to.equal(NODES);
    expect(full.procFds, '/proc/PID/fd agrees with status').to.equal(full.fds);
  });

  it('60 s of random connects, SIGTERMs and SIGKILLs leave exactly what the running nodes need', async function () {
    const { h } = rig;
    const started = Date.now();
    let steps = 0;
    let starts = 0;
    let terms = 0;
    let kills = 0;
    while (Date.now() - started < CHURN_MS && steps < MAX_STEPS) {
      steps++;
      const n = all[Math.floor(Math.random() * NODES)]!;
      const proc = rig.cluster.clients.get(n);
      if (proc?.running) {
        if (Math.random() < 0.5) {
          terms++;
          await proc.stop('SIGTERM', 3000);
        } else {
          kills++;
          proc.kill('SIGKILL');
          await proc.exited;
        }
      } else {
        starts++;
        rig.cluster.startClient(n);
      }
      await sleep(50 + Math.random() * 350);
    }
    const up = running();
    const expected = (idle: number, perNode: number): number => idle + up.length * perNode;
    const fdsPerNode = (full.fds - idle.fds) / NODES;
    const timersPerNode = (full.timers - idle.timers) / NODES;
    const after = await settle(
      (c) =>
        c.sessions === up.length &&
        c.connected === up.length &&
        c.handshaking === 0 &&
        c.fds === expected(idle.fds, fdsPerNode) &&
        c.timers === expected(idle.timers, timersPerNode),
      60_000,
    );
    report(
      `churn: ${steps} steps in ${((Date.now() - started) / 1000).toFixed(0)} s (${starts} starts, ${terms} SIGTERM, ${kills} SIGKILL); ` +
        `${up.length} nodes left running`,
    );
    report(
      `after churn: sessions ${after.sessions}, handshaking ${after.handshaking}, fds ${after.fds} (expected ${expected(idle.fds, fdsPerNode)}), ` +
        `timers ${after.timers} (expected ${expected(idle.timers, timersPerNode)})`,
    );
    expect(after.sessions).to.equal(up.length);
    expect(after.connected).to.equal(up.length);
    expect(after.handshaking).to.equal(0);
    expect(after.fds).to.equal(expected(idle.fds, fdsPerNode));
    expect(after.timers).to.equal(expected(idle.timers, timersPerNode));
    // Kernel routes: every authorized peer's allowedIPs on nl0 in the server's own table, whether
    // connected or not, and nothing else there; in main, only the tunnel's own prefixes.
    const wanted = new Set([h.tunnelCIDR, h.tunnelCIDR6, ...all.flatMap((n) => h.nodeRoutes(n))]);
    const routes = new Set<string>();
    for (const family of ['-4', '-6']) {
      for (const table of ['main', String(routeTableFor('nl0'))]) {
        const out = await h.exec(h.ns.cp, ['ip', '-j', family, 'route', 'show', 'table', table, 'dev', 'nl0']);
        for (const destination of routeDestinations(out.stdout)) routes.add(destination);
      }
    }
    expect([...routes].sort()).to.deep.equal([...wanted].sort());
    // Each running node routes the tunnel into its nl0; a stopped node has no nl0 at all.
    for (const n of all) {
      const out = await h.exec(h.ns.node(n), ['ip', '-j', 'route', 'show', 'dev', 'nl0'], { allowFail: true });
      if (up.includes(n)) expect(routeDestinations(out.stdout)).to.deep.equal([h.tunnelCIDR]);
      else expect(out.code, `node ${n} is stopped: no nl0`).to.not.equal(0);
    }
  });

  it('all 20 back: the counts equal those before the churn', async function () {
    for (const n of all) if (!rig.cluster.clients.get(n)?.running) rig.cluster.startClient(n);
    await rig.cluster.waitConnected(all, 120_000);
    const back = await settle(
      (c) => c.sessions === NODES && c.handshaking === 0 && c.fds === full.fds && c.timers === full.timers,
      30_000,
    );
    report(
      `fds before churn ${full.fds}, after churn with all 20 back ${back.fds}; timers ${full.timers} → ${back.timers}; sessions ${back.sessions}`,
    );
    expect(back.fds).to.equal(full.fds);
    expect(back.timers).to.equal(full.timers);
    expect(back.sessions).to.equal(NODES);
    const pings = await Promise.all(all.map((n) => rig.h.ping(rig.h.ns.cp, rig.h.nodeIP(n), { timeoutS: 3 })));
    expect(pings).to.deep.equal(all.map(() => true));
  });

  leavesNothingBehind(rig);
});

// Memory floods: peers that make the server write and never read what it writes. Without a key,
// Pings before any hello on many connections; with a node's key, Pings inside its session; with a
// node's key, a session that never reads while bulk traffic flows to another node, so that every
// packet for the stalled node waits in its queue beside that traffic. For each flood: the
// server's peak RSS, and the round trips of the other nodes meanwhile.
// Long (about two minutes): runs under npm run test:faults only.

import { expect } from 'chai';
import path from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { fileURLToPath } from 'node:url';
import type { Harness } from '../../scripts/harness/index.js';
import type { NodelinkCluster } from '../../scripts/cluster.js';
import { DEFAULTS } from '../../src/cli/config.js';
import { leavesNothingBehind } from '../support/cluster-rig.js';
import { MiB, faultRig, peer, report, rssBytes } from './util.js';

const ATTACKER = path.join(path.dirname(fileURLToPath(import.meta.url)), '..', '..', 'scripts', 'attacker.js');
const UDP_FLOOD = path.join(path.dirname(fileURLToPath(import.meta.url)), 'udp-flood.js');
/** The bounds the server must keep under every flood: below the shipped pod's memory limit. */
const SERVER_RSS_BOUND = 256 * MiB;
const OTHER_NODES_RTT_BOUND_MS = 50;
const PING_INTERVAL_S = 0.05;
/** The server's own address in the harness's tunnel CIDR: the control plane's kernel answers it. */
const SERVER_TUNNEL_ADDRESS = '198.18.255.1';

interface RoundTrips {
  readonly sent: number;
  readonly received: number;
  readonly p50Ms: number;
  readonly p95Ms: number;
  readonly maxMs: number;
}

function roundTripText(name: string, r: RoundTrips): string {
  return (
    `${name} ${r.received}/${r.sent} replies, ` +
    `median ${r.p50Ms.toFixed(1)} ms, p95 ${r.p95Ms.toFixed(1)} ms, max ${r.maxMs.toFixed(1)} ms`
  );
}

describe('faults: memory floods (peers that never read)', function () {
  this.timeout(300_000);
  const rig = faultRig({ nodes: 3 });
  let idleRss = 0;

  const H = (): Harness => rig.h;
  const C = (): NodelinkCluster => rig.cluster;

  /** Pings `address` from the control plane through the tunnel every 50 ms for `seconds`. */
  async function roundTrips(address: string, seconds: number): Promise<RoundTrips> {
    const sent = Math.round(seconds / PING_INTERVAL_S);
    const r = await H().exec(
      H().ns.cp,
      ['ping', '-n', '-i', String(PING_INTERVAL_S), '-c', String(sent), '-W', '1', address],
      { allowFail: true, timeoutMs: (seconds + 10) * 1000 },
    );
    const times = [...r.stdout.matchAll(/time=([\d.]+) ms/g)].map((m) => Number(m[1])).sort((a, b) => a - b);
    const quantile = (q: number): number =>
      times.length > 0 ? times[Math.min(times.length - 1, Math.floor(times.length * q))]! : Infinity;
    return { sent, received: times.length, p50Ms: quantile(0.5), p95Ms: quantile(0.95), maxMs: quantile(1) };
  }

  /** Samples the server's RSS every 100 ms until `until` settles; resolves with the peak. */
  async function peakRss(until: Promise<unknown>): Promise<number> {
    const pid = C().server!.pid;
    let done = false;
    void until.finally(() => {
      done = true;
    });
    let peak = rssBytes(pid);
    while (!done) {
      peak = Math.max(peak, rssBytes(pid));
      await sleep(100);
    }
    return Math.max(peak, rssBytes(pid));
  }

  async function attack(ns: string, mode: string, ...args: string[]): Promise<Record<string, unknown>> {
    const r = await H().exec(ns, [process.execPath, ATTACKER, mode, '--target', H().serverEndpoint, ...args], {
      timeoutMs: 40_000,
      allowFail: true,
    });
    if (r.code !== 0) throw new Error(`attacker ${mode} failed (${r.code}): ${r.stderr.trim()}`);
    return JSON.parse(r.stdout.trim().split('\n').pop()!) as Record<string, unknown>;
  }

  function node3Key(): string[] {
    return [
      '--server-key',
      C().serverKey.publicKey,
      '--key',
      C().nodeKeys.get(3)!.keyFile,
      '--name',
      H().nodeName(3),
      '--routes',
      H().nodeRoutes(3).join(','),
    ];
  }

  /** Runs `flood` while sampling RSS and pinging nodes 1 and 2; reports and checks the bounds. */
  async function measure(
    what: string,
    seconds: number,
    flood: () => Promise<unknown>,
    nodes: number[] = [1, 2],
  ): Promise<{ peak: number; rtts: RoundTrips[] }> {
    const running = flood();
    const [peak, rtts] = await Promise.all([
      peakRss(running),
      Promise.all(nodes.map((n) => roundTrips(H().nodeIP(n), seconds))),
      running,
    ]);
    report(
      `${what}: server RSS peak ${(peak / MiB).toFixed(0)} MiB (idle ${(idleRss / MiB).toFixed(0)} MiB); ` +
        nodes.map((n, i) => roundTripText(`node ${n}`, rtts[i]!)).join('; '),
    );
    return { peak, rtts };
  }

  function expectBounds(peak: number, rtts: RoundTrips[]): void {
    expect(peak, 'server RSS peak').to.be.below(SERVER_RSS_BOUND);
    for (const r of rtts) {
      expect(r.received, 'replies from the other nodes').to.be.at.least(r.sent * 0.95);
      // The median: this VM's other tenants (parallel test suites) put spikes into any tail.
      expect(r.p50Ms, "the other nodes' round trip (median)").to.be.below(OTHER_NODES_RTT_BOUND_MS);
    }
  }

  async function stillConnected(nodes: number[]): Promise<void> {
    for (const n of nodes) {
      const p = await peer(C(), n);
      expect(p?.connected, `node ${n} connected`).to.equal(true);
    }
  }

  /**
   * Each flood meets a server started afresh (its RSS does not shrink back after the last one),
   * with nodes 1 and 2 connected; node 3's key belongs to the attacker.
   */
  async function freshServer(): Promise<void> {
    await C().clients.get(3)?.stop();
    await C().server!.stop();
    await C().startServer();
    await C().waitConnected([1, 2]);
    await sleep(1000);
    idleRss = rssBytes(C().server!.pid);
  }

  beforeEach(async function () {
    await freshServer();
  });

  it('baseline: idle RSS and the round trips of nodes 1 and 2', async function () {
    const { peak, rtts } = await measure('idle', 3, () => sleep(3000));
    expectBounds(peak, rtts);
  });

  it('no key: three waves of 60 connections sending 4 KiB Pings before any hello and never reading', async function () {
    const t = H();
    const seconds = 3 * 5;
    const { peak, rtts } = await measure('Pings before the hello', seconds, async () => {
      for (let wave = 0; wave < 3; wave++) {
        const result = await attack(t.ns.node(3), 'pingflood', '--count', '60', '--size', '4090', '--seconds', '4.7');
        report(`wave ${wave + 1}: ${JSON.stringify(result)}`);
      }
    });
    expectBounds(peak, rtts);
    await stillConnected([1, 2]);
  });

  // 64 KiB Pings were echoed whole. 8-byte ones, the only size a Ping may have now, as fast as the
  // socket takes them: a million frames a second cost the server's one thread CPU whatever their
  // type (Data frames would too: no per-node fairness), so there only memory is held to a bound.
  for (const [size, what, roundTripsBounded] of [
    [65_000, '64 KiB Pings', true],
    [8, '8-byte Pings as fast as they go', false],
  ] as const) {
    it(`node 3's key: ${what} in its session for 6 s, never reading`, async function () {
      const t = H();
      let maxQueued = 0;
      const { peak, rtts } = await measure(`${what} in a session`, 6, async () => {
        const attacker = attack(t.ns.node(3), 'pingflood', ...node3Key(), '--size', String(size), '--seconds', '6');
        let done = false;
        void attacker.finally(() => (done = true));
        while (!done) {
          maxQueued = Math.max(maxQueued, (await peer(C(), 3).catch(() => undefined))?.queuedBytes ?? 0);
          await sleep(200);
        }
        const node3 = await peer(C(), 3);
        report(
          `${JSON.stringify(await attacker)}; node 3 queue max ${(maxQueued / MiB).toFixed(2)} MiB, ` +
            `drops ${JSON.stringify(node3?.dropsByReason ?? {})}`,
        );
      });
      if (roundTripsBounded) expectBounds(peak, rtts);
      else expect(peak, 'server RSS peak').to.be.below(SERVER_RSS_BOUND);
      expect(maxQueued, "node 3's queue").to.be.at.most(DEFAULTS.maxQueueBytes + 256 * 1024);
      await stillConnected([1, 2]);
    });
  }

  it('node 3 never reads while the control plane sends it 2000 datagrams a second beside 2 iperf3 streams to node 2', async function () {
    const t = H();
    const seconds = 20;
    const iperfServer = t.spawn(t.ns.pod(2, 1), ['iperf3', '-s', '-1', '-p', '5201', '--forceflush'], {
      name: 'iperf3-server',
    });
    await iperfServer.waitForOutput('Server listening', 10_000);
    let maxQueued = 0;
    const { peak } = await measure(
      'stalled node 3 beside bulk traffic to node 2',
      seconds,
      async () => {
        // A session that never reads, kept alive by one echo request a millisecond of its own.
        const attacker = attack(
          t.ns.node(3),
          'stallecho',
          ...node3Key(),
          '--src',
          t.nodeIP(3),
          '--dst',
          SERVER_TUNNEL_ADDRESS,
          '--seconds',
          String(seconds + 2),
        );
        await sleep(1000);
        // Small packets for node 3, each read from the TUN in a batch beside node 2's bulk traffic.
        const datagrams = t.exec(t.ns.cp, [process.execPath, UDP_FLOOD, t.nodeIP(3), '9', '1', String(seconds), '64'], {
          allowFail: true,
          timeoutMs: (seconds + 20) * 1000,
        });
        const iperf = t.exec(t.ns.cp, ['iperf3', '-c', t.podIP(2, 1), '-p', '5201', '-t', String(seconds), '-P', '2'], {
          allowFail: true,
          timeoutMs: (seconds + 20) * 1000,
        });
        let done = false;
        void attacker.finally(() => (done = true));
        while (!done) {
          maxQueued = Math.max(maxQueued, (await peer(C(), 3).catch(() => undefined))?.queuedBytes ?? 0);
          await sleep(200);
        }
        const [bulk, sent] = await Promise.all([iperf, datagrams]);
        const summary = /([\d.]+) Mbits\/sec.*receiver/.exec(bulk.stdout.split('[SUM]').pop() ?? '');
        const node3 = await peer(C(), 3);
        report(
          `${JSON.stringify(await attacker)}; ${sent.stdout.trim()} to node 3; ` +
            `iperf3 ${summary?.[1] ?? '?'} Mbit/s; node 3 queue max ${(maxQueued / MiB).toFixed(2)} MiB, ` +
            `drops ${JSON.stringify(node3?.dropsByReason ?? {})}`,
        );
      },
      [1],
    );
    await iperfServer.stop();
    expect(maxQueued, "node 3's queue").to.be.above(0);
    expect(peak, 'server RSS peak').to.be.below(SERVER_RSS_BOUND);
    expect(maxQueued, "node 3's queue").to.be.at.most(DEFAULTS.maxQueueBytes + 256 * 1024);
    await stillConnected([1, 2]);
  });

  leavesNothingBehind(rig);
});

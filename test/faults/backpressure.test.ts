// Backpressure: a node whose stream cannot keep up costs bounded memory and stalls nobody else.
// Node 1's link is throttled (tbf) and flooded for 30 s; the server drops what does not fit in
// node 1's bounded send queue (queue_full), its RSS stays under a stated bound, and node 2's
// transfers stay fast meanwhile. Then the same in the other direction on the client's uplink.
// Long (about 90 s): runs under npm run test:faults only.

import { expect } from 'chai';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { expectedSha256 } from '../../scripts/harness/index.js';
import { DEFAULTS } from '../../src/cli/config.js';
import { leavesNothingBehind } from '../support/cluster-rig.js';
import { MiB, faultRig, mbit, peer, quickStatus, report, rssBytes } from './util.js';
import { setTimeout as sleep } from 'node:timers/promises';
import { waitFor } from '../support/wait.js';

const FLOOD_SCRIPT = path.join(path.dirname(fileURLToPath(import.meta.url)), 'udp-flood.js');
const FLOOD_S = 30;
const FLOOD_MBIT = 200;
const THROTTLE_MBIT = 5;
/** The stated bound: the server's RSS during the flood stays below this. */
const SERVER_RSS_BOUND = 200 * MiB;
const CLIENT_RSS_BOUND = 200 * MiB;
/** ... and grows by less than this over its idle RSS: the 4 MiB queue plus allocator slack. */
const RSS_GROWTH_BOUND = 64 * MiB;
const TRANSFER = 32 * MiB;

describe('faults: backpressure (flood a throttled node)', function () {
  this.timeout(300_000);
  // Its after hook lifts both rate limits, whatever a test left set.
  const rig = faultRig({ nodes: 2 });
  let baselineMbit = 0;
  let baselineRss = 0;

  async function node2Transfer(): Promise<number> {
    const { h } = rig;
    const started = Date.now();
    const result = await h.curl(h.ns.cp, h.podURL(2, 1, `/bytes/${TRANSFER}`), { timeoutS: 60 });
    const ms = Date.now() - started;
    expect(result.ok, result.error).to.equal(true);
    expect(result.sha256).to.equal(expectedSha256(TRANSFER));
    return mbit(TRANSFER, ms);
  }

  /** Runs transfers to node 2 and samples RSS and node 1's queue until `until` settles. */
  async function duringFlood(
    pid: number,
    socket: string | undefined,
    until: Promise<unknown>,
    n1: 'server' | 'client',
  ) {
    let done = false;
    void until.finally(() => {
      done = true;
    });
    let maxRss = rssBytes(pid);
    let maxQueued = 0;
    let maxRttMs = 0;
    const sampler = (async () => {
      while (!done) {
        maxRss = Math.max(maxRss, rssBytes(pid));
        const status =
          n1 === 'server'
            ? await peer(rig.cluster, 1).catch(() => undefined)
            : (await quickStatus(rig.cluster, socket).catch(() => undefined))?.peers[0];
        maxQueued = Math.max(maxQueued, status?.queuedBytes ?? 0);
        maxRttMs = Math.max(maxRttMs, status?.lastPongMs ?? 0);
        await sleep(250);
      }
    })();
    const rates: number[] = [];
    await sleep(2000); // let the queue fill first
    while (!done && rates.length < 20) rates.push(await node2Transfer());
    await until;
    await sampler;
    return { maxRss, maxQueued, maxRttMs, rates };
  }

  it('baseline: node 2 transfer speed with no flood', async function () {
    const rates = [await node2Transfer(), await node2Transfer()];
    baselineMbit = Math.max(...rates);
    const pid = rig.cluster.server!.pid;
    const status = await quickStatus(rig.cluster);
    expect(status.debug?.pid, 'the spawned PID is the server process').to.equal(pid);
    baselineRss = rssBytes(pid);
    report(
      `baseline: node 2 ${rates.map((r) => r.toFixed(0)).join('/')} Mbit/s; server RSS ${(rssBytes(pid) / MiB).toFixed(0)} MiB`,
    );
  });

  it(`server → node: ${FLOOD_S} s flood at ${FLOOD_MBIT} Mbit/s into a ${THROTTLE_MBIT} Mbit/s node; bounded RSS, node 2 stays fast`, async function () {
    const { h } = rig;
    const pid = rig.cluster.server!.pid;
    const before = (await peer(rig.cluster, 1))!;
    await rig.underlay.limit('n1', THROTTLE_MBIT); // router → node 1: the server's stream to node 1 backs up
    // To the node itself: a pod behind its 1500-byte cbr0 would answer "fragmentation needed"
    // and turn every 8 KiB datagram into six fragments, testing CPU more than the queue.
    const flood = h.spawn(
      h.ns.cp,
      [process.execPath, FLOOD_SCRIPT, h.nodeIP(1), '9', String(FLOOD_MBIT), String(FLOOD_S)],
      { name: 'udp-flood-cp' },
    );
    const { maxRss, maxQueued, maxRttMs, rates } = await duringFlood(pid, undefined, flood.exited, 'server');
    const exit = await flood.exited;
    expect(exit.code, flood.output()).to.equal(0);
    const after = (await peer(rig.cluster, 1))!;
    const queueFull = (after.dropsByReason['queue_full'] ?? 0) - (before.dropsByReason['queue_full'] ?? 0);
    report(`${flood.output().trim()}`);
    report(
      `server RSS max ${(maxRss / MiB).toFixed(0)} MiB (idle ${(baselineRss / MiB).toFixed(0)} MiB; bound ${SERVER_RSS_BOUND / MiB} MiB); node 1 queue max ${(maxQueued / MiB).toFixed(2)} MiB ` +
        `(--max-queue-bytes ${(DEFAULTS.maxQueueBytes / MiB).toFixed(0)} MiB), ${queueFull} packets dropped as queue_full`,
    );
    const median = [...rates].sort((a, b) => a - b)[Math.floor(rates.length / 2)]!;
    report(
      `node 2 during the flood: ${rates.map((r) => r.toFixed(0)).join('/')} Mbit/s, median ${median.toFixed(0)} (baseline ${baselineMbit.toFixed(0)})`,
    );
    expect(queueFull).to.be.greaterThan(0);
    expect(maxQueued).to.be.at.most(DEFAULTS.maxQueueBytes + 256 * 1024);
    expect(maxRss).to.be.below(SERVER_RSS_BOUND);
    expect(maxRss - baselineRss, 'RSS growth during the flood').to.be.below(RSS_GROWTH_BOUND);
    expect(rates.length).to.be.greaterThan(0);
    // "Stays fast": half the baseline or more is typical; a third is the bar on a loaded 2-vCPU VM,
    // where the flood generator, the server and node 2's transfer share the CPUs.
    expect(median).to.be.at.least(baselineMbit / 3);
    await rig.underlay.unlimit('n1');
    // Node 1 works again once the flood is over.
    const backMs = await waitFor(
      'node 1 to answer after the flood',
      () => h.ping(h.ns.cp, h.nodeIP(1), { timeoutS: 1 }),
      30_000,
    );
    report(
      `node 1 answers ${backMs} ms after the flood ended; its keepalive RTT during the flood up to ${maxRttMs.toFixed(0)} ms ` +
        '(the full queue drains at the throttled rate: latency, not memory)',
    );
  });

  it('node → server: a flood on a throttled node uplink is dropped at the client (queue_full), bounded RSS', async function () {
    const { h } = rig;
    const clientPid = rig.cluster.clients.get(1)!.pid;
    const socket = rig.cluster.clientSocket(1);
    const before = (await quickStatus(rig.cluster, socket)).peers[0]!;
    await rig.underlay.limit('eth0', THROTTLE_MBIT, h.ns.node(1)); // node 1 → router: its uplink
    const seconds = 15;
    const flood = h.spawn(
      h.ns.node(1),
      [process.execPath, FLOOD_SCRIPT, '198.18.255.1', '9', String(FLOOD_MBIT), String(seconds)],
      { name: 'udp-flood-node1' },
    );
    const { maxRss, maxQueued, rates } = await duringFlood(clientPid, socket, flood.exited, 'client');
    expect((await flood.exited).code, flood.output()).to.equal(0);
    const after = (await quickStatus(rig.cluster, socket)).peers[0]!;
    const queueFull = (after.dropsByReason['queue_full'] ?? 0) - (before.dropsByReason['queue_full'] ?? 0);
    report(`${flood.output().trim()}`);
    report(
      `client RSS max ${(maxRss / MiB).toFixed(0)} MiB (bound ${CLIENT_RSS_BOUND / MiB} MiB); uplink queue max ${(maxQueued / MiB).toFixed(2)} MiB; ` +
        `${queueFull} packets dropped as queue_full; node 2 meanwhile ${rates.map((r) => r.toFixed(0)).join('/')} Mbit/s`,
    );
    expect(queueFull).to.be.greaterThan(0);
    expect(maxQueued).to.be.at.most(DEFAULTS.maxQueueBytes + 256 * 1024);
    expect(maxRss).to.be.below(CLIENT_RSS_BOUND);
    await rig.underlay.unlimit('eth0', h.ns.node(1));
    await waitFor(
      'node 1 to answer after the uplink flood',
      () => h.ping(h.ns.cp, h.nodeIP(1), { timeoutS: 1 }),
      30_000,
    );
  });

  leavesNothingBehind(rig);
});

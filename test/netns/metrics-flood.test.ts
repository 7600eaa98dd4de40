// The metrics endpoint under attack from the control plane's own network, through the real CLI:
// a scrape flood (about 700 requests/s for 5 s) while the control plane pings a pod through the
// link, with the round trip and the server's RSS and CPU printed before and during the flood;
// then a metrics port held by another process when the server starts, which must not keep the
// link from starting.

import { expect } from 'chai';
import path from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { fileURLToPath } from 'node:url';
import type { ManagedProcess } from '../../scripts/harness/index.js';
import { runCli } from '../../scripts/cluster.js';
import { cpuSeconds, rssBytes } from '../../scripts/proc.js';
import { clusterRig, leavesNothingBehind } from '../support/cluster-rig.js';
import { waitFor } from '../support/wait.js';

const FLOOD_SCRIPT = path.join(path.dirname(fileURLToPath(import.meta.url)), 'http-flood.js');
const METRICS_PORT = 9464;
const FLOOD_RATE = 700;
const FLOOD_S = 5;
const FLOOD_CONCURRENCY = 20;
/** How long the server serves one rendering of /metrics (src/admin/http.ts). */
const CACHE_MS = 1000;
const MiB = 1024 * 1024;

interface PingResult {
  sent: number;
  received: number;
  avgMs: number;
  maxMs: number;
}

interface FloodResult {
  sent: number;
  byStatus: Record<string, number>;
  errors: number;
  distinctBodies: number;
  seconds: number;
  perSecond: number;
  p50Ms: number;
  p99Ms: number;
}

function report(text: string): void {
  console.log(`      → ${text}`);
}

describe('metrics endpoint under attack (real CLI in namespaces)', function () {
  this.timeout(120_000);
  let metricsAddress = '';
  const rig = clusterRig(
    { nodes: 2 },
    {
      start: true,
      cluster: (h) => {
        metricsAddress = `${h.cpAddress}:${METRICS_PORT}`;
        return { extraServerArgs: ['--metrics', metricsAddress] };
      },
    },
  );

  /** `count` pings from the control plane to node 2's pod, through the link, 20 ms apart. */
  async function pingPod(count: number): Promise<PingResult> {
    const { h } = rig;
    const r = await h.exec(h.ns.cp, ['ping', '-n', '-q', '-c', String(count), '-i', '0.02', '-W', '2', h.podIP(2, 1)], {
      allowFail: true,
      timeoutMs: count * 20 + 15_000,
    });
    const counts = /(\d+) packets transmitted, (\d+) received/.exec(r.stdout);
    const rtt = /= [\d.]+\/([\d.]+)\/([\d.]+)\//.exec(r.stdout);
    return {
      sent: Number(counts?.[1] ?? 0),
      received: Number(counts?.[2] ?? 0),
      avgMs: Number(rtt?.[1] ?? NaN),
      maxMs: Number(rtt?.[2] ?? NaN),
    };
  }

  /** Samples the server's RSS every 100 ms until `until` settles; returns the peak. */
  async function peakRss(pid: number, until: Promise<unknown>): Promise<number> {
    let done = false;
    void until.finally(() => {
      done = true;
    });
    let peak = rssBytes(pid);
    while (!done) {
      await sleep(100);
      peak = Math.max(peak, rssBytes(pid));
    }
    return peak;
  }

  it(`a scrape flood (${FLOOD_RATE}/s for ${FLOOD_S} s) is served from one rendering per second; the link keeps working`, async function () {
    const { h } = rig;
    const server = rig.cluster.server!;
    const pid = server.pid;
    const idle = await pingPod(100);
    const idleRss = rssBytes(pid);
    report(
      `idle: pod round trip avg ${idle.avgMs.toFixed(2)} ms, max ${idle.maxMs.toFixed(2)} ms (${idle.received}/${idle.sent}); server RSS ${(idleRss / MiB).toFixed(0)} MiB`,
    );
    const cpuBefore = cpuSeconds(pid);
    const flooder: ManagedProcess = h.spawn(
      h.ns.cp,
      [
        process.execPath,
        FLOOD_SCRIPT,
        `http://${metricsAddress}/metrics`,
        String(FLOOD_RATE),
        String(FLOOD_S),
        String(FLOOD_CONCURRENCY),
      ],
      { name: 'http-flood' },
    );
    const [underFlood, peak] = await Promise.all([pingPod((FLOOD_S * 1000) / 20), peakRss(pid, flooder.exited)]);
    await flooder.exited;
    const cpu = cpuSeconds(pid) - cpuBefore;
    const flood = JSON.parse(flooder.output().trim().split('\n').pop()!) as FloodResult;
    report(
      `flood: ${flood.sent} requests in ${flood.seconds} s (${flood.perSecond}/s), answers ${JSON.stringify(flood.byStatus)}, ${flood.errors} errors, ${flood.distinctBodies} distinct bodies, latency p50 ${flood.p50Ms} ms p99 ${flood.p99Ms} ms`,
    );
    report(
      `under flood: pod round trip avg ${underFlood.avgMs.toFixed(2)} ms, max ${underFlood.maxMs.toFixed(2)} ms (${underFlood.received}/${underFlood.sent}); server RSS peak ${(peak / MiB).toFixed(0)} MiB, CPU ${cpu.toFixed(2)} s over ${flood.seconds} s`,
    );
    expect(flood.byStatus['200'] ?? 0).to.be.greaterThan(FLOOD_S * 100);
    // Every answer within one cache period is the same rendering: at most one per period
    // (plus the period the flood started in).
    expect(flood.distinctBodies).to.be.at.most(Math.ceil((flood.seconds * 1000) / CACHE_MS) + 1);
    expect(underFlood.received).to.be.greaterThan(0);
    const after = await h.curl(h.ns.cp, `http://${metricsAddress}/metrics`, { timeoutS: 3 });
    expect(after.status).to.equal(200);
    expect(server.running).to.equal(true);
  });

  it('a metrics port taken when the server starts: the link starts anyway, status and the log name the failure; the endpoint comes back once the port is free', async function () {
    const { h } = rig;
    await rig.cluster.server!.stop();
    // Any local user can bind a port on the control plane's address before the server does.
    const squatter = await h.startStub(h.ns.cp, 'pod', 'squatter', METRICS_PORT, h.cpAddress);
    try {
      const server = await rig.cluster.startServer();
      await rig.cluster.waitConnected([1, 2]);
      const pod = await h.curl(h.ns.cp, h.podURL(2, 1), { timeoutS: 5 });
      expect(pod.ok, pod.error).to.equal(true);
      const status = await rig.cluster.status();
      const metrics = status.endpoints?.find((endpoint) => endpoint.name === 'metrics');
      expect(metrics?.state).to.equal('failed');
      expect(metrics?.address).to.equal(metricsAddress);
      expect(metrics?.error).to.match(/is already in use: stop the other process or pick another port/);
      expect(status.endpoints?.find((endpoint) => endpoint.name === 'admin')?.state).to.equal('serving');
      const text = await runCli(['status', '--admin-socket', rig.cluster.serverSocket]);
      expect(text.stdout.split('\n')[0]).to.contain('metrics endpoint FAILED');
      expect(text.stdout).to.match(/ {2}metrics: FAILED since .*, retrying: --metrics .* is already in use/);
      const logged = server
        .output()
        .split('\n')
        .filter((line) => line.includes('metrics endpoint failed'));
      expect(logged).to.have.length(1);
      expect(JSON.parse(logged[0]!)).to.deep.include({ level: 50, endpoint: 'metrics', address: metricsAddress });
      report(`with the port taken: server up, nodes connected, pod answered; status: ${metrics?.error}`);
    } finally {
      await squatter.stop();
    }
    await waitFor(
      'the metrics endpoint serving again',
      async () =>
        (await rig.cluster.status()).endpoints?.find((endpoint) => endpoint.name === 'metrics')?.state === 'serving',
      40_000,
    );
    const scrape = await h.curl(h.ns.cp, `http://${metricsAddress}/metrics`, { timeoutS: 3 });
    expect(scrape.status).to.equal(200);
    expect(scrape.body).to.contain('nodelink_endpoint_up{endpoint="metrics"} 1');
    expect(rig.cluster.server!.output()).to.contain('metrics endpoint serving again');
  });

  leavesNothingBehind(rig);
});

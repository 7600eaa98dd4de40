// A bounded HTTP GET flood for the metrics-flood test, run inside a namespace by the harness:
//
//   node http-flood.js URL RATE SECONDS CONCURRENCY
//
// Requests URL at RATE requests/s for SECONDS (at most 60) over at most CONCURRENCY keep-alive
// connections, then prints one JSON line: requests sent, answers by status, errors, how many
// distinct bodies came back (a cached rendering repeats itself), and latency percentiles.

import { Agent, request } from 'node:http';
import { createHash } from 'node:crypto';

const [url, rateText, secondsText, concurrencyText] = process.argv.slice(2);
const rate = Number(rateText);
const seconds = Math.min(Number(secondsText), 60);
const concurrency = Number(concurrencyText);
if (!url || !(rate > 0) || !(seconds > 0) || !(concurrency > 0 && concurrency <= 1000)) {
  process.stderr.write('usage: http-flood.js URL RATE SECONDS CONCURRENCY\n');
  process.exit(2);
}

const agent = new Agent({ keepAlive: true, maxSockets: concurrency });
const bodies = new Set<string>();
const byStatus: Record<string, number> = {};
const latencies: number[] = [];
let issued = 0;
/** Requests due so far by the pacing; runs ahead of `issued` when the server is slower. */
let paced = 0;
let inflight = 0;
let errors = 0;
const started = Date.now();

function issue(): void {
  issued++;
  inflight++;
  const sentAt = performance.now();
  const req = request(url!, { agent, timeout: 5000 }, (res) => {
    const hash = createHash('sha256');
    res.on('data', (chunk: Buffer) => hash.update(chunk));
    res.on('end', () => {
      inflight--;
      byStatus[res.statusCode ?? 0] = (byStatus[res.statusCode ?? 0] ?? 0) + 1;
      if (res.statusCode === 200) bodies.add(hash.digest('hex'));
      latencies.push(performance.now() - sentAt);
    });
  });
  req.on('timeout', () => req.destroy(new Error('timeout')));
  req.on('error', () => {
    inflight--;
    errors++;
  });
  req.end();
}

function percentile(sorted: number[], p: number): number {
  return sorted.length === 0 ? 0 : sorted[Math.min(sorted.length - 1, Math.floor(sorted.length * p))]!;
}

function finish(): void {
  const sorted = latencies.sort((a, b) => a - b);
  const elapsed = (Date.now() - started) / 1000;
  process.stdout.write(
    `${JSON.stringify({
      sent: issued,
      byStatus,
      errors,
      distinctBodies: bodies.size,
      seconds: Number(elapsed.toFixed(2)),
      perSecond: Math.round(issued / elapsed),
      p50Ms: Number(percentile(sorted, 0.5).toFixed(2)),
      p99Ms: Number(percentile(sorted, 0.99).toFixed(2)),
    })}\n`,
  );
  agent.destroy();
}

const timer = setInterval(() => {
  const elapsed = Date.now() - started;
  if (elapsed >= seconds * 1000) {
    clearInterval(timer);
    // Answers still on their way get at most 5 s (the request timeout) more.
    const drained = setInterval(() => {
      if (inflight === 0 || Date.now() - started > (seconds + 6) * 1000) {
        clearInterval(drained);
        finish();
      }
    }, 20);
    return;
  }
  // Paced by elapsed time, at most one second behind, never more than CONCURRENCY at once.
  const due = Math.floor((elapsed / 1000) * rate);
  paced = Math.max(paced, due - Math.ceil(rate));
  while (paced < due && inflight < concurrency) {
    paced++;
    issue();
  }
}, 2);

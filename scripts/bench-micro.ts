// npm run bench:micro — the per-packet pure code of the data path, in ns per operation and bytes
// allocated per operation: frame encode (src/protocol writeHeader / encodeFrame), frame decode
// (FrameDecoder.push over buffers holding many frames) and longest-prefix lookup (src/routing
// PrefixTable.lookupDestination on raw packets) in a table of 10,000 random IPv4 and IPv6 routes.
// Each group builds its fixtures just before it runs, so earlier groups measure on a small heap.
//
// Time: after a warm-up, SAMPLES timed runs; the medians are reported, of wall-clock time and of
// the process's CPU time (process.cpuUsage, user + system). On a busy machine the wall clock also
// counts time spent descheduled, so targets are judged on CPU time; on an idle one they agree.
// Each run does the case's operation count, cut so that it lasts about SAMPLE_MS at most.
// Allocation: after a forced GC (node --expose-gc, which the npm script passes), the growth of
// heapUsed + arrayBuffers (process.memoryUsage) over one loop, divided by its operations; a loop
// during which V8 collected garbage on its own undercounts, so it is detected
// (perf_hooks 'gc' entries) and the loop is repeated shorter. Every loop is bounded in count.
//
// Environment: SAMPLES=7, SAMPLE_MS=200, ROUTES=10000 (half IPv4, half IPv6), SEED=1.
import { PerformanceObserver, performance } from 'node:perf_hooks';
import os from 'node:os';
import { setTimeout as sleep } from 'node:timers/promises';
import {
  DEFAULT_MAX_PAYLOAD,
  FrameDecoder,
  FrameType,
  HEADER_SIZE,
  encodeFrame,
  writeHeader,
} from '../src/protocol/index.js';
import { Prefix, PrefixTable, formatAddress } from '../src/routing/index.js';
import { prng } from '../test/support/random.js';

const SAMPLES = envInt('SAMPLES', 7, 1, 101);
const SAMPLE_MS = envInt('SAMPLE_MS', 200, 1, 10_000);
const ROUTES = envInt('ROUTES', 10_000, 1, 1_000_000);
const SEED = envInt('SEED', 1, 0, 0xffffffff);
const LOOKUP_TARGET_NS = 100;
const DECODE_TARGET_NS = 100;

function envInt(name: string, fallback: number, min: number, max: number): number {
  const text = process.env[name];
  if (text === undefined || text === '') return fallback;
  const n = Number(text);
  if (!Number.isInteger(n) || n < min || n > max) {
    process.stderr.write(`bench-micro: ${name} must be an integer from ${min} to ${max}, got "${text}"\n`);
    process.exit(1);
  }
  return n;
}

const random = prng(SEED);
const randomInt = (n: number): number => Math.floor(random() * n);

/** A value the benchmarks feed, so the JIT cannot drop the work as unused. */
let sink = 0;

interface Case {
  group: string;
  name: string;
  /**
   * Performs about `ops` operations and returns how many it did (decode rounds to whole
   * buffers). Must allocate nothing itself beyond what the operation does.
   */
  run: (ops: number) => number;
  /** Most operations per timed sample (fewer when they would take longer than SAMPLE_MS). */
  ops: number;
  targetNs?: number;
}

interface Result {
  nsPerOp: number;
  cpuNsPerOp: number;
  bytesPerOp: number | undefined;
  allocOps: number;
  allocNote: string;
}

/** Wall-clock and CPU nanoseconds per operation of one run. */
function timeOnce(c: Case, ops: number): { wall: number; cpu: number } {
  const cpu0 = process.cpuUsage();
  const t0 = process.hrtime.bigint();
  const done = c.run(ops);
  const wall = Number(process.hrtime.bigint() - t0);
  const cpu = process.cpuUsage(cpu0);
  return { wall: wall / done, cpu: ((cpu.user + cpu.system) * 1000) / done };
}

function median(values: number[]): number {
  const s = [...values].sort((a, b) => a - b);
  const mid = s.length >> 1;
  return s.length % 2 ? s[mid] : (s[mid - 1] + s[mid]) / 2;
}

// ---------------------------------------------------------------- allocation measurement
const gc = (globalThis as { gc?: () => void }).gc;
const gcTimes: number[] = [];
const gcObserver = new PerformanceObserver((list) => {
  for (const entry of list.getEntries()) gcTimes.push(entry.startTime);
});
gcObserver.observe({ entryTypes: ['gc'] });

const allocated = (): number => {
  const m = process.memoryUsage();
  return m.heapUsed + m.arrayBuffers;
};

async function measureAllocation(
  c: Case,
  opsPerSample: number,
): Promise<Pick<Result, 'bytesPerOp' | 'allocOps' | 'allocNote'>> {
  if (!gc) return { bytesPerOp: undefined, allocOps: 0, allocNote: 'run node with --expose-gc' };
  let ops = Math.max(1000, Math.min(opsPerSample, 200_000));
  for (let attempt = 0; attempt < 8; attempt++) {
    gc();
    gc();
    await sleep(5); // let the forced collections' entries arrive before the window opens
    const start = performance.now();
    const before = allocated();
    const done = c.run(ops);
    const after = allocated();
    const end = performance.now();
    await sleep(5);
    const collected = gcTimes.some((t) => t >= start && t <= end);
    if (!collected) return { bytesPerOp: Math.max(0, after - before) / done, allocOps: done, allocNote: '' };
    if (ops <= 1000) break;
    ops = Math.max(1000, ops >> 2);
  }
  return { bytesPerOp: undefined, allocOps: ops, allocNote: 'a GC ran during every loop' };
}

async function measure(c: Case): Promise<Result> {
  // Estimate the cost on a short run, then warm up for about one sample so the JIT settles.
  const estimate = timeOnce(c, Math.min(c.ops, 2000)).wall;
  let ops = Math.max(1, Math.min(c.ops, Math.floor((SAMPLE_MS * 1e6) / estimate)));
  const warm = timeOnce(c, ops).wall;
  ops = Math.max(1, Math.min(c.ops, Math.floor((SAMPLE_MS * 1e6) / warm)));
  const samples: Array<{ wall: number; cpu: number }> = [];
  for (let i = 0; i < SAMPLES; i++) samples.push(timeOnce(c, ops));
  const alloc = await measureAllocation(c, ops);
  return { nsPerOp: median(samples.map((x) => x.wall)), cpuNsPerOp: median(samples.map((x) => x.cpu)), ...alloc };
}

// ---------------------------------------------------------------- encode
function encodeCases(): Case[] {
  const packet = Buffer.alloc(1400, 0x45);
  const target = Buffer.alloc(HEADER_SIZE);
  return [
    {
      group: 'encode',
      name: 'writeHeader into a reused 6 B buffer',
      ops: 5_000_000,
      run(ops) {
        for (let i = 0; i < ops; i++) writeHeader(target, 0, FrameType.Data, i & 0xffff);
        sink += target[5];
        return ops;
      },
    },
    {
      group: 'encode',
      name: 'Buffer.allocUnsafe(6) + writeHeader (as link/connection sends a data frame)',
      ops: 2_000_000,
      run(ops) {
        for (let i = 0; i < ops; i++) {
          const header = Buffer.allocUnsafe(HEADER_SIZE);
          writeHeader(header, 0, FrameType.Data, i & 0xffff);
          sink += header[5];
        }
        return ops;
      },
    },
    {
      group: 'encode',
      name: `encodeFrame(Data, ${packet.length} B packet): allocate, header, copy`,
      ops: 1_000_000,
      run(ops) {
        for (let i = 0; i < ops; i++) sink += encodeFrame(FrameType.Data, packet).length;
        return ops;
      },
    },
  ];
}

// ---------------------------------------------------------------- decode
// A stream of FRAMES data frames of mixed sizes (40 B to 1500 B, like an IP packet mix), and the
// same bytes cut into 16 KiB pieces, the size of the TLS records Node hands over, so that some
// frames span two pieces (header through the scratch buffer, body copied once).
const FRAMES = 1024;
const TLS_RECORD = 16 * 1024;
let decoded = 0;
let decodedBytes = 0;

function decodeCases(): Case[] {
  const sizes = Array.from({ length: FRAMES }, () => {
    const r = random();
    return r < 0.4 ? 40 + randomInt(24) : r < 0.6 ? 576 : r < 0.9 ? 1400 + randomInt(101) : 40 + randomInt(1461);
  });
  const stream = Buffer.concat(sizes.map((n) => encodeFrame(FrameType.Data, Buffer.alloc(n, 0x45))));
  const pieces: Buffer[] = [];
  for (let at = 0; at < stream.length; at += TLS_RECORD) pieces.push(stream.subarray(at, at + TLS_RECORD));
  let spanning = 0;
  let at = 0;
  for (const size of sizes) {
    const end = at + HEADER_SIZE + size;
    if (Math.floor(at / TLS_RECORD) !== Math.floor((end - 1) / TLS_RECORD)) spanning++;
    at = end;
  }
  const decoder = new FrameDecoder(
    (_type, payload) => {
      decoded++;
      decodedBytes += payload.length;
    },
    { maxPayload: DEFAULT_MAX_PAYLOAD },
  );
  // `ops` is rounded to whole buffers of FRAMES frames; the count decoded is what is returned.
  return [
    {
      group: 'decode',
      name: `FrameDecoder.push, one buffer of ${FRAMES} frames (payloads are views)`,
      ops: 3_000_000,
      targetNs: DECODE_TARGET_NS,
      run(ops) {
        const start = decoded;
        for (let i = Math.max(1, Math.round(ops / FRAMES)); i > 0; i--) decoder.push(stream);
        sink += decoded - start;
        return decoded - start;
      },
    },
    {
      group: 'decode',
      name: `FrameDecoder.push, same bytes in 16 KiB chunks (${spanning} of ${FRAMES} frames span two)`,
      ops: 3_000_000,
      targetNs: DECODE_TARGET_NS,
      run(ops) {
        const start = decoded;
        for (let i = Math.max(1, Math.round(ops / FRAMES)); i > 0; i--) {
          for (let p = 0; p < pieces.length; p++) decoder.push(pieces[p]);
        }
        sink += decoded - start;
        return decoded - start;
      },
    },
  ];
}

// ---------------------------------------------------------------- lookup
// ROUTES random prefixes, half IPv4 and half IPv6 (inside fd00::/8), with lengths spread like a
// cluster's routes: node IPs (/32, /128), pod CIDRs (/24, /64) and everything in between.
// PACKETS raw packets per family aim at a random route with random host bits (90%) or at a
// random address (10%, mostly misses).
const PACKETS = 4096; // a power of two: the loops index with `i & (PACKETS - 1)`
let routeCount = 0;

interface Route {
  bytes: Uint8Array;
  length: number;
}

function randomLength(family: 4 | 6): number {
  const r = random();
  if (family === 4) return r < 0.4 ? 32 : r < 0.7 ? 24 : 8 + randomInt(25);
  return r < 0.4 ? 128 : r < 0.7 ? 64 : 16 + randomInt(113);
}

function maskTo(bytes: Uint8Array, length: number): Uint8Array {
  const out = Uint8Array.from(bytes);
  for (let bit = length; bit < out.length * 8; bit++) out[bit >> 3] &= ~(0x80 >> (bit & 7));
  return out;
}

function cidrText(family: 4 | 6, bytes: Uint8Array, length: number): string {
  return `${formatAddress(family, bytes)}/${length}`;
}

function randomRoutes(family: 4 | 6, count: number): Route[] {
  return Array.from({ length: count }, () => {
    const length = randomLength(family);
    const raw = new Uint8Array(family === 4 ? 4 : 16);
    for (let b = 0; b < raw.length; b++) raw[b] = randomInt(256);
    if (family === 6) raw[0] = 0xfd; // every IPv6 length here is ≥ 16, so this byte survives the mask
    return { bytes: maskTo(raw, length), length };
  });
}

function makePacket(family: 4 | 6, routes: Route[]): Buffer {
  const size = family === 4 ? 4 : 16;
  const dst = Buffer.alloc(size);
  for (let b = 0; b < size; b++) dst[b] = randomInt(256);
  if (random() < 0.9) {
    const route = routes[randomInt(routes.length)];
    for (let bit = 0; bit < route.length; bit++) {
      const mask = 0x80 >> (bit & 7);
      dst[bit >> 3] = (dst[bit >> 3] & ~mask) | (route.bytes[bit >> 3] & mask);
    }
  }
  const packet = Buffer.alloc(family === 4 ? 20 : 40);
  if (family === 4) {
    packet[0] = 0x45;
    packet.writeUInt16BE(20, 2);
    dst.copy(packet, 16);
  } else {
    packet[0] = 0x60;
    dst.copy(packet, 24);
  }
  return packet;
}

function lookupCases(): Case[] {
  const table = new PrefixTable<number>();
  const v4 = randomRoutes(4, Math.ceil(ROUTES / 2));
  const v6 = randomRoutes(6, Math.floor(ROUTES / 2));
  v4.forEach((r, i) => table.insert(Prefix.parse(cidrText(4, r.bytes, r.length)), i));
  v6.forEach((r, i) => table.insert(Prefix.parse(cidrText(6, r.bytes, r.length)), i));
  routeCount = table.size;

  const v4Packets = Array.from({ length: PACKETS }, () => makePacket(4, v4));
  const v6Packets = Array.from({ length: PACKETS }, () => makePacket(6, v6));
  const mixed = Array.from({ length: PACKETS }, (_, i) => (i & 1 ? v6Packets[i] : v4Packets[i]));
  return [
    ...clusterLookupCases(),
    lookupCase(table, 'worst case: random lengths, IPv4 packets', v4Packets),
    lookupCase(table, 'worst case: random lengths, IPv6 packets', v6Packets),
    lookupCase(table, 'worst case: random lengths, IPv4/IPv6 alternating', mixed),
  ];
}

/**
 * What a server really holds: per node its IP (/32, /128) and pod CIDR (/24, /64), ROUTES / 4
 * nodes; packets go to kubelets and pods of random nodes (and 10% to addresses of no node).
 */
function clusterLookupCases(): Case[] {
  const table = new PrefixTable<number>();
  const nodes = Math.max(1, Math.floor(ROUTES / 4));
  const routes: Array<{ family: 4 | 6; route: Route }> = [];
  for (let n = 0; n < nodes; n++) {
    const hi = 64 + (n >> 8),
      lo = n & 0xff;
    const v6Net = Uint8Array.from([0xfd, 0x00, 0x19, 0x00, hi, lo, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
    const v6Node = Uint8Array.from([0xfd, 0x00, 0x19, 0x01, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, hi, lo]);
    for (const route of [
      { family: 4 as const, route: { bytes: Uint8Array.from([10, 240, hi, lo]), length: 32 } },
      { family: 4 as const, route: { bytes: Uint8Array.from([10, hi, lo, 0]), length: 24 } },
      { family: 6 as const, route: { bytes: v6Node, length: 128 } },
      { family: 6 as const, route: { bytes: v6Net, length: 64 } },
    ]) {
      routes.push(route);
      table.insert(Prefix.parse(cidrText(route.family, route.route.bytes, route.route.length)), n);
    }
  }
  const v4 = routes.filter((r) => r.family === 4).map((r) => r.route);
  const v6 = routes.filter((r) => r.family === 6).map((r) => r.route);
  const v4Packets = Array.from({ length: PACKETS }, () => makePacket(4, v4));
  const v6Packets = Array.from({ length: PACKETS }, () => makePacket(6, v6));
  const of = `of ${nodes} nodes`;
  return [
    lookupCase(table, 'cluster routes, IPv4 packets', v4Packets, of),
    lookupCase(table, 'cluster routes, IPv6 packets', v6Packets, of),
  ];
}

/** One lookup benchmark: lookupDestination over `packets`, round robin. */
function lookupCase(table: PrefixTable<number>, name: string, packets: Buffer[], routesNote = ''): Case {
  const hits = packets.filter((p) => table.lookupDestination(p) !== undefined).length;
  return {
    group: 'lookup',
    name: `${name} (${Math.round((100 * hits) / packets.length)}% hit), ${table.size} routes${routesNote ? ` ${routesNote}` : ''}`,
    ops: 3_000_000,
    targetNs: LOOKUP_TARGET_NS,
    run(ops) {
      let found = 0;
      for (let i = 0; i < ops; i++) {
        const value = table.lookupDestination(packets[i & (PACKETS - 1)]);
        if (value !== undefined) found += value;
      }
      sink += found;
      return ops;
    },
  };
}

// ---------------------------------------------------------------- run and report
async function main(): Promise<void> {
  const say = (line: string): void => {
    process.stdout.write(`${line}\n`);
  };
  const cpus = os.cpus();
  say('nodelink micro benchmarks');
  say(
    `# machine: ${cpus[0]?.model ?? '?'} × ${cpus.length} CPUs, kernel ${os.release()}, node ${process.version}; load average ${os
      .loadavg()
      .map((x) => x.toFixed(2))
      .join(' ')}`,
  );
  say(`# ${SAMPLES} samples per case (≤ ${SAMPLE_MS} ms each), medians shown; targets judged on CPU time`);
  say(
    `# bytes/op: growth of heapUsed + arrayBuffers over one loop after a forced GC${gc ? '' : ' — UNAVAILABLE: run node with --expose-gc'}`,
  );
  say('');

  const rows: string[][] = [];
  const misses: string[] = [];
  for (const group of [encodeCases, decodeCases, lookupCases]) {
    for (const c of group()) {
      const r = await measure(c);
      const met = c.targetNs === undefined || r.cpuNsPerOp < c.targetNs;
      if (!met) misses.push(c.name);
      rows.push([
        c.group,
        c.name,
        r.nsPerOp.toFixed(1),
        r.cpuNsPerOp.toFixed(1),
        (1e3 / r.cpuNsPerOp).toFixed(2),
        r.bytesPerOp === undefined ? `– (${r.allocNote})` : r.bytesPerOp.toFixed(1),
        c.targetNs === undefined ? '' : `< ${c.targetNs} ns: ${met ? 'met' : 'NOT met'}`,
      ]);
    }
  }

  const header = ['group', 'operation', 'wall ns/op', 'cpu ns/op', 'Mop/s (cpu)', 'bytes/op', 'target (cpu)'];
  const numeric = (i: number): boolean => i >= 2 && i <= 5;
  const widths = header.map((h, i) => Math.max(h.length, ...rows.map((row) => row[i].length)));
  const line = (cells: string[]): string =>
    `| ${cells.map((cell, i) => (numeric(i) ? cell.padStart(widths[i]) : cell.padEnd(widths[i]))).join(' | ')} |`;
  say(line(header));
  say(`|${widths.map((w, i) => (numeric(i) ? `${'-'.repeat(w + 1)}:` : '-'.repeat(w + 2))).join('|')}|`);
  for (const row of rows) say(line(row));
  say('');
  say(
    `decoded ${decoded} frames, ${(decodedBytes / 1e9).toFixed(2)} GB of payload; route table ${routeCount} distinct routes from ${ROUTES} random (checksum ${sink % 1000})`,
  );
  say(
    misses.length === 0
      ? 'targets: frame decode and route lookup each under 100 ns (CPU time) — met'
      : `targets (decode and lookup under 100 ns, CPU time): NOT met by ${misses.length} case(s), marked above`,
  );
  gcObserver.disconnect();
}

main().catch((err: unknown) => {
  process.stderr.write(`bench-micro: ${err instanceof Error ? err.message : String(err)}\n`);
  process.exitCode = 1;
});

// npm run bench:cipher — what the TLS 1.3 cipher suite costs nodelink's stream. One process
// holds both ends of a TLS connection (Node's tls, as link-server and link-client use it) and
// pushes 64 KiB writes, the size of a frame at MTU 65000, through it; it reports throughput and
// CPU seconds per GB (encrypt + decrypt + Node's TLS and stream layers) for each suite (set
// with `ciphers`, which takes TLS 1.3 suite names too).
//
// It runs as root inside a network namespace it creates and deletes (only its loopback is used),
// like every benchmark here. Environment: ROUNDS=3, MIB=512 per round.
import { execFileSync, spawnSync } from 'node:child_process';
import { once } from 'node:events';
import os from 'node:os';
import { connect, createServer, type TLSSocket } from 'node:tls';
import { fileURLToPath } from 'node:url';
import { generateSeed, keyPairFromSeed } from '../src/auth/index.js';
import { createServerCertificate } from '../src/link-server/index.js';

const SUITES = ['TLS_AES_256_GCM_SHA384', 'TLS_AES_128_GCM_SHA256', 'TLS_CHACHA20_POLY1305_SHA256'];
const ROUNDS = Math.min(10, Math.max(1, Number(process.env['ROUNDS'] ?? 3)));
const MIB = Math.min(4096, Math.max(16, Number(process.env['MIB'] ?? 512)));
const WRITE_BYTES = 64 * 1024;
const ROUND_TIMEOUT_MS = 60_000;

interface Round {
  mbitPerSecond: number;
  cpuSecondsPerGB: number;
}

async function measure(suite: string): Promise<Round> {
  const certificate = await createServerCertificate(keyPairFromSeed(generateSeed()));
  const server = createServer({
    cert: certificate.certPem,
    key: certificate.keyPem,
    minVersion: 'TLSv1.3',
    ciphers: suite,
  });
  server.listen(0, '127.0.0.1');
  await once(server, 'listening');
  const port = (server.address() as { port: number }).port;
  const accepted = once(server, 'secureConnection') as Promise<[TLSSocket]>;
  const client = connect({ host: '127.0.0.1', port, rejectUnauthorized: false, minVersion: 'TLSv1.3', ciphers: suite });
  await once(client, 'secureConnect');
  const [receiver] = await accepted;
  const negotiated = client.getCipher().standardName;
  if (negotiated !== suite) throw new Error(`asked for ${suite}, negotiated ${negotiated}`);

  const total = MIB * 1024 * 1024;
  const chunk = Buffer.alloc(WRITE_BYTES, 0x45);
  let received = 0;
  const done = new Promise<void>((resolve, reject) => {
    const timer = setTimeout(
      () => reject(new Error(`${suite}: round not done in ${ROUND_TIMEOUT_MS} ms`)),
      ROUND_TIMEOUT_MS,
    );
    receiver.on('data', (data: Buffer) => {
      received += data.length;
      if (received >= total) {
        clearTimeout(timer);
        resolve();
      }
    });
  });
  const cpuBefore = process.cpuUsage();
  const started = process.hrtime.bigint();
  for (let sent = 0; sent < total; sent += WRITE_BYTES) {
    if (!client.write(chunk)) await once(client, 'drain');
  }
  await done;
  const seconds = Number(process.hrtime.bigint() - started) / 1e9;
  const cpu = process.cpuUsage(cpuBefore);
  client.destroy();
  receiver.destroy();
  server.close();
  return { mbitPerSecond: (total * 8) / seconds / 1e6, cpuSecondsPerGB: (cpu.user + cpu.system) / 1e6 / (total / 1e9) };
}

function median(values: number[]): number {
  const sorted = [...values].sort((a, b) => a - b);
  return sorted[Math.floor(sorted.length / 2)]!;
}

async function inNamespace(): Promise<void> {
  const cpu = os.cpus()[0]?.model.trim() ?? 'unknown CPU';
  process.stdout.write(
    `nodelink TLS cipher suites: ${ROUNDS} rounds of ${MIB} MiB in 64 KiB writes, both ends in one process\n`,
  );
  process.stdout.write(
    `# machine: ${cpu} × ${os.cpus().length}, kernel ${os.release()}, node ${process.version}, ${process.versions.openssl ? `OpenSSL ${process.versions.openssl}` : ''}; AES-NI: ${/\baes\b/.test(readCpuFlags()) ? 'yes' : 'no'}\n\n`,
  );
  process.stdout.write('| suite | Mbit/s (median) | CPU s/GB (median) |\n|---|---:|---:|\n');
  const results: Record<string, { mbitPerSecond: number; cpuSecondsPerGB: number }> = {};
  for (const suite of SUITES) {
    const rounds: Round[] = [];
    for (let i = 0; i < ROUNDS; i++) rounds.push(await measure(suite));
    results[suite] = {
      mbitPerSecond: Math.round(median(rounds.map((r) => r.mbitPerSecond))),
      cpuSecondsPerGB: Number(median(rounds.map((r) => r.cpuSecondsPerGB)).toFixed(2)),
    };
    process.stdout.write(`| ${suite} | ${results[suite]!.mbitPerSecond} | ${results[suite]!.cpuSecondsPerGB} |\n`);
  }
  process.stdout.write(`\nJSON ${JSON.stringify(results)}\n`);
}

function readCpuFlags(): string {
  try {
    return execFileSync('grep', ['-m1', '^flags', '/proc/cpuinfo'], { encoding: 'utf8' });
  } catch {
    return '';
  }
}

function main(): void {
  if (process.env['NODELINK_BENCH_CIPHER_NS']) {
    inNamespace().then(
      () => process.exit(0),
      (err: unknown) => {
        process.stderr.write(`bench-cipher: ${err instanceof Error ? err.message : String(err)}\n`);
        process.exit(1);
      },
    );
    return;
  }
  if (process.getuid?.() !== 0) {
    process.stderr.write('bench-cipher: needs root (it runs in a network namespace it creates)\n');
    process.exit(1);
  }
  const ns = `nlcipher-${process.pid}`;
  execFileSync('ip', ['netns', 'add', ns]);
  try {
    execFileSync('ip', ['-n', ns, 'link', 'set', 'lo', 'up']);
    const run = spawnSync('ip', ['netns', 'exec', ns, process.execPath, fileURLToPath(import.meta.url)], {
      env: { ...process.env, NODELINK_BENCH_CIPHER_NS: ns },
      stdio: 'inherit',
      timeout: SUITES.length * ROUNDS * ROUND_TIMEOUT_MS,
    });
    process.exitCode = run.status ?? 1;
  } finally {
    execFileSync('ip', ['netns', 'delete', ns]);
  }
}

main();

// npm run loadtest: load generator processes (one per core) open N authenticated sessions to a
// real nodelink server (in the harness's control-plane namespace, real TUN, N kernel routes), each
// a real LinkClient with an in-memory TUN announcing its own /32. Reports handshakes per second,
// server RSS per idle peer, server CPU, pings answered during a reconnect storm, and the time for
// all N to come back after the server restarts, with how often each node's dials failed on the
// way back.
//
//   npm run loadtest                 # N=1000
//   N=5000 npm run loadtest          # the full-size run
//   SERVER_ARGS='--max-unauthenticated 1024' N=5000 npm run loadtest   # extra server flags
//   NODE_AUTH=kubernetes N=5000 npm run loadtest   # Kubernetes mode: a token and a TokenReview
//                                                  # per node (kube-apiserver stand-in)
//   PROFILE_SERVER=/tmp/prof npm run loadtest                          # CPU profile of the server
//   PROFILE_LOADGEN=/tmp/prof npm run loadtest                         # ... and of the generators
//   LOADGEN_PROCS=1 N=5000 npm run loadtest   # one generator process (default: one per core)
//
// Runs as root, inside namespaces it creates and deletes (see scripts/harness/).

import { spawn as spawnChild, type ChildProcess } from 'node:child_process';
import { readFileSync, writeFileSync } from 'node:fs';
import { availableParallelism } from 'node:os';
import { connect } from 'node:net';
import { fileURLToPath } from 'node:url';
import path from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { encodeKey, generateSeed, keyPairFromSeed } from '../src/auth/index.js';
import { LinkClient } from '../src/link-client/index.js';
import { Prefix } from '../src/routing/index.js';
import { silentLogger } from '../src/log.js';
import { Harness, type ManagedProcess } from './harness/index.js';
import { CLI, runCli } from './cluster.js';
import { kubernetesLoad, type KubernetesLoad } from './loadtest-kubernetes.js';
import { cpuSeconds, processTree, rssBytes } from './proc.js';
import { FakeTun } from '../test/support/fake-tun.js';
import { waitFor } from '../test/support/wait.js';
import { nodelinkRoutes } from '../test/support/kernel-routes.js';

const N = Number(process.env['N'] ?? 1000);
const KEEPALIVE_MS = 5000;
const settleTimeoutMs = Number(process.env['SETTLE_TIMEOUT_MS'] ?? 120_000);

/** Peer i announces 198.19.(100 + i / 256).(i % 256)/32, clear of the harness's own nodes. */
function peerRoute(i: number): string {
  return `198.19.${100 + Math.floor(i / 256)}.${i % 256}/32`;
}

/** Memory and CPU of the server: its primary and, with --workers, every worker. */
function procStat(pid: number): { rssKiB: number; cpuSeconds: number } {
  const stat = { rssKiB: 0, cpuSeconds: 0 };
  for (const member of processTree(pid)) {
    try {
      stat.rssKiB += rssBytes(member) / 1024;
      stat.cpuSeconds += cpuSeconds(member);
    } catch {
      // exited between the listing and the read
    }
  }
  return stat;
}

function cpuSecondsOfSelf(): number {
  const usage = process.cpuUsage();
  return (usage.user + usage.system) / 1e6;
}

/** Whether something accepts connections on this Unix socket (the server's admin socket). */
function answers(socketPath: string): Promise<boolean> {
  return new Promise((resolve) => {
    const probe = connect(socketPath, () => {
      probe.destroy();
      resolve(true);
    });
    probe.on('error', () => resolve(false));
  });
}

/**
 * The generator's sessions must start inside a namespace (the root namespace has no route to
 * the harness, and gets none), so this script runs in two roles: the parent builds the harness
 * and runs the server; each child, started with `ip netns exec` in node 1's namespace, runs its
 * slice of the N clients and talks to the parent over stdin/stdout lines.
 */
async function child(): Promise<void> {
  const input = JSON.parse(readFileSync(process.env['NODELINK_LOADGEN']!, 'utf8')) as {
    host: string;
    port: number;
    serverKey: string;
    seeds: string[];
    /** Kubernetes mode: one projected-style token per node; routes then come from the server. */
    tokens?: string[];
  };
  const serverKey = new Uint8Array(Buffer.from(input.serverKey, 'base64'));
  // What happens to each session during a restart, from the observer's per-event hooks (no
  // polling of 5,000 status objects, which would take CPU from the server being measured).
  // This process runs the nodes numbered from FIRST up to (not including) END.
  const [first, end] = (process.env['NODELINK_LOADGEN_SLICE'] ?? `0:${input.seeds.length}`).split(':').map(Number) as [
    number,
    number,
  ];
  const count = end - first;
  const storm = {
    active: false,
    upAt: 0,
    worstRttMs: 0,
    failuresBeforeUp: new Uint16Array(count),
    failuresAfterUp: new Uint16Array(count),
    reasonsAfterUp: new Map<string, number>(),
  };
  const clients = input.seeds.slice(first, end).map((seedText, slot) => {
    const i = first + slot;
    const seed = new Uint8Array(Buffer.from(seedText, 'base64'));
    const client = new LinkClient({
      host: input.host,
      port: input.port,
      serverKey,
      keyPair: keyPairFromSeed(seed),
      name: `load-${i}`,
      routes: input.tokens ? [] : [Prefix.parse(peerRoute(i))],
      ...(input.tokens ? { token: () => input.tokens![i]!, routesFromServer: true } : {}),
      tun: new FakeTun(`load${i}`),
      connection: {
        maxQueueBytes: 1 << 20,
        keepaliveIntervalMs: KEEPALIVE_MS,
        deadAfterMs: KEEPALIVE_MS * 4,
      },
      handshakeTimeoutMs: 10_000,
      backoffBaseMs: 500,
      backoffCapMs: 15_000,
      installRoutes: async () => undefined,
      onRejected: (reason) => {
        process.stdout.write(`REJECTED load-${i} ${reason}\n`);
      },
      log: silentLogger(),
      observer: {
        handshakeFailed: (reason) => {
          if (!storm.active) return;
          // The server listens before it answers on its admin socket, so a refused dial was made
          // while nothing listened, even when this busy process hears of it after UP.
          if (storm.upAt === 0 || reason === 'connection_refused') {
            storm.failuresBeforeUp[slot]!++;
            return;
          }
          storm.failuresAfterUp[slot]!++;
          storm.reasonsAfterUp.set(reason, (storm.reasonsAfterUp.get(reason) ?? 0) + 1);
        },
        pong: (_peer, rttMs) => {
          if (storm.active && rttMs > storm.worstRttMs) storm.worstRttMs = rttMs;
        },
      },
    });
    return client;
  });
  const connected = (): number => clients.reduce((count, client) => count + (client.isAuthenticated ? 1 : 0), 0);
  const cpuAtStart = cpuSecondsOfSelf();
  for (const client of clients) client.start();
  const allConnected = (): Promise<number> =>
    waitFor('every session to authenticate', () => connected() === clients.length, settleTimeoutMs).catch(() => -1);
  const settleMs = await allConnected();
  process.stdout.write(`AUTH ${settleMs} ${(cpuSecondsOfSelf() - cpuAtStart).toFixed(3)}\n`);
  let downAt = 0;
  for await (const line of lines(process.stdin)) {
    if (line === 'DOWN') {
      // The server is about to stop: from now on every failed dial of a session is counted.
      downAt = Date.now();
      storm.active = true;
    } else if (line.startsWith('SIGTERM ')) {
      // When the old server was told to stop (both processes read the same clock).
      downAt = Number(line.slice('SIGTERM '.length));
    } else if (line === 'UP') {
      // The new server answers: the time until every session is back, how often each one's
      // dials failed on the way, and the worst ping RTT seen meanwhile by those already back.
      storm.upAt = Date.now();
      const cpuAtUp = cpuSecondsOfSelf();
      const backMs = await allConnected();
      storm.active = false;
      const back = backMs < 0 ? -1 : Date.now();
      const total = storm.failuresBeforeUp.map((n, i) => n + storm.failuresAfterUp[i]!);
      const most = (counts: Uint16Array): number => counts.reduce((max, n) => Math.max(max, n), 0);
      const overTwo = (counts: Uint16Array): number => counts.reduce((sum, n) => sum + (n > 2 ? 1 : 0), 0);
      const result: GeneratorStorm = {
        fromDownMs: back < 0 ? -1 : back - downAt,
        fromUpMs: back < 0 ? -1 : back - storm.upAt,
        generatorCpuSeconds: Number((cpuSecondsOfSelf() - cpuAtUp).toFixed(3)),
        worstRttMs: Number(storm.worstRttMs.toFixed(1)),
        mostFailuresAfterUp: most(storm.failuresAfterUp),
        mostFailures: most(total),
        nodesFailedMoreThanTwiceAfterUp: overTwo(storm.failuresAfterUp),
        nodesFailedMoreThanTwice: overTwo(total),
        failuresAfterUp: Object.fromEntries(storm.reasonsAfterUp),
      };
      process.stdout.write(`BACK ${JSON.stringify(result)}\n`);
    } else if (line === 'QUIT') {
      break;
    }
  }
  for (const client of clients) await client.stop();
  process.exit(0);
}

async function* lines(stream: NodeJS.ReadableStream): AsyncGenerator<string> {
  let buffered = '';
  for await (const chunk of stream) {
    buffered += String(chunk);
    let newline: number;
    while ((newline = buffered.indexOf('\n')) >= 0) {
      yield buffered.slice(0, newline);
      buffered = buffered.slice(newline + 1);
    }
  }
}

async function parent(): Promise<void> {
  if (process.getuid?.() !== 0) throw new Error('needs root (it creates network namespaces)');
  const h = await Harness.create({ nodes: 1, stubs: false });
  let server: ManagedProcess | undefined;
  const generators: Array<{ process: ChildProcess; replies: AsyncGenerator<string> }> = [];
  let kubernetes: KubernetesLoad | undefined;
  try {
    const serverPair = keyPairFromSeed(generateSeed());
    const serverKeyFile = path.join(h.dir, 'server.key');
    writeFileSync(serverKeyFile, `${encodeKey(serverPair.seed)}\n`, { mode: 0o600 });
    const pairs = Array.from({ length: N }, () => keyPairFromSeed(generateSeed()));
    kubernetes =
      process.env['NODE_AUTH'] === 'kubernetes'
        ? await kubernetesLoad(
            h,
            pairs.map((_, i) => `load-${i}`),
            (i) => peerRoute(i).split('/')[0]!,
          )
        : undefined;
    if (kubernetes) say(`kube-apiserver stand-in up with ${N} Nodes and their pods' tokens`);
    const peersFile = path.join(h.dir, 'peers.json');
    writeFileSync(
      peersFile,
      JSON.stringify({
        peers: pairs.map((pair, i) => ({
          name: `load-${i}`,
          publicKey: encodeKey(pair.publicKey),
          allowedIPs: [peerRoute(i)],
        })),
      }),
    );
    const [host, port] = h.serverEndpoint.split(':') as [string, string];
    const loadgenFile = path.join(h.dir, 'loadgen.json');
    writeFileSync(
      loadgenFile,
      JSON.stringify({
        host,
        port: Number(port),
        serverKey: encodeKey(serverPair.publicKey),
        seeds: pairs.map((pair) => encodeKey(pair.seed)),
        ...(kubernetes ? { tokens: kubernetes.tokens } : {}),
      }),
      { mode: 0o600 },
    );
    const socket = path.join(h.dir, 'server.sock');
    const serverArgs = [
      process.execPath,
      CLI,
      'server',
      '--listen',
      h.serverEndpoint,
      '--key',
      serverKeyFile,
      ...(kubernetes ? kubernetes.serverArgs : ['--peers', peersFile]),
      '--tunnel-cidr',
      h.tunnelCIDR,
      '--admin-socket',
      socket,
      '--keepalive-ms',
      String(KEEPALIVE_MS),
      '--dead-after-ms',
      String(KEEPALIVE_MS * 4),
      '--log-level',
      'warn',
      // Every generated session comes from one address (the NAT router): the per-source rate
      // limit meant for a real node would dominate. The unauthenticated-connection cap stays at
      // its default, so handshake work stays bounded during the storm.
      '--max-new-conns-per-source',
      String(Math.max(50, N)),
      // The generated nodes have no kernel behind their in-memory TUNs to answer path checks.
      '--path-check-interval-ms',
      '0',
      ...(process.env['SERVER_ARGS'] ?? '').split(/\s+/).filter((arg) => arg.length > 0),
    ];
    const startServer = async (): Promise<ManagedProcess> => {
      const started = Date.now();
      // PROFILE_SERVER=DIR writes a CPU profile of each server run there (node --cpu-prof).
      const profile = process.env['PROFILE_SERVER'];
      const proc = h.spawn(
        h.ns.cp,
        profile ? [serverArgs[0]!, '--cpu-prof', `--cpu-prof-dir=${profile}`, ...serverArgs.slice(1)] : serverArgs,
        { name: 'server' },
      );
      // The admin socket opens once the server is ready (listening, its routes in the kernel):
      // connecting to it says so without the second of a CLI start per poll. Nodes that dial
      // between the listen and then are held, not refused.
      await waitFor('server admin socket', () => answers(socket), 60_000);
      say(`server up in ${Date.now() - started} ms with ${N} peers`);
      return proc;
    };
    server = await startServer();
    const routes = (await nodelinkRoutes(h, h.ns.cp)).filter((route) => route.dev === 'nl0').length;
    say(`${routes} kernel routes on nl0`);
    const idle = procStat(server.pid);

    // PROFILE_LOADGEN=DIR: the same for the generators, which share this machine's CPUs.
    const generatorProfile = process.env['PROFILE_LOADGEN'];
    const generatorNode = generatorProfile
      ? [process.execPath, '--cpu-prof', `--cpu-prof-dir=${generatorProfile}`]
      : [process.execPath];
    // One generator process per core (LOADGEN_PROCS): a single one was the storm's critical path,
    // its CPU time equal to the whole storm's while the server still had time to spare.
    const processes = Math.max(1, Math.min(N, Number(process.env['LOADGEN_PROCS'] ?? availableParallelism())));
    say(`${processes} load generator process${processes === 1 ? '' : 'es'}`);
    for (let p = 0; p < processes; p++) {
      const slice = `${Math.floor((N * p) / processes)}:${Math.floor((N * (p + 1)) / processes)}`;
      const child = spawnChild(
        'ip',
        ['netns', 'exec', h.ns.node(1), ...generatorNode, fileURLToPath(import.meta.url)],
        {
          env: { ...process.env, NODELINK_LOADGEN: loadgenFile, NODELINK_LOADGEN_SLICE: slice },
          stdio: ['pipe', 'pipe', 'inherit'],
        },
      );
      generators.push({ process: child, replies: lines(child.stdout!) });
    }
    const tell = (line: string): void => {
      for (const generator of generators) generator.process.stdin!.write(`${line}\n`);
    };
    // The fields of the next PREFIX line of every generator, in order.
    const next = (prefix: string): Promise<string[][]> =>
      Promise.all(
        generators.map(async ({ replies }) => {
          for (;;) {
            const { value, done } = await replies.next();
            if (done) throw new Error('a load generator exited early');
            if (value.startsWith('REJECTED')) throw new Error(value);
            if (value.startsWith(prefix)) return value.split(' ').slice(1);
          }
        }),
      );
    const auths = await next('AUTH');
    // Every generator must have authenticated all of its sessions (-1: not within the timeout).
    const settles = auths.map(([ms]) => Number(ms));
    const settleMs = settles.some((ms) => ms < 0) ? -1 : Math.max(...settles);
    const generatorCpu = Number(auths.reduce((sum, [, cpu]) => sum + Number(cpu), 0).toFixed(3));
    if (settleMs < 0) throw new Error(`not all ${N} sessions authenticated within ${settleTimeoutMs} ms`);
    const handshakeCpu = procStat(server.pid).cpuSeconds - idle.cpuSeconds;
    say(
      `${N} sessions authenticated in ${settleMs} ms: ${Math.round(N / (settleMs / 1000))} handshakes/s; CPU per handshake ${((handshakeCpu / N) * 1000).toFixed(2)} ms in the server, ${((generatorCpu / N) * 1000).toFixed(2)} ms in the generator`,
    );
    await sleep(3 * KEEPALIVE_MS);
    const loaded = procStat(server.pid);
    const perPeerKiB = (loaded.rssKiB - idle.rssKiB) / N;
    say(
      `server RSS ${idle.rssKiB} KiB idle → ${loaded.rssKiB} KiB with ${N} idle sessions: ${perPeerKiB.toFixed(1)} KiB per peer; idle CPU ${(((loaded.cpuSeconds - idle.cpuSeconds - handshakeCpu) / ((3 * KEEPALIVE_MS) / 1000)) * 100).toFixed(1)}% of a core`,
    );

    tell('DOWN');
    await sleep(200);
    const restartedAt = Date.now();
    tell(`SIGTERM ${restartedAt}`);
    await server.stop('SIGTERM');
    server = await startServer();
    say(`restart: old server stopped and new one answering ${Date.now() - restartedAt} ms after SIGTERM`);
    const serverCpuAtUp = procStat(server.pid).cpuSeconds;
    tell('UP');
    const backs = (await next('BACK')).map(([json]) => JSON.parse(json!) as GeneratorStorm);
    const serverStormCpu = procStat(server.pid).cpuSeconds - serverCpuAtUp;
    const storm = mergeStorms(backs);
    say(
      storm.fromUpMs < 0
        ? `after a restart NOT all ${N} came back within ${settleTimeoutMs} ms`
        : `after a server restart all ${N} sessions were back ${storm.fromUpMs} ms after the new server answered (${storm.fromDownMs} ms after the old one was told to stop); worst ping RTT of sessions already back meanwhile: ${storm.worstRttMs} ms`,
    );
    say(
      `CPU from the new server answering until all were back: ${serverStormCpu.toFixed(2)} s in the server, ${storm.generatorCpuSeconds.toFixed(2)} s in the generator`,
    );
    say(
      `failed dials per node: at most ${storm.mostFailuresAfterUp} once the new server answered (${storm.nodesFailedMoreThanTwiceAfterUp} nodes more than twice: ${JSON.stringify(storm.failuresAfterUp)}); at most ${storm.mostFailures} counting those while no server listened (${storm.nodesFailedMoreThanTwice} nodes more than twice)`,
    );
    // Connections the restarted server turned away during the storm (each one a client backing off).
    const stormRefused =
      (
        JSON.parse((await runCli(['status', '--json', '--admin-socket', socket])).stdout) as {
          refusedConnections?: Record<string, number>;
        }
      ).refusedConnections ?? {};
    say(`refused during the storm: ${JSON.stringify(stormRefused)}`);
    const summary = {
      n: N,
      handshakesPerSecond: Math.round(N / (settleMs / 1000)),
      handshakeCpuSeconds: Number(handshakeCpu.toFixed(2)),
      generatorHandshakeCpuSeconds: generatorCpu,
      stormServerCpuSeconds: Number(serverStormCpu.toFixed(2)),
      stormGeneratorCpuSeconds: storm.generatorCpuSeconds,
      rssPerIdlePeerKiB: Number(perPeerKiB.toFixed(1)),
      stormSettleMs: storm.fromUpMs,
      stormSettleFromStopMs: storm.fromDownMs,
      worstRttDuringStormMs: storm.worstRttMs,
      mostFailedDialsPerNode: storm.mostFailuresAfterUp,
      nodesFailedMoreThanTwice: storm.nodesFailedMoreThanTwiceAfterUp,
      mostFailedDialsPerNodeWithDowntime: storm.mostFailures,
      stormRefused,
      kernelRoutes: routes,
    };
    say(`JSON ${JSON.stringify(summary)}`);
    tell('QUIT');
    await Promise.all(generators.map(({ process: child }) => new Promise((resolve) => child.once('exit', resolve))));
  } finally {
    for (const { process: child } of generators)
      if (child.exitCode === null && child.pid) process.kill(child.pid, 'SIGKILL');
    await server?.stop();
    if (kubernetes) say(`TokenReviews answered by the stand-in: ${(await kubernetes.counts())['tokenReviews']}`);
    await kubernetes?.stop();
    await h.destroy();
  }
}

/** What one generator process reports about the storm (its BACK line). */
interface GeneratorStorm {
  fromDownMs: number;
  fromUpMs: number;
  generatorCpuSeconds: number;
  worstRttMs: number;
  mostFailuresAfterUp: number;
  mostFailures: number;
  nodesFailedMoreThanTwiceAfterUp: number;
  nodesFailedMoreThanTwice: number;
  failuresAfterUp: Record<string, number>;
}

/** The storm over all generators: back when the last one's nodes were, the costs summed. */
function mergeStorms(storms: GeneratorStorm[]): GeneratorStorm {
  const failed = storms.some((storm) => storm.fromUpMs < 0);
  const most = (pick: (storm: GeneratorStorm) => number): number => Math.max(...storms.map(pick));
  const sum = (pick: (storm: GeneratorStorm) => number): number =>
    storms.reduce((total, storm) => total + pick(storm), 0);
  const failuresAfterUp: Record<string, number> = {};
  for (const storm of storms) {
    for (const [reason, n] of Object.entries(storm.failuresAfterUp))
      failuresAfterUp[reason] = (failuresAfterUp[reason] ?? 0) + n;
  }
  return {
    fromDownMs: failed ? -1 : most((storm) => storm.fromDownMs),
    fromUpMs: failed ? -1 : most((storm) => storm.fromUpMs),
    generatorCpuSeconds: Number(sum((storm) => storm.generatorCpuSeconds).toFixed(3)),
    worstRttMs: most((storm) => storm.worstRttMs),
    mostFailuresAfterUp: most((storm) => storm.mostFailuresAfterUp),
    mostFailures: most((storm) => storm.mostFailures),
    nodesFailedMoreThanTwiceAfterUp: sum((storm) => storm.nodesFailedMoreThanTwiceAfterUp),
    nodesFailedMoreThanTwice: sum((storm) => storm.nodesFailedMoreThanTwice),
    failuresAfterUp,
  };
}

function say(line: string): void {
  process.stdout.write(`${line}\n`);
}

const role = process.env['NODELINK_LOADGEN'] ? child : parent;
role().then(
  () => process.exit(0),
  (err: unknown) => {
    process.stderr.write(`loadtest: ${err instanceof Error ? err.message : String(err)}\n`);
    process.exit(1);
  },
);

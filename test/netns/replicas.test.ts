// Several server replicas behind one load-balanced address, as a Deployment behind a Service:
// each replica in its own control-plane namespace, all with the same flags (tunnel CIDR, key,
// peers file), the router DNATing each new connection to one of them at random. The nodes are
// given only that address; every node must find and hold every replica, and every replica's
// control plane must reach every kubelet and pod, through kills, returns and a scale-up.

import { expect } from 'chai';
import path from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { fetchStatus, type DaemonStatus } from '../../src/admin/index.js';
import type { ManagedProcess } from '../../scripts/harness/index.js';
import { CLI } from '../../scripts/cluster.js';
import { clusterRig, clusterServerFlags, leavesNothingBehind } from '../support/cluster-rig.js';

const NODES = 5;
const REPLICAS = 3;
/** Search waits capped low, so a node finds a replica that came back well within the 30 s asked. */
const SEARCH_CAP_MS = 2000;
const FIND_ALL_MS = 30_000;

describe('server replicas behind one load-balanced address', function () {
  this.timeout(300_000);
  const rig = clusterRig({ nodes: NODES, controlPlanes: REPLICAS });
  const replicas = new Map<number, ManagedProcess>();
  const figures: string[] = [];

  const socketOf = (i: number): string => path.join(rig.h.dir, `replica-${i}.sock`);

  /** Replica i: the same flags as every other, but for its listen address and admin socket. */
  const startReplica = async (i: number, count: number): Promise<void> => {
    const { h, cluster } = rig;
    const proc = h.spawn(
      h.ns.controlPlane(i),
      [
        process.execPath,
        CLI,
        'server',
        '--listen',
        `0.0.0.0:${h.serverPort}`,
        '--key',
        cluster.serverKey.keyFile,
        ...clusterServerFlags(rig),
        '--server-count',
        String(count),
        '--path-check-interval-ms',
        '0',
        '--admin-socket',
        socketOf(i),
      ],
      { name: `nodelink-replica-${i}` },
    );
    replicas.set(i, proc);
    await proc.waitForOutput('server ready', 15_000);
  };

  const startNode = (n: number): void => {
    const { h, cluster } = rig;
    const args = cluster.clientArgs(n);
    args[args.indexOf('--server') + 1] = h.loadBalancerEndpoint;
    args.push('--replica-search-cap-ms', String(SEARCH_CAP_MS), '--backoff-cap-ms', '4000');
    cluster.clients.set(n, h.spawn(h.ns.node(n), args, { name: `nodelink-client-${n}` }));
  };

  const nodeStatus = (n: number): Promise<DaemonStatus> => fetchStatus(rig.cluster.clientSocket(n));
  const replicaStatus = (i: number): Promise<DaemonStatus> => fetchStatus(socketOf(i));

  /** Server IDs of the running replicas, by control plane. */
  const replicaIds = async (which: readonly number[]): Promise<string[]> =>
    Promise.all(which.map(async (i) => (await replicaStatus(i)).serverId!));

  /** Polls every node until each holds a session to exactly these replicas; returns the ms it took. */
  const untilEveryNodeHolds = async (which: readonly number[], timeoutMs = FIND_ALL_MS): Promise<number> => {
    const ids = (await replicaIds(which)).sort();
    const started = Date.now();
    let last = '';
    while (Date.now() - started < timeoutMs) {
      const held = await Promise.all(
        Array.from({ length: NODES }, async (_, k) => {
          const status = await nodeStatus(k + 1).catch(() => undefined);
          return [...(status?.replicas?.[0]?.held ?? [])].sort();
        }),
      );
      last = held.map((list, k) => `node ${k + 1}: ${list.join(' ') || '-'}`).join('; ');
      if (held.every((list) => JSON.stringify(list) === JSON.stringify(ids))) return Date.now() - started;
      await sleep(200);
    }
    throw new Error(`not every node holds replicas ${ids.join(', ')} after ${timeoutMs} ms: ${last}`);
  };

  /**
   * One request to every kubelet (HTTPS) and every pod (HTTP, IPv4 and IPv6) from control plane
   * i, in one curl; returns the URLs that failed.
   */
  const failuresFrom = async (i: number): Promise<string[]> => {
    const { h } = rig;
    const urls: string[] = [];
    for (let n = 1; n <= NODES; n++) urls.push(h.kubeletURL(n), h.podURL(n, 1), h.podURL(n, 1, '/', true));
    const result = await h.exec(
      h.ns.controlPlane(i),
      // -o applies to one URL: each needs its own, or the bodies land among the status codes.
      [
        'curl',
        '-sk',
        '-g',
        '--max-time',
        '3',
        '-w',
        '%{http_code}\\n',
        ...urls.flatMap((url) => ['-o', '/dev/null', url]),
      ],
      { allowFail: true, timeoutMs: 60_000 },
    );
    const codes = result.stdout.trim().split('\n');
    return urls.filter((_, k) => !/^[23]\d\d$/.test(codes[k] ?? ''));
  };

  before(async function () {
    const { h } = rig;
    for (let i = 1; i <= REPLICAS; i++) await startReplica(i, REPLICAS);
    await h.loadBalance([1, 2, 3]);
    const started = Date.now();
    for (let n = 1; n <= NODES; n++) startNode(n);
    await untilEveryNodeHolds([1, 2, 3]);
    figures.push(`start: every node holds all 3 replicas ${Date.now() - started} ms after the clients started`);
  });

  after(function () {
    if (figures.length > 0) console.log(`\n      replicas: ${figures.join('\n      replicas: ')}\n`);
  });

  it('every node holds one session to each replica, and says so', async function () {
    const ids = await replicaIds([1, 2, 3]);
    expect(new Set(ids).size, 'distinct server IDs').to.equal(3);
    for (let n = 1; n <= NODES; n++) {
      const status = await nodeStatus(n);
      const entry = status.replicas![0]!;
      expect(entry.count).to.equal(3);
      expect(entry.complete).to.equal(true);
      expect([...entry.held].sort()).to.deep.equal([...ids].sort());
      expect(status.peers.filter((peer) => peer.connected)).to.have.length(3);
    }
    for (let i = 1; i <= REPLICAS; i++) {
      const status = await replicaStatus(i);
      expect(status.serverCount).to.equal(3);
      expect(
        status.peers.every((peer) => peer.connected),
        `replica ${i} sees every node`,
      ).to.equal(true);
    }
  });

  it("every replica's control plane reaches every kubelet and pod, over the one shared tunnel address", async function () {
    for (let round = 0; round < 3; round++) {
      for (let i = 1; i <= REPLICAS; i++) expect(await failuresFrom(i), `control plane ${i}`).to.deep.equal([]);
    }
  });

  it('one replica killed: the other two reach every node with no failed request; back, every node holds it again', async function () {
    const checked = { requests: 0, failed: [] as string[] };
    let killedAt = 0;
    const loop = (async () => {
      // From just before the kill until well after the nodes noticed it.
      const until = Date.now() + 12_000;
      while (Date.now() < until) {
        for (const i of [2, 3]) {
          const failed = await failuresFrom(i);
          checked.requests += NODES * 3;
          checked.failed.push(...failed.map((url) => `cp${i} ${url} at +${Date.now() - killedAt} ms`));
        }
      }
    })();
    await sleep(1000);
    killedAt = Date.now();
    await replicas.get(1)!.stop('SIGKILL');
    // The killed replica's control plane fails fast: its routes went with its TUN.
    const fastStarted = Date.now();
    const own = await failuresFrom(1);
    expect(own, 'control plane 1 reaches nothing').to.have.length(NODES * 3);
    expect(Date.now() - fastStarted, 'and fails at once, not by timeout').to.be.below(2000);
    await loop;
    figures.push(`kill: ${checked.failed.length} of ${checked.requests} requests from the other two failed`);
    expect(checked.failed, 'failed requests from the surviving replicas').to.deep.equal([]);
    for (let n = 1; n <= NODES; n++) {
      const entry = (await nodeStatus(n)).replicas![0]!;
      expect(entry.held, `node ${n}`).to.have.length(2);
      expect(entry.complete).to.equal(false);
      expect(entry.missing.length + entry.unseen).to.equal(1);
    }
    const restarted = Date.now();
    await startReplica(1, REPLICAS);
    const took = await untilEveryNodeHolds([1, 2, 3]);
    figures.push(`restart: every node holds the restarted replica ${Date.now() - restarted} ms after its start`);
    expect(took).to.be.below(FIND_ALL_MS);
    for (let i = 1; i <= REPLICAS; i++) expect(await failuresFrom(i), `control plane ${i}`).to.deep.equal([]);
  });

  it('scales from 2 to 3 replicas live: every node finds the third', async function () {
    const { h } = rig;
    // Down to two replicas that say so: the third stopped, the others restarted with count 2.
    await replicas.get(3)!.stop('SIGTERM');
    await h.loadBalance([1, 2]);
    for (const i of [1, 2]) {
      await replicas.get(i)!.stop('SIGTERM');
      await startReplica(i, 2);
      await sleep(500);
    }
    await untilEveryNodeHolds([1, 2]);
    for (let n = 1; n <= NODES; n++) expect((await nodeStatus(n)).replicas![0]!.complete, `node ${n}`).to.equal(true);
    // Scale up: the third replica starts with count 3 and joins the load balancer; the other two
    // are restarted with count 3, one after the other, as a rollout does.
    const started = Date.now();
    await startReplica(3, 3);
    await h.loadBalance([1, 2, 3]);
    for (const i of [1, 2]) {
      await replicas.get(i)!.stop('SIGTERM');
      await startReplica(i, 3);
    }
    const took = await untilEveryNodeHolds([1, 2, 3]);
    figures.push(
      `scale-up: every node holds all 3 replicas ${Date.now() - started} ms after the third started (${took} ms after the rollout)`,
    );
    for (let i = 1; i <= REPLICAS; i++) expect(await failuresFrom(i), `control plane ${i}`).to.deep.equal([]);
  });

  it('stops the replicas', async function () {
    await Promise.all([...replicas.values()].map((proc) => proc.stop()));
  });

  leavesNothingBehind(rig);
});

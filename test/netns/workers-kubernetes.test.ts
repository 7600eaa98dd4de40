// Kubernetes mode with a server of two worker processes (--workers 2 --node-auth kubernetes),
// through the real CLI and the kube-apiserver STAND-IN (scripts/kube-standin.ts), as
// kubernetes-identity.test.ts runs it with one process. Each worker keeps its own Node watch and
// TokenReview cache: nodes join through either worker with a projected token and nothing else,
// their InternalIPs and pod CIDRs go into the TUN of the worker holding the session, a pod CIDR
// change reconnects the node with its new routes, and a deleted Node loses its session and every
// route whichever worker held it.
import { expect } from 'chai';
import { writeFileSync } from 'node:fs';
import path from 'node:path';
import type { ManagedProcess } from '../../scripts/harness/index.js';
import { startKubeStandin, type StandinControl } from '../../scripts/kube-standin-control.js';
import type { DaemonStatus } from '../../src/admin/index.js';
import { type KernelRoute } from '../../src/tun/index.js';
import { nodelinkRoutes, routeDevice as deviceFor } from '../support/kernel-routes.js';
import { clusterRig, kubernetesClientArgv, kubernetesServerArgv, leavesNothingBehind } from '../support/cluster-rig.js';
import { waitFor } from '../support/wait.js';

const NS = 'nodelink';
const SA = 'nodelink-client';
const TUNS = ['nl0', 'nl0-1'];
const METRICS = '127.0.0.1:9478';

describe('Kubernetes mode with --workers 2: Node watch and TokenReview in every worker (kube-apiserver stand-in)', function () {
  this.timeout(120_000);
  const rig = clusterRig({ nodes: 4 });
  let control: StandinControl;
  let standin: ManagedProcess;
  let kubeconfig: string;
  const clients = new Map<number, ManagedProcess>();
  /** Each node's pod CIDR as its Node says now. */
  const podCIDRs = new Map<number, string>();
  /** The nodes whose Node object exists. */
  const live = new Set<number>();

  const upsertNode = async (n: number, podCIDR = rig.h.podCIDR(n)): Promise<void> => {
    podCIDRs.set(n, podCIDR);
    live.add(n);
    await control.upsertNode({
      name: rig.h.nodeName(n),
      internalIPs: [rig.h.nodeIP(n), rig.h.nodeIP6(n)],
      podCIDRs: [podCIDR],
    });
  };
  const startTokenClient = async (n: number): Promise<void> => {
    const pod = `nodelink-client-${n}`;
    await control.upsertPod({ namespace: NS, name: pod, nodeName: rig.h.nodeName(n) });
    const token = await control.mint({ namespace: NS, serviceAccount: SA, pod, audience: 'nodelink' });
    const tokenFile = path.join(rig.h.dir, `k8s-client-${n}.token`);
    writeFileSync(tokenFile, token, { mode: 0o600 });
    const args = kubernetesClientArgv(rig, {
      tokenFile,
      name: rig.h.nodeName(n),
      adminSocket: path.join(rig.h.dir, `k8s-client-${n}.sock`),
    });
    clients.set(n, rig.h.spawn(rig.h.ns.node(n), args, { name: `k8s-client-${n}` }));
  };

  /** Every IPv4 and IPv6 route of the control plane with protocol 78. */
  const ownRoutes = (): Promise<KernelRoute[]> => nodelinkRoutes(rig.h, rig.h.ns.cp);
  /** The device `ip route get` picks for an address in the control plane (undefined: none). */
  const routeDevice = (address: string): Promise<string | undefined> => deviceFor(rig.h, rig.h.ns.cp, address);
  /** A pod CIDR's first pod address (the harness's pods keep theirs; this one only needs a route). */
  const inside = (cidr: string): string => cidr.replace(/\.0\/24$/, '.1');

  /** Why the kernel routes do not follow the sessions yet, or undefined once they do. */
  const routesOff = async (status: DaemonStatus): Promise<string | undefined> => {
    const { h } = rig;
    for (const n of live) {
      const peer = status.peers.find((p) => p.name === h.nodeName(n));
      if (!peer?.connected) return `${h.nodeName(n)} not connected`;
      const tun = TUNS[peer.worker ?? -1];
      if (!tun) return `${peer.name} held by no worker`;
      for (const address of [h.nodeIP(n), h.nodeIP6(n), inside(podCIDRs.get(n)!)]) {
        const dev = await routeDevice(address);
        if (dev !== tun) return `${address} (${peer.name}, worker ${peer.worker}) routed to ${dev ?? 'nothing'}`;
      }
    }
    return undefined;
  };
  /** Waits until every live node is connected and routed into the TUN of the worker holding it. */
  const settled = async (timeoutMs: number): Promise<DaemonStatus> => {
    let status: DaemonStatus | undefined;
    let why: string | undefined = 'no status';
    await waitFor(
      'every node connected, routed into its worker’s TUN',
      async () => {
        status = await rig.cluster.status().catch(() => undefined);
        why = status ? await routesOff(status) : 'no status';
        return why === undefined;
      },
      timeoutMs,
    ).catch((err: Error) => {
      throw new Error(`${err.message}: ${why}`);
    });
    return status!;
  };

  before(async function () {
    if (!rig.h) return;
    ({ process: standin, control, kubeconfig } = await startKubeStandin(rig.h));
    for (const n of [1, 2, 3]) await upsertNode(n);
    const server = rig.h.spawn(
      rig.h.ns.cp,
      kubernetesServerArgv(rig, kubeconfig, `${NS}:${SA}`, ['--workers', '2', '--metrics', METRICS]),
      { name: 'nodelink-server-k8s-workers' },
    );
    rig.cluster.server = server;
    await server.waitForOutput('server ready', 30_000);
  });

  after(async () => {
    await Promise.all([...clients.values()].map((proc) => proc.stop()));
    await standin?.stop();
  });

  it('nodes join through both workers with a token alone; each node routed into its worker’s TUN, every kubelet and pod reached', async () => {
    for (const n of [1, 2, 3]) await startTokenClient(n);
    const status = await settled(30_000);
    expect(status.workers!.map((w) => w.tun)).to.deep.equal(TUNS);
    const sessions = status.workers!.map((w) => w.sessions);
    expect(sessions.reduce((a, b) => a + b, 0)).to.equal(3);
    expect(Math.min(...sessions), `sessions per worker ${sessions.join(', ')}`).to.be.greaterThan(0);
    for (const n of [1, 2, 3]) {
      for (const v6 of [false, true]) {
        const kubelet = await rig.h.curl(rig.h.ns.cp, rig.h.kubeletURL(n, '/healthz', v6), { timeoutS: 5 });
        expect(kubelet.ok, `kubelet ${n} v6=${v6}: ${kubelet.error}`).to.equal(true);
      }
      const pod = await rig.h.curl(rig.h.ns.cp, rig.h.podURL(n, 1), { timeoutS: 5 });
      expect(pod.ok, `pod of node ${n}: ${pod.error}`).to.equal(true);
    }
  });

  it('one /metrics for the server: every worker’s Kubernetes nodes and handshakes', async () => {
    const metrics = await rig.h.curl(rig.h.ns.cp, `http://${METRICS}/metrics`);
    expect(metrics.ok, metrics.error).to.equal(true);
    expect(metrics.body).to.match(/^nodelink_peers_connected 3$/m);
    const handshakes = [...metrics.body.matchAll(/^nodelink_handshakes_total\{peer="([^"]+)"\} (\d+)$/gm)];
    expect(handshakes.filter((m) => Number(m[2]) >= 1).map((m) => m[1])).to.include.members(
      [1, 2, 3].map((n) => rig.h.nodeName(n)),
    );
  });

  it('a Node added during the run joins through whichever worker takes its dial', async () => {
    await upsertNode(4);
    await startTokenClient(4);
    const status = await settled(30_000);
    expect(status.peers.filter((p) => p.connected)).to.have.length(4);
    expect((await rig.h.curl(rig.h.ns.cp, rig.h.kubeletURL(4), { timeoutS: 5 })).ok).to.equal(true);
  });

  it('a pod CIDR change on a node the second worker holds reconnects it with its new routes; the old ones go', async () => {
    const before = await rig.cluster.status();
    const moving = [...live].find((n) => before.peers.find((p) => p.name === rig.h.nodeName(n))?.worker === 1);
    expect(moving, 'a node held by the second worker').to.not.equal(undefined);
    const old = podCIDRs.get(moving!)!;
    const moved = `198.19.${90 + moving!}.0/24`;
    await upsertNode(moving!, moved);
    // Until the worker's Node watch sees the change, the old routes are a settled state too.
    const name = rig.h.nodeName(moving!);
    let routes: string[] = [];
    await waitFor(
      'the moved node back with its new pod CIDR',
      async () => {
        routes = (await rig.cluster.status().catch(() => undefined))?.peers.find((p) => p.name === name)?.routes ?? [];
        return routes.includes(moved) && !routes.includes(old);
      },
      30_000,
    ).catch((err: Error) => {
      throw new Error(`${err.message}: routes ${routes.join(', ')}`);
    });
    const status = await settled(30_000);
    const peer = status.peers.find((p) => p.name === name)!;
    expect(peer.routes).to.include(moved).and.not.include(old);
    const left = (await ownRoutes()).filter((r) => r.dst.text === old);
    expect(
      left.map((r) => `${r.dev ?? 'unreachable'} ${r.metric}`),
      `routes left for ${old}`,
    ).to.deep.equal([]);
  });

  it('a deleted Node loses its session and every route, whichever worker held it', async () => {
    const before = await rig.cluster.status();
    const victims = [0, 1].map((worker) =>
      [...live].find((n) => before.peers.find((p) => p.name === rig.h.nodeName(n))?.worker === worker)!,
    );
    expect(victims.every((n) => n !== undefined)).to.equal(true);
    const gone = victims.flatMap((n) => [rig.h.nodeIP(n) + '/32', rig.h.nodeIP6(n) + '/128', podCIDRs.get(n)!]);
    for (const n of victims) {
      await control.deleteNode(rig.h.nodeName(n));
      live.delete(n);
    }
    let left: string[] = [];
    await waitFor(
      'the deleted nodes’ sessions and routes gone',
      async () => {
        const status = await rig.cluster.status().catch(() => undefined);
        const names = victims.map((n) => rig.h.nodeName(n));
        if (!status || status.peers.some((p) => names.includes(p.name))) return false;
        left = (await ownRoutes()).filter((r) => gone.includes(r.dst.text)).map((r) => `${r.dst.text} ${r.dev}`);
        return left.length === 0;
      },
      15_000,
    ).catch((err: Error) => {
      throw new Error(`${err.message}: left ${left.join(', ')}`);
    });
    for (const n of victims) expect(clients.get(n)!.output()).to.contain('was deleted from the cluster');
    await settled(15_000);
  });

  it('kube-apiserver away: a killed worker’s nodes come back through the other on its shared verdicts', async () => {
    const before = await rig.cluster.status();
    const holding = (worker: number): number[] =>
      [...live].filter((n) => before.peers.find((p) => p.name === rig.h.nodeName(n))?.worker === worker);
    const victim = holding(1).length > 0 ? 1 : 0;
    const moving = holding(victim);
    expect(moving.length, 'nodes held by the worker to kill').to.be.greaterThan(0);
    const { pid, restarts } = before.workers![victim]!;
    const downMs = 25_000;
    const downUntil = Date.now() + downMs;
    await control.goDown(downMs);
    process.kill(pid!, 'SIGKILL');
    // The other worker never reviewed these nodes' tokens: it admits them on the verdicts the
    // killed one shared, and routes them from the Nodes it knows, with kube-apiserver away.
    const status = await settled(downMs - 5000);
    expect(Date.now(), 'back before kube-apiserver').to.be.lessThan(downUntil);
    for (const n of moving) expect(status.peers.find((p) => p.name === rig.h.nodeName(n))!.worker).to.equal(1 - victim);
    for (const n of live) {
      const kubelet = await rig.h.curl(rig.h.ns.cp, rig.h.kubeletURL(n), { timeoutS: 5 });
      expect(kubelet.ok, `kubelet ${n}: ${kubelet.error}`).to.equal(true);
    }
    await waitFor(
      'the killed worker running again once kube-apiserver is back',
      async () => {
        const w = (await rig.cluster.status().catch(() => undefined))?.workers?.[victim];
        return w?.state === 'running' && w.restarts > restarts && w.pid !== pid;
      },
      60_000,
    );
  });

  leavesNothingBehind(rig);
});

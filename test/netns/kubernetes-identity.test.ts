// Kubernetes mode in namespaces, with real processes: nodes prove who they are with projected
// service-account tokens, checked by TokenReview against the kube-apiserver STAND-IN
// (scripts/kube-standin.ts, a process in the control-plane namespace), and join or leave as
// their Node objects come and go. No node holds a key file; no peers file exists.
import { expect } from 'chai';
import { writeFileSync } from 'node:fs';
import path from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import type { ManagedProcess } from '../../scripts/harness/index.js';
import { startKubeStandin, type StandinControl } from '../../scripts/kube-standin-control.js';
import { clusterRig, kubernetesClientArgv, kubernetesServerArgv, leavesNothingBehind } from '../support/cluster-rig.js';
import { waitFor } from '../support/wait.js';

const NS = 'nodelink';
const SA = 'nodelink-client';

describe('Kubernetes mode in namespaces: tokens, TokenReview and the Node watch (kube-apiserver stand-in)', function () {
  this.timeout(120_000);
  const rig = clusterRig({ nodes: 3 });
  let control: StandinControl;
  let standin: ManagedProcess;
  let kubeconfig: string;
  let server: ManagedProcess;
  const extra: ManagedProcess[] = [];
  const pods = new Set<number>();

  const tokenFile = (label: string, token: string): string => {
    const file = path.join(rig.h.dir, `${label}.token`);
    writeFileSync(file, token, { mode: 0o600 });
    return file;
  };
  const addNode = async (n: number, podCIDR = rig.h.podCIDR(n)): Promise<void> => {
    await control.upsertNode({ name: rig.h.nodeName(n), internalIPs: [rig.h.nodeIP(n)], podCIDRs: [podCIDR] });
  };
  const podToken = async (n: number, opts: { audience?: string; account?: string; expiresInSec?: number } = {}) => {
    const pod = `nodelink-client-${n}`;
    // Re-creating a pod gives it a new UID and voids its earlier tokens, as in a real cluster.
    if (!pods.has(n)) await control.upsertPod({ namespace: NS, name: pod, nodeName: rig.h.nodeName(n) });
    pods.add(n);
    return control.mint({
      namespace: NS,
      serviceAccount: opts.account ?? SA,
      pod,
      audience: opts.audience ?? 'nodelink',
      expiresInSec: opts.expiresInSec ?? 3600,
    });
  };
  /** A client with a token and nothing else: no key file, no routes. */
  const startTokenClient = (n: number, token: string, opts: { name?: string; label?: string; tun?: string } = {}) => {
    const label = opts.label ?? `k8s-client-${n}`;
    const args = kubernetesClientArgv(
      rig,
      {
        tokenFile: tokenFile(label, token),
        name: opts.name ?? rig.h.nodeName(n),
        adminSocket: path.join(rig.h.dir, `${label}.sock`),
      },
      ['--tun', opts.tun ?? 'nl0'],
    );
    const proc = rig.h.spawn(rig.h.ns.node(n), args, { name: label });
    extra.push(proc);
    return proc;
  };
  const connected = async (): Promise<string[]> => {
    const status = await rig.cluster.status().catch(() => undefined);
    return (status?.peers ?? []).filter((peer) => peer.connected).map((peer) => peer.name);
  };
  const serverRoutes = async (): Promise<string> =>
    (await rig.h.exec(rig.h.ns.cp, ['ip', 'route', 'show', 'table', 'all', 'dev', 'nl0'])).stdout;

  before(async function () {
    if (!rig.h) return;
    ({ process: standin, control, kubeconfig } = await startKubeStandin(rig.h));
    await addNode(1);
    await addNode(2);
    server = rig.h.spawn(rig.h.ns.cp, kubernetesServerArgv(rig, kubeconfig, `${NS}:${SA}`), {
      name: 'nodelink-server-k8s',
    });
    rig.cluster.server = server;
    await server.waitForOutput('server ready', 20_000);
  });

  after(async () => {
    await Promise.all(extra.map((proc) => proc.stop()));
    await standin?.stop();
  });

  it('two nodes join with a projected token and nothing else; the control plane reaches their kubelets and pods', async () => {
    startTokenClient(1, await podToken(1));
    startTokenClient(2, await podToken(2));
    await waitFor('both nodes connected', async () => (await connected()).length === 2, 20_000);
    for (const n of [1, 2]) {
      expect((await rig.h.curl(rig.h.ns.cp, rig.h.kubeletURL(n))).ok, `kubelet ${n}`).to.equal(true);
      expect((await rig.h.curl(rig.h.ns.cp, rig.h.podURL(n, 1))).ok, `pod of node ${n}`).to.equal(true);
    }
    const routes = await serverRoutes();
    expect(routes).to.include(rig.h.podCIDR(1)).and.to.include(rig.h.podCIDR(2));
  });

  it("refuses node 1's token presented as node 2, and tokens that are expired, for another audience or account", async () => {
    const cases: Array<[string, string, RegExp]> = [
      ['as-node-2', await podToken(1), /on node "[^"]+-1", not to/],
      ['expired', await podToken(1, { expiresInSec: -60 }), /expired/],
      ['audience', await podToken(1, { audience: 'someone-else' }), /audience/],
      ['account', await podToken(1, { account: 'default' }), /not to system:serviceaccount/],
    ];
    const procs = cases.map(([label, token], i) =>
      startTokenClient(1, token, {
        label: `bad-${label}`,
        tun: `nlbad${i}`,
        ...(i === 0 ? { name: rig.h.nodeName(2) } : {}),
      }),
    );
    for (const [i, [label, , reason]] of cases.entries()) {
      await waitFor(`${label} refused with its reason`, () => reason.test(procs[i]!.output()), 15_000);
    }
    await Promise.all(procs.map((proc) => proc.stop()));
    expect(await connected()).to.have.members([rig.h.nodeName(1), rig.h.nodeName(2)]);
  });

  it('a Node added during the run joins with no operator step', async () => {
    const started = Date.now();
    await addNode(3);
    startTokenClient(3, await podToken(3));
    await waitFor('node 3 joined', async () => (await connected()).includes(rig.h.nodeName(3)), 20_000);
    console.log(`      node 3 joined ${Date.now() - started} ms after its Node object was created`);
    expect((await rig.h.curl(rig.h.ns.cp, rig.h.kubeletURL(3))).ok).to.equal(true);
  });

  it('a pod CIDR change moves the routes', async () => {
    const moved = '198.19.99.0/24';
    await addNode(3, moved);
    await waitFor(
      "node 3's kernel route moved to its new pod CIDR",
      async () => {
        const routes = await serverRoutes();
        return routes.includes(moved) && !routes.includes(rig.h.podCIDR(3));
      },
      10_000,
    );
  });

  it('a deleted Node loses its session and kernel routes within 10 s', async () => {
    const started = Date.now();
    await control.deleteNode(rig.h.nodeName(2));
    await waitFor(
      'node 2 session and routes gone',
      async () =>
        !(await connected()).includes(rig.h.nodeName(2)) && !(await serverRoutes()).includes(rig.h.podCIDR(2)),
      10_000,
    );
    console.log(`      node 2 removed ${Date.now() - started} ms after its Node object was deleted`);
  });

  it('kube-apiserver away for 30 s breaks no session that is up', async () => {
    await control.goDown(30_000);
    const deadline = Date.now() + 30_000;
    let rounds = 0;
    while (Date.now() < deadline) {
      for (const n of [1, 3]) {
        const ok = (await rig.h.curl(rig.h.ns.cp, rig.h.kubeletURL(n))).ok;
        expect(ok, `kubelet ${n} while the API is away`).to.equal(true);
      }
      rounds++;
      await sleep(2000);
    }
    expect(await connected()).to.include.members([rig.h.nodeName(1), rig.h.nodeName(3)]);
    console.log(`      ${rounds} rounds of kubelet requests while the API was away, 0 failed`);
  });

  leavesNothingBehind(rig);
});

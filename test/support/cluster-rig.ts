// What every namespace suite (netns and faults) shares: the root check, the harness with
// nodelink on it, and the final leak check.
import { expect } from 'chai';
import { Harness, leftovers, rootNamespaceViolations, type HarnessOptions } from '../../scripts/harness/index.js';
import { CLI, NodelinkCluster, type ClusterOptions } from '../../scripts/cluster.js';
import { TEST_TOOLS, preflight } from '../../scripts/preflight.js';
import { waitFor } from './wait.js';

/**
 * Namespace tests need root; without it they say so loudly and skip, never pass silently. As
 * root they need the harness's tools: a missing one fails the suite with one line naming every
 * missing tool and the command that installs them.
 */
export function skipUnlessRoot(ctx: Mocha.Context): void {
  if (process.getuid?.() !== 0) {
    console.log('\n    *** SKIPPED: namespace tests need root (run npm test as root) ***\n');
    ctx.skip();
  }
  preflight('namespace tests', TEST_TOOLS);
}

/** A suite's harness, without nodelink: for suites that start nodelink themselves, per test. */
export interface HarnessRig {
  readonly h: Harness;
  readonly prefix: string;
}

/** Registers the hooks (call it inside `describe`): before, a harness; after, everything removed. */
export function harnessRig(options: HarnessOptions): HarnessRig {
  let h: Harness | undefined;
  before(async function () {
    skipUnlessRoot(this);
    h = await Harness.create(options);
  });
  after(async function () {
    await h?.destroy();
  });
  return {
    get h() {
      return h!;
    },
    get prefix() {
      return h!.prefix;
    },
  };
}

/** A suite's harness and nodelink on it. */
export interface ClusterRig {
  readonly h: Harness;
  readonly cluster: NodelinkCluster;
  readonly prefix: string;
}

/**
 * Registers the hooks a namespace suite needs (call it inside `describe`): before, a harness and
 * nodelink on it (every node connected when `start`; `cluster` may build its options from the
 * harness, to write files into its directory); after, nodelink stopped and everything removed.
 */
export function clusterRig(
  options: HarnessOptions,
  opts: { start?: boolean; cluster?: (h: Harness) => ClusterOptions } = {},
): ClusterRig {
  let h: Harness | undefined;
  let cluster: NodelinkCluster | undefined;
  before(async function () {
    skipUnlessRoot(this);
    h = await Harness.create(options);
    cluster = new NodelinkCluster(h, opts.cluster?.(h));
    if (opts.start) await cluster.up();
  });
  after(async function () {
    await cluster?.stop();
    await h?.destroy();
  });
  return {
    get h() {
      return h!;
    },
    get cluster() {
      return cluster!;
    },
    get prefix() {
      return h!.prefix;
    },
  };
}

/** The flags that give a server a test starts itself the cluster's peers file and both tunnel networks. */
export function clusterServerFlags(rig: ClusterRig): string[] {
  return ['--peers', rig.cluster.peersFile, '--tunnel-cidr', rig.h.tunnelCIDR, '--tunnel-cidr', rig.h.tunnelCIDR6];
}

/**
 * `nodelink server` in Kubernetes mode on the rig's addresses, reviewing tokens at the API behind
 * `kubeconfig` (the stand-in) for `serviceAccount` ("namespace:name"); `extra` flags go last.
 */
export function kubernetesServerArgv(
  rig: ClusterRig,
  kubeconfig: string,
  serviceAccount: string,
  extra: readonly string[] = [],
): string[] {
  return [
    process.execPath,
    CLI,
    'server',
    '--listen',
    rig.h.serverEndpoint,
    '--key',
    rig.cluster.serverKey.keyFile,
    '--node-auth',
    'kubernetes',
    '--kubeconfig',
    kubeconfig,
    '--service-account',
    serviceAccount,
    '--tunnel-cidr',
    rig.h.tunnelCIDR,
    '--tunnel-cidr',
    rig.h.tunnelCIDR6,
    '--admin-socket',
    rig.cluster.serverSocket,
    ...extra,
  ];
}

/**
 * `nodelink client` in Kubernetes mode: a token file and a name, no key and no routes (they come
 * from the Node), quick redials; `extra` flags go last.
 */
export function kubernetesClientArgv(
  rig: ClusterRig,
  opts: { tokenFile: string; name: string; adminSocket: string },
  extra: readonly string[] = [],
): string[] {
  return [
    process.execPath,
    CLI,
    'client',
    '--server',
    rig.h.serverEndpoint,
    '--server-key',
    rig.cluster.serverKey.publicKey,
    '--token-file',
    opts.tokenFile,
    '--name',
    opts.name,
    '--admin-socket',
    opts.adminSocket,
    '--backoff-base-ms',
    '200',
    '--backoff-cap-ms',
    '1000',
    ...extra,
  ];
}

/** kill -9 of the cluster's server; resolves once it exited and its TUN device nl0 is gone with it. */
export async function killServer(rig: ClusterRig): Promise<void> {
  const { h, cluster } = rig;
  cluster.server!.kill('SIGKILL');
  await cluster.server!.exited;
  await waitFor(
    'nl0 gone with the killed server',
    async () => (await h.exec(h.ns.cp, ['ip', 'link', 'show', 'nl0'], { allowFail: true })).code !== 0,
    5000,
  );
}

/** Nothing of the harness with this prefix is left, and the root namespace has no test address. */
export async function expectNothingLeft(prefix: string): Promise<void> {
  expect(await leftovers(prefix)).to.deep.equal([]);
  expect(await rootNamespaceViolations()).to.deep.equal([]);
}

/** The suite's last test: stop nodelink, remove the harness, and find nothing left anywhere. */
export function leavesNothingBehind(rig: ClusterRig, title = 'leaves nothing behind'): void {
  it(title, async function () {
    await rig.cluster.stop();
    await rig.h.destroy();
    await expectNothingLeft(rig.prefix);
  });
}

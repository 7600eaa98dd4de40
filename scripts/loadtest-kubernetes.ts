// Kubernetes mode for `npm run loadtest` (NODE_AUTH=kubernetes): the kube-apiserver STAND-IN
// (scripts/kube-standin.ts) runs in the control-plane namespace with one Node and one client pod
// per generated node, and mints each pod's token; the server runs with --node-auth kubernetes, so
// every handshake of the reconnect storm costs a TokenReview (the server's cache does not survive
// its restart).
import type { Harness } from './harness/index.js';
import { startKubeStandin } from './kube-standin-control.js';
const NAMESPACE = 'kube-system';
const SERVICE_ACCOUNT = 'nodelink-client';

export interface KubernetesLoad {
  /** Server flags that replace --peers. */
  readonly serverArgs: string[];
  /** One token per generated node, in order. */
  readonly tokens: string[];
  counts(): Promise<Record<string, number>>;
  stop(): Promise<void>;
}

/** Starts the stand-in with `names.length` Nodes, each owning `address(i)`, and mints their tokens. */
export async function kubernetesLoad(
  h: Harness,
  names: readonly string[],
  address: (i: number) => string,
): Promise<KubernetesLoad> {
  const { process: standin, control, kubeconfig } = await startKubeStandin(h);
  const tokens = await control.bulk({
    nodes: names.map((name, i) => ({ name, internalIPs: [address(i)], podCIDRs: [] })),
    pods: names.map((name) => ({ namespace: NAMESPACE, name: `client-${name}`, nodeName: name })),
    tokens: names.map((name) => ({
      namespace: NAMESPACE,
      serviceAccount: SERVICE_ACCOUNT,
      pod: `client-${name}`,
      expiresInSec: 3600,
    })),
  });
  return {
    serverArgs: [
      '--node-auth',
      'kubernetes',
      '--kubeconfig',
      kubeconfig,
      '--service-account',
      `${NAMESPACE}:${SERVICE_ACCOUNT}`,
    ],
    tokens,
    counts: () => control.counts(),
    stop: async () => {
      await standin.stop();
    },
  };
}

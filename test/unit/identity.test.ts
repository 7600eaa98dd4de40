// Kubernetes-mode identity against the kube-apiserver STAND-IN (scripts/kube-standin.ts), called
// through @kubernetes/client-node's own API classes and informer: only the HTTP end is ours.
import { expect } from 'chai';
import { createServer, type AddressInfo, type Socket } from 'node:net';
import { setTimeout as sleep } from 'node:timers/promises';
import { KubeConfig } from '@kubernetes/client-node';
import { KubeApiStandin } from '../../scripts/kube-standin.js';
import { NodeIdentityVerifier, tokenExpiry, type IdentityApi } from '../../src/k8s/identity.js';
import { KubeIdentityApi, NodeWatch } from '../../src/k8s/kube-identity.js';
import { routesFromNode, type NodeLike } from '../../src/k8s/node-routes.js';
import { AuthError } from '../../src/auth/errors.js';
import { authorizeNode, peersFromNodes } from '../../src/k8s/node-peers.js';
import { Prefix } from '../../src/routing/index.js';
import { KubernetesError } from '../../src/k8s/errors.js';
import { silentLogger } from '../../src/log.js';
import { rejection } from '../support/rejection.js';

const NS = 'nodelink';
const SA = 'nodelink-client';

function kubeConfigFor(standin: KubeApiStandin): KubeConfig {
  const kc = new KubeConfig();
  kc.loadFromString(standin.kubeconfig());
  return kc;
}

describe('Kubernetes identity: projected tokens checked by TokenReview (kube-apiserver stand-in)', function () {
  this.timeout(20_000);
  let standin: KubeApiStandin;
  let api: KubeIdentityApi;

  beforeEach(async () => {
    standin = new KubeApiStandin();
    await standin.start();
    standin.upsertNode({ name: 'node-a', internalIPs: ['198.19.0.10'], podCIDRs: ['198.19.1.0/24'] });
    standin.upsertNode({ name: 'node-b', internalIPs: ['198.19.0.11'], podCIDRs: ['198.19.2.0/24'] });
    standin.upsertPod({ namespace: NS, name: 'client-a', nodeName: 'node-a' });
    standin.upsertPod({ namespace: NS, name: 'client-b', nodeName: 'node-b' });
    api = new KubeIdentityApi(kubeConfigFor(standin), 2000);
  });
  afterEach(async () => {
    api.close();
    await standin.stop();
  });

  const verifier = (extra: Partial<ConstructorParameters<typeof NodeIdentityVerifier>[1]> = {}) =>
    new NodeIdentityVerifier(api, { audience: 'nodelink', serviceAccount: `${NS}:${SA}`, ...extra });

  it('names the node of a pod-bound token, from the node claim and, without it, from the pod', async () => {
    const withClaim = standin.mint({ namespace: NS, serviceAccount: SA, pod: 'client-a' });
    const identity = await verifier().verify(withClaim);
    expect(identity).to.include({ node: 'node-a', pod: `${NS}/client-a` });
    const withoutClaim = standin.mint({ namespace: NS, serviceAccount: SA, pod: 'client-b', nodeClaim: false });
    const before = standin.counts.podReads;
    expect((await verifier().verify(withoutClaim)).node).to.equal('node-b');
    expect(standin.counts.podReads).to.equal(before + 1);
  });

  it('refuses an expired, wrong-audience, other-account, forged or deleted-pod token, saying why', async () => {
    const v = verifier();
    const cases: Array<[string, RegExp]> = [
      [standin.mint({ namespace: NS, serviceAccount: SA, pod: 'client-a', expiresInSec: -10 }), /expired/],
      [standin.mint({ namespace: NS, serviceAccount: SA, pod: 'client-a', audience: 'other' }), /audience/],
      [standin.mint({ namespace: NS, serviceAccount: 'default', pod: 'client-a' }), /nodelink:default", not to/],
      [`${standin.mint({ namespace: NS, serviceAccount: SA, pod: 'client-a' }).slice(0, -4)}AAAA`, /signature/],
    ];
    for (const [token, why] of cases) {
      const err = await rejection(v.verify(token));
      expect(err).to.be.instanceOf(AuthError);
      expect(err.message).to.match(why);
    }
    const token = standin.mint({ namespace: NS, serviceAccount: SA, pod: 'client-b', nodeClaim: false });
    standin.deletePod(NS, 'client-b');
    const err = await rejection(verifier().verify(token));
    expect(err).to.be.instanceOf(AuthError);
    expect(err.message).to.match(/deleted pod/);
  });

  it('caches a verdict for the token lifetime (capped) and shares one review among a storm', async () => {
    let now = Date.now();
    const v = verifier({ now: () => now, maxCacheMs: 60_000 });
    const token = standin.mint({ namespace: NS, serviceAccount: SA, pod: 'client-a', expiresInSec: 600 });
    expect(tokenExpiry(token)).to.be.closeTo(Date.now() + 600_000, 5000);
    const storm = await Promise.all(Array.from({ length: 50 }, () => v.verify(token)));
    expect(storm.every((identity) => identity.node === 'node-a')).to.equal(true);
    expect(standin.counts.tokenReviews).to.equal(1);
    await v.verify(token);
    expect(standin.counts.tokenReviews).to.equal(1);
    now += 61_000;
    await v.verify(token);
    expect(standin.counts.tokenReviews).to.equal(2);
  });

  it('asks over one kept-alive connection, not a TLS handshake per review', async () => {
    const v = verifier();
    const before = standin.counts.connections;
    for (let i = 0; i < 20; i++) {
      await v.verify(standin.mint({ namespace: NS, serviceAccount: SA, pod: 'client-a', expiresInSec: 600 + i }));
    }
    expect(standin.counts.tokenReviews).to.equal(20);
    expect(standin.counts.connections - before).to.be.at.most(2);
    api.close();
  });

  it("asks with the kubeconfig's credentials; a wrong one, a silent or a closed server are transient, one line each", async () => {
    const token = standin.mint({ namespace: NS, serviceAccount: SA, pod: 'client-a' });
    const wrong = new KubeConfig();
    wrong.loadFromString(standin.kubeconfig().replace(standin.clientToken, 'not-the-token'));
    const unauthorized = (await rejection(
      new KubeIdentityApi(wrong, 2000).reviewToken(token, ['nodelink']),
    )) as KubernetesError;
    expect(unauthorized).to.be.instanceOf(KubernetesError);
    expect(unauthorized.code).to.equal('k8s_unauthorized');
    expect(unauthorized.message).to.match(
      /^the Kubernetes API at https:\/\/127\.0\.0\.1:\d+ rejected our credentials \(401/,
    );
    expect(standin.counts.tokenReviews).to.equal(0);
    expect(standin.counts.unauthorized).to.equal(1);

    // Accepts TCP and never speaks TLS: the deadline cuts the request off.
    const held = new Set<Socket>();
    const silent = createServer((socket) => held.add(socket));
    await new Promise<void>((resolve) => silent.listen(0, '127.0.0.1', resolve));
    const silentPort = (silent.address() as AddressInfo).port;
    const slowConfig = new KubeConfig();
    slowConfig.loadFromString(standin.kubeconfig().replace(standin.url, `https://127.0.0.1:${silentPort}`));
    const started = Date.now();
    const slow = (await rejection(
      new KubeIdentityApi(slowConfig, 300).reviewToken(token, ['nodelink']),
    )) as KubernetesError;
    expect(slow.code).to.equal('k8s_unreachable');
    expect(slow.message).to.match(/no answer from the Kubernetes API at .* within 300 ms to create a TokenReview/);
    expect(Date.now() - started).to.be.lessThan(2000);
    for (const socket of held) socket.destroy();
    await new Promise((resolve) => silent.close(resolve));

    const closedConfig = new KubeConfig();
    closedConfig.loadFromString(standin.kubeconfig().replace(standin.url, `https://127.0.0.1:${silentPort}`));
    const closed = (await rejection(new KubeIdentityApi(closedConfig, 2000).getPod(NS, 'client-a'))) as KubernetesError;
    expect(closed.code).to.equal('k8s_unreachable');
    expect(closed.message).to.match(/cannot reach the Kubernetes API .* \(ECONNREFUSED\)/);
    for (const err of [unauthorized, slow, closed]) expect(err.message).not.to.include('\n');
  });

  it('keeps serving cached verdicts while kube-apiserver is away; a new token fails as transient', async () => {
    const v = verifier();
    const token = standin.mint({ namespace: NS, serviceAccount: SA, pod: 'client-a' });
    await v.verify(token);
    standin.goDown(5000);
    expect((await v.verify(token)).node).to.equal('node-a');
    const fresh = standin.mint({ namespace: NS, serviceAccount: SA, pod: 'client-b' });
    const err = await rejection(v.verify(fresh));
    expect(err).to.be.instanceOf(KubernetesError);
    expect(err).not.to.be.instanceOf(AuthError);
  });

  it('runs at most maxConcurrent reviews at once and tells the overflow to retry', async () => {
    let running = 0;
    let peak = 0;
    const slow: IdentityApi = {
      async reviewToken(token) {
        running++;
        peak = Math.max(peak, running);
        await sleep(20);
        running--;
        return {
          authenticated: true,
          audiences: ['nodelink'],
          user: {
            username: `system:serviceaccount:${NS}:${SA}`,
            extra: {
              'authentication.kubernetes.io/pod-name': [token],
              'authentication.kubernetes.io/pod-uid': ['u'],
              'authentication.kubernetes.io/node-name': [token],
            },
          },
        };
      },
      getPod: async () => undefined,
    };
    const v = new NodeIdentityVerifier(slow, {
      audience: 'nodelink',
      serviceAccount: `${NS}:${SA}`,
      maxConcurrent: 4,
      maxWaiting: 10,
    });
    const results = await Promise.allSettled(Array.from({ length: 20 }, (_, i) => v.verify(`t${i}`)));
    expect(peak).to.equal(4);
    expect(results.filter((r) => r.status === 'fulfilled')).to.have.length(14);
    const refused = results.filter((r): r is PromiseRejectedResult => r.status === 'rejected');
    expect(refused.every((r) => (r.reason as KubernetesError).code === 'k8s_busy')).to.equal(true);
  });

  it('watches Nodes with the informer: adds, route changes and deletes arrive; an outage keeps the last Nodes', async () => {
    let latest: readonly NodeLike[] = [];
    const watch = new NodeWatch(kubeConfigFor(standin), {
      onNodes: (nodes) => (latest = nodes),
      log: silentLogger(),
    });
    await watch.start();
    try {
      const names = (): string[] => latest.map((n) => n.metadata?.name ?? '').sort();
      expect(names()).to.deep.equal(['node-a', 'node-b']);
      const until = async (check: () => boolean): Promise<void> => {
        for (let i = 0; i < 100 && !check(); i++) await sleep(50);
        expect(check()).to.equal(true);
      };
      standin.upsertNode({ name: 'node-c', internalIPs: ['198.19.0.12'], podCIDRs: ['198.19.3.0/24'] });
      await until(() => names().includes('node-c'));
      standin.upsertNode({ name: 'node-a', internalIPs: ['198.19.0.10'], podCIDRs: ['198.19.9.0/24'] });
      await until(() =>
        latest.some(
          (n) => n.metadata?.name === 'node-a' && routesFromNode(n).podCIDRs.map(String)[0] === '198.19.9.0/24',
        ),
      );
      standin.deleteNode('node-b');
      await until(() => !names().includes('node-b'));
      standin.goDown(1500);
      await sleep(300);
      expect(names()).to.deep.equal(['node-a', 'node-c']);
      await sleep(1500);
      standin.upsertNode({ name: 'node-d', internalIPs: ['198.19.0.13'], podCIDRs: [] });
      await until(() => names().includes('node-d'));
    } finally {
      watch.stop();
    }
  });
});

describe('Kubernetes-mode peers: one per Node, allowed exactly its addresses and pod CIDRs', () => {
  const node = (name: string, ip: string, cidr?: string): NodeLike => ({
    metadata: { name },
    spec: cidr ? { podCIDRs: [cidr] } : {},
    status: { addresses: [{ type: 'InternalIP', address: ip }] },
  });
  const tunnel = [Prefix.parse('198.18.255.0/24')];

  it('builds peers from Nodes and leaves out, with a reason, Nodes that overlap another or the tunnel', () => {
    const { registry, skipped } = peersFromNodes(
      [
        node('node-a', '198.19.0.10', '198.19.1.0/24'),
        node('node-b', '198.19.0.11', '198.19.1.128/25'),
        node('node-c', '198.18.255.7'),
        node('node-d', '198.19.0.13'),
      ],
      tunnel,
    );
    expect(registry.peers.map((p) => p.name)).to.deep.equal(['node-a', 'node-d']);
    expect(registry.findByName('node-a')!.allowedIPs.map(String)).to.deep.equal(['198.19.0.10/32', '198.19.1.0/24']);
    expect(skipped.map((s) => s.node)).to.deep.equal(['node-b', 'node-c']);
    expect(skipped[0]!.why).to.match(/overlaps Node "node-a"/);
    expect(skipped[1]!.why).to.match(/tunnel CIDR/);
  });

  it("admits a token only for its own Node's routes: node A's token never announces node B's", async () => {
    const { registry } = peersFromNodes(
      [node('node-a', '198.19.0.10', '198.19.1.0/24'), node('node-b', '198.19.0.11', '198.19.2.0/24')],
      tunnel,
    );
    const verifier = {
      verify: async (token: string) => ({ node: token, pod: `ns/${token}`, serviceAccount: 'x', validUntil: 0 }),
    } as unknown as NodeIdentityVerifier;
    const hello = (name: string, token: string | undefined, routes: string[]) => ({
      publicKey: new Uint8Array(32),
      name,
      routes,
      ...(token ? { token } : {}),
    });
    const ok = (await authorizeNode(verifier, hello('node-a', 'node-a', ['198.19.1.0/24'])))(registry);
    expect(ok.peer.name).to.equal('node-a');
    const all = (await authorizeNode(verifier, hello('node-a', 'node-a', [])))(registry);
    expect(all.routes.map(String)).to.deep.equal(['198.19.0.10/32', '198.19.1.0/24']);
    const claimsB = await rejection(authorizeNode(verifier, hello('node-b', 'node-a', ['198.19.2.0/24'])));
    expect((claimsB as AuthError).code).to.equal('wrong_node');
    expect(claimsB.message).to.match(/on node "node-a", not to "node-b"/);
    const grantB = await authorizeNode(verifier, hello('node-a', 'node-a', ['198.19.2.0/24']));
    expect(() => grantB(registry)).to.throw(AuthError, /outside allowedIPs/);
    const gone = await authorizeNode(verifier, hello('node-c', 'node-c', []));
    expect(() => gone(registry)).to.throw(KubernetesError, /not usable yet/);
    const noToken = await rejection(authorizeNode(verifier, hello('node-a', undefined, [])));
    expect(noToken.message).to.match(/--token-file/);
  });
});

// Routes from Kubernetes: Node objects → routes (pure), the real @kubernetes/client-node path
// against a local HTTPS server serving recorded API responses (test/fixtures/k8s, a recording),
// the podCIDR watcher, --authorize-from-nodes through LinkServer, re-announce through
// LinkClient.setRoutes, and the CLI's one-line errors. No cluster, TUN or root needed.

import { expect } from 'chai';
import { spawn } from 'node:child_process';
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { encodeKey, generateSeed, keyPairFromSeed, AuthError } from '../../src/auth/index.js';
import { Prefix } from '../../src/routing/index.js';
import {
  KubernetesError,
  NodeRoutesWatcher,
  nodeRouteChecker,
  routesFromNode,
  routesOutsideNode,
  sameRoutes,
  type NodeLike,
  type NodeSource,
} from '../../src/k8s/index.js';
import { LinkServer } from '../../src/link-server/index.js';
import { LinkClient } from '../../src/link-client/index.js';
import { FakeTun } from '../support/fake-tun.js';
import type { ConnectionOptions } from '../../src/link/connection.js';
import { silentLogger } from '../../src/log.js';
import { parseClientConfig, parseServerConfig } from '../../src/cli/config.js';
import { routesFromKubernetes } from '../../src/cli/kubernetes.js';
import { RECORDING, startRecordedApiServer, type RecordedApiServer } from './recorded-apiserver.js';
import { setTimeout as sleep } from 'node:timers/promises';
import { newPair, portOf, registryOf } from '../support/link-rig.js';
import { waitFor } from '../support/wait.js';
import { rejection } from '../support/rejection.js';

const recorded = (key: string): NodeLike => RECORDING[key] as NodeLike;
const strings = (routes: readonly Prefix[]): string[] => routes.map(String);

/** A NodeSource over the recordings without HTTP, for the watcher and checker logic. */
class FakeNodeSource implements NodeSource {
  readonly server = 'fake';
  reads = 0;
  constructor(public answer: string | Error) {}
  async getNode(): Promise<NodeLike> {
    this.reads++;
    if (this.answer instanceof Error) throw this.answer;
    return recorded(this.answer);
  }
}

describe('k8s: routes from a Node object (recordings)', function () {
  it('single stack: InternalIP /32 and the pod CIDR, Hostname ignored', function () {
    const routes = routesFromNode(recorded('node-v4'));
    expect(strings(routes.routes)).to.deep.equal(['198.19.0.11/32', '198.19.1.0/24']);
    expect(strings(routes.addresses)).to.deep.equal(['198.19.0.11/32']);
  });

  it('dual stack: both InternalIPs (/32, /128) and both podCIDRs, IPv4 first; ExternalIP ignored', function () {
    const routes = routesFromNode(recorded('node-dual'));
    expect(strings(routes.routes)).to.deep.equal([
      '198.19.0.12/32',
      '198.19.2.0/24',
      'fd00:19::c/128',
      'fd00:19:2::/64',
    ]);
  });

  it('an old Node with only spec.podCIDR', function () {
    expect(strings(routesFromNode(recorded('node-legacy')).routes)).to.deep.equal(['198.19.0.13/32', '198.19.3.0/24']);
  });

  it('a Node whose pod CIDR is not allocated yet announces its address only', function () {
    const routes = routesFromNode(recorded('node-no-cidr'));
    expect(strings(routes.routes)).to.deep.equal(['198.19.0.14/32']);
    expect(routes.podCIDRs).to.have.length(0);
  });

  it('a Node with nothing to announce, or a malformed CIDR, is one clear error', function () {
    expect(() => routesFromNode({ metadata: { name: 'bare' } })).to.throw(
      KubernetesError,
      /Node "bare" has no InternalIP and no pod CIDR yet/,
    );
    expect(() => routesFromNode({ metadata: { name: 'x' }, spec: { podCIDRs: ['198.19.1.5/24'] } })).to.throw(
      KubernetesError,
      /Node "x" has pod CIDR "198.19.1.5\/24".*host bits/,
    );
  });

  it('routesOutsideNode and sameRoutes compare prefixes, not strings', function () {
    const node = routesFromNode(recorded('node-dual'));
    const ok = ['198.19.0.12/32', '198.19.2.128/25', 'fd00:19:0:0::c/128'].map((r) => Prefix.parse(r));
    expect(routesOutsideNode(ok, node)).to.deep.equal([]);
    expect(strings(routesOutsideNode([Prefix.parse('198.19.0.0/24')], node))).to.deep.equal(['198.19.0.0/24']);
    expect(sameRoutes(node.routes, [...node.routes].reverse())).to.equal(true);
    expect(sameRoutes(node.routes, node.routes.slice(1))).to.equal(false);
  });
});

describe('k8s: @kubernetes/client-node against a recorded API server on 127.0.0.1', function () {
  this.timeout(10_000);
  let api: RecordedApiServer;
  let KubeNodeSource: typeof import('../../src/k8s/api.js').KubeNodeSource;
  let loadKubeConfig: typeof import('../../src/k8s/api.js').loadKubeConfig;
  const source = (kubeconfig = api.writeKubeconfig(), timeoutMs = 2000): NodeSource =>
    new KubeNodeSource(loadKubeConfig(kubeconfig, {}), timeoutMs);

  before(async function () {
    ({ KubeNodeSource, loadKubeConfig } = await import('../../src/k8s/api.js'));
    api = await startRecordedApiServer();
    api.answers.set('node-1', 'node-v4');
    api.answers.set('node-2', 'node-dual');
    api.answers.set('forbidden', 'status-403');
    api.answers.set('broken', 'status-500');
    api.answers.set('slow', 'hang');
  });
  after(async function () {
    await api?.close();
  });

  it('reads a dual-stack Node over TLS with the pinned CA and the bearer token', async function () {
    const node = await source().getNode('node-2');
    expect(strings(routesFromNode(node).routes)).to.deep.equal([
      '198.19.0.12/32',
      '198.19.2.0/24',
      'fd00:19::c/128',
      'fd00:19:2::/64',
    ]);
    const last = api.requests[api.requests.length - 1]!;
    expect(last.path).to.match(/^\/api\/v1\/nodes\/node-2\b/);
    expect(last.authorization).to.equal('Bearer recorded-test-token');
  });

  const oneLine = (err: Error): void => {
    expect(err).to.be.instanceOf(KubernetesError);
    expect(err.message).to.not.include('\n');
    expect(err.message.length).to.be.lessThan(400);
  };

  it('403 names RBAC and the fix, in one line', async function () {
    const err = await rejection(source().getNode('forbidden'));
    oneLine(err);
    expect((err as KubernetesError).code).to.equal('k8s_forbidden');
    expect(err.message).to.match(
      /refused to get Node "forbidden" \(403 Forbidden: nodes "node-1" is forbidden: User .* cannot get resource "nodes".*grant the service account "get" on nodes/,
    );
  });

  it('404 says which name was looked up and where the name comes from', async function () {
    const err = await rejection(source().getNode('node-9'));
    oneLine(err);
    expect((err as KubernetesError).code).to.equal('k8s_not_found');
    expect(err.message).to.match(/no Node "node-9".*NODE_NAME/);
  });

  it("500 carries the API server's own message", async function () {
    const err = await rejection(source().getNode('broken'));
    oneLine(err);
    expect((err as KubernetesError).code).to.equal('k8s_api');
    expect(err.message).to.match(/HTTP 500: Internal error occurred: etcdserver: request timed out/);
  });

  it('401 (a wrong token) points at the credentials', async function () {
    const path = api.writeKubeconfig();
    const config = JSON.parse((await import('node:fs')).readFileSync(path, 'utf8')) as {
      users: Array<{ user: { token: string } }>;
    };
    config.users[0]!.user.token = 'wrong';
    writeFileSync(path, JSON.stringify(config));
    const err = await rejection(source(path).getNode('node-1'));
    oneLine(err);
    expect((err as KubernetesError).code).to.equal('k8s_unauthorized');
  });

  it('an API server that never answers is cut off by the deadline', async function () {
    const started = Date.now();
    const err = await rejection(source(undefined, 300).getNode('slow'));
    oneLine(err);
    expect((err as KubernetesError).code).to.equal('k8s_unreachable');
    expect(err.message).to.match(/no answer .* within 300 ms/);
    expect(Date.now() - started).to.be.lessThan(2000);
  });

  it('a certificate not signed by the configured CA is refused', async function () {
    const other = await startRecordedApiServer();
    try {
      const err = await rejection(source(api.writeKubeconfig(other.caPem)).getNode('node-1'));
      oneLine(err);
      expect((err as KubernetesError).code).to.equal('k8s_unreachable');
    } finally {
      await other.close();
    }
  });

  it('a closed port, a missing kubeconfig and no credentials at all are one line each', async function () {
    const down = await startRecordedApiServer();
    const downUrl = down.url;
    await down.close();
    const err = await rejection(source(api.writeKubeconfig(undefined, downUrl)).getNode('node-1'));
    oneLine(err);
    expect(err.message).to.match(/cannot reach the Kubernetes API at https:\/\/127\.0\.0\.1:\d+ \(ECONNREFUSED\)/);
    expect(() => loadKubeConfig('/nonexistent/kubeconfig', {})).to.throw(
      KubernetesError,
      /kubeconfig \/nonexistent\/kubeconfig does not exist/,
    );
    const home = mkdtempSync(join(tmpdir(), 'nodelink-home-'));
    try {
      expect(() => loadKubeConfig(undefined, { HOME: home })).to.throw(
        KubernetesError,
        /no Kubernetes credentials: run inside a pod with a service account, or pass --kubeconfig/,
      );
    } finally {
      rmSync(home, { recursive: true, force: true });
    }
  });

  it('in a pod: the service-account token and CA (in-cluster config), or one line when they are missing', async function () {
    const root = mkdtempSync(join(tmpdir(), 'nodelink-pod-'));
    const saved = { host: process.env['KUBERNETES_SERVICE_HOST'], port: process.env['KUBERNETES_SERVICE_PORT'] };
    try {
      const env = { KUBERNETES_SERVICE_HOST: '127.0.0.1', KUBERNETES_SERVICE_PORT: new URL(api.url).port };
      expect(() => loadKubeConfig(undefined, env, root)).to.throw(
        KubernetesError,
        /in a pod but \/var\/run\/secrets\/kubernetes.io\/serviceaccount\/token is missing: set automountServiceAccountToken: true/,
      );
      const dir = join(root, 'var/run/secrets/kubernetes.io/serviceaccount');
      mkdirSync(dir, { recursive: true });
      writeFileSync(join(dir, 'token'), 'recorded-test-token');
      writeFileSync(join(dir, 'ca.crt'), api.caPem);
      // KubeConfig.loadFromCluster reads the service address from process.env itself.
      Object.assign(process.env, env);
      const node = await new KubeNodeSource(loadKubeConfig(undefined, env, root), 2000).getNode('node-1');
      expect(strings(routesFromNode(node).routes)).to.deep.equal(['198.19.0.11/32', '198.19.1.0/24']);
      expect(api.requests[api.requests.length - 1]!.authorization).to.equal('Bearer recorded-test-token');
    } finally {
      for (const [key, value] of [
        ['KUBERNETES_SERVICE_HOST', saved.host],
        ['KUBERNETES_SERVICE_PORT', saved.port],
      ] as const) {
        if (value === undefined) delete process.env[key];
        else process.env[key] = value;
      }
      rmSync(root, { recursive: true, force: true });
    }
  });

  it("the watcher re-announces when the recorded Node's podCIDR changes, once", async function () {
    api.answers.set('node-1', 'node-v4');
    const changes: string[][] = [];
    const feed = await routesFromKubernetes(
      { name: 'node-1', routes: [Prefix.parse('198.19.0.0/32')], kubeconfig: '', nodePollMs: 30 },
      silentLogger(),
      source(),
    );
    expect(strings(feed.routes)).to.deep.equal(['198.19.0.0/32', '198.19.0.11/32', '198.19.1.0/24']);
    const stop = feed.follow((routes) => changes.push(strings(routes)));
    try {
      await sleep(150);
      expect(changes).to.deep.equal([]);
      api.answers.set('node-1', 'node-v4-changed');
      await waitFor('a re-announce', () => changes.length > 0);
      await sleep(150);
      expect(changes).to.deep.equal([['198.19.0.0/32', '198.19.0.11/32', '198.19.7.0/24']]);
    } finally {
      stop();
      api.answers.set('node-1', 'node-v4');
    }
  });
});

describe('k8s: NodeRoutesWatcher', function () {
  it('keeps the routes in force through API errors and reports each change once', async function () {
    const source = new FakeNodeSource('node-v4');
    const changes: string[][] = [];
    const watcher = new NodeRoutesWatcher({
      source,
      name: 'node-1',
      intervalMs: 1000,
      initial: routesFromNode(recorded('node-v4')).routes,
      onChange: (routes) => changes.push(strings(routes)),
      log: silentLogger(),
    });
    await watcher.poll();
    source.answer = new KubernetesError('k8s_api', 'HTTP 500');
    await watcher.poll();
    await watcher.poll();
    expect(changes).to.deep.equal([]);
    expect(strings(watcher.routes)).to.deep.equal(['198.19.0.11/32', '198.19.1.0/24']);
    source.answer = 'node-v4-changed';
    await watcher.poll();
    await watcher.poll();
    expect(changes).to.deep.equal([['198.19.0.11/32', '198.19.7.0/24']]);
    watcher.stop();
  });

  it('polls on its interval and stops for good', async function () {
    const source = new FakeNodeSource('node-v4');
    const watcher = new NodeRoutesWatcher({
      source,
      name: 'node-1',
      intervalMs: 20,
      initial: [],
      onChange: () => {},
      log: silentLogger(),
    });
    watcher.start();
    await waitFor('three reads', () => source.reads >= 3, 2000);
    watcher.stop();
    const reads = source.reads;
    await sleep(80);
    expect(source.reads).to.be.at.most(reads + 1);
  });
});

describe('k8s: --authorize-from-nodes check', function () {
  const routes = (...r: string[]): Prefix[] => r.map((x) => Prefix.parse(x));

  it("accepts routes inside the Node's addresses and podCIDRs", async function () {
    await nodeRouteChecker(new FakeNodeSource('node-dual'))(
      'node-2',
      routes('198.19.0.12/32', '198.19.2.0/24', 'fd00:19:2::/64'),
    );
  });

  it("rejects a route the Node does not own, naming it and the Node's routes", async function () {
    const err = await rejection(
      nodeRouteChecker(new FakeNodeSource('node-v4'))('node-1', routes('198.19.0.11/32', '198.19.2.0/24')),
    );
    expect(err).to.be.instanceOf(AuthError);
    expect((err as AuthError).code).to.equal('route_not_allowed');
    expect(err.message).to.equal(
      'route 198.19.2.0/24 is not an address or pod CIDR of Node "node-1" (198.19.0.11/32, 198.19.1.0/24): fix --route or use --routes-from-node',
    );
  });

  it('a missing Node is a rejection; an API outage is not (the node retries)', async function () {
    const missing = await rejection(
      nodeRouteChecker(new FakeNodeSource(new KubernetesError('k8s_not_found', '404')))(
        'node-9',
        routes('198.19.0.19/32'),
      ),
    );
    expect((missing as AuthError).code).to.equal('route_not_allowed');
    const outage = await rejection(
      nodeRouteChecker(new FakeNodeSource(new KubernetesError('k8s_api', '500')))('node-1', routes('198.19.0.11/32')),
    );
    expect(outage).to.be.instanceOf(KubernetesError);
  });
});

describe('k8s: LinkServer checkRoutes and LinkClient.setRoutes over loopback TLS', function () {
  this.timeout(8000);
  const CONNECTION: ConnectionOptions = {
    maxQueueBytes: 1 << 20,
    keepaliveIntervalMs: 200,
    deadAfterMs: 1000,
  };
  const TUNNEL = [Prefix.parse('198.18.255.0/24')];
  const serverPair = newPair();
  const nodePair = newPair();
  const source = new FakeNodeSource('node-v4');
  let server: LinkServer;
  let port = 0;
  const clients: LinkClient[] = [];

  function client(routes: string[], rejected: string[]): LinkClient {
    const c = new LinkClient({
      host: '127.0.0.1',
      port,
      serverKey: serverPair.publicKey,
      keyPair: nodePair,
      name: 'node-1',
      routes: routes.map((r) => Prefix.parse(r)),
      tun: new FakeTun('n1'),
      connection: CONNECTION,
      handshakeTimeoutMs: 2000,
      backoffBaseMs: 20,
      backoffCapMs: 100,
      installRoutes: async () => {},
      onRejected: (reason) => rejected.push(reason),
      log: silentLogger(),
    });
    clients.push(c);
    c.start();
    return c;
  }
  const announced = (): string[] => server.status().peers.find((p) => p.name === 'node-1')?.routes ?? [];

  before(async function () {
    const registry = registryOf(
      [{ name: 'node-1', pair: nodePair, allowedIPs: ['198.19.0.11/32', '198.19.0.0/16'] }],
      TUNNEL,
    );
    server = new LinkServer({
      host: '127.0.0.1',
      port: 0,
      keyPair: serverPair,
      registry,
      tun: new FakeTun('srv'),
      tunnelCidrs: TUNNEL,
      tunnelAddresses: [Prefix.fromAddress('198.18.255.1')],
      connection: CONNECTION,
      handshakeTimeoutMs: 2000,
      installRoutes: async () => {},
      log: silentLogger(),
      // Uncached: these tests change the Node between handshakes (the cache has its own tests).
      checkRoutes: nodeRouteChecker(source, { cacheMs: 0 }),
    });
    await server.start();
    port = portOf(server.listenAddress);
  });
  afterEach(async function () {
    await Promise.all(clients.splice(0).map((c) => c.stop()));
    source.answer = 'node-v4';
    source.reads = 0;
  });
  after(async function () {
    await server?.stop();
  });

  it('admits routes the Node owns; after a podCIDR change setRoutes re-announces on a new stream', async function () {
    const rejected: string[] = [];
    const c = client(['198.19.0.11/32', '198.19.1.0/24'], rejected);
    await waitFor('node-1 connected', () => c.isAuthenticated && announced().length === 2);
    expect(announced()).to.deep.equal(['198.19.0.11/32', '198.19.1.0/24']);
    source.answer = 'node-v4-changed';
    c.setRoutes([Prefix.parse('198.19.0.11/32'), Prefix.parse('198.19.7.0/24')]);
    await waitFor('the new pod CIDR announced', () => c.isAuthenticated && announced().includes('198.19.7.0/24'));
    expect(announced()).to.deep.equal(['198.19.0.11/32', '198.19.7.0/24']);
    expect(rejected).to.deep.equal([]);
  });

  it('rejects routes inside allowedIPs that the Node does not own, with the reason', async function () {
    const rejected: string[] = [];
    client(['198.19.0.11/32', '198.19.2.0/24'], rejected);
    await waitFor('a rejection', () => rejected.length > 0);
    expect(rejected[0]).to.match(/route 198\.19\.2\.0\/24 is not an address or pod CIDR of Node "node-1"/);
    expect(announced()).to.deep.equal([]);
  });

  it('an API outage closes the handshake as transient: the node retries and gets in when the API is back', async function () {
    source.answer = new KubernetesError('k8s_api', 'HTTP 500');
    const rejected: string[] = [];
    const c = client(['198.19.0.11/32', '198.19.1.0/24'], rejected);
    await waitFor('three handshakes refused while the API is down', () => source.reads >= 3, 3000);
    expect(c.isAuthenticated).to.equal(false);
    expect(announced()).to.deep.equal([]);
    source.answer = 'node-v4';
    await waitFor('node-1 connected after the outage', () => c.isAuthenticated, 3000);
    expect(rejected).to.deep.equal([]);
  });
});

describe('k8s: CLI flags', function () {
  this.timeout(15_000);
  const main = fileURLToPath(new URL('../../src/cli/main.js', import.meta.url));

  it('--routes-from-node makes --route optional and takes the name from NODE_NAME', function () {
    const config = parseClientConfig(
      { server: 'cp:8443', 'server-key': 'k', key: '/k', 'routes-from-node': true },
      { NODE_NAME: 'node-1' },
    );
    expect(config.name).to.equal('node-1');
    expect(config.routes).to.deep.equal([]);
    expect(config.routesFromNode).to.equal(true);
    expect(config.nodePollMs).to.equal(30_000);
    expect(() =>
      parseClientConfig({ server: 'cp:8443', 'server-key': 'k', key: '/k' }, { NODE_NAME: 'node-1' }),
    ).to.throw(/--route is required/);
    expect(() =>
      parseClientConfig({ server: 'cp:8443', 'server-key': 'k', key: '/k', 'routes-from-node': true }, {}),
    ).to.throw(/--name is required.*NODE_NAME/);
    const server = parseServerConfig({
      listen: '0.0.0.0:8443',
      key: '/k',
      peers: '/p',
      'tunnel-cidr': ['198.18.255.0/24'],
      'authorize-from-nodes': true,
    });
    expect(server.authorizeFromNodes).to.equal(true);
  });

  it('nodelink client --routes-from-node with a forbidden service account exits 1 with one line', async function () {
    const api = await startRecordedApiServer();
    const dir = mkdtempSync(join(tmpdir(), 'nodelink-cli-'));
    try {
      api.answers.set('node-1', 'status-403');
      const key = join(dir, 'node.key');
      writeFileSync(key, `${encodeKey(generateSeed())}\n`, { mode: 0o600 });
      const serverKey = encodeKey(keyPairFromSeed(generateSeed()).publicKey);
      const child = spawn(
        process.execPath,
        [
          main,
          'client',
          '--server',
          '127.0.0.1:9',
          '--server-key',
          serverKey,
          '--key',
          key,
          '--routes-from-node',
          '--admin-socket',
          join(dir, 'c.sock'),
          '--log-level',
          'silent',
        ],
        {
          env: {
            PATH: process.env['PATH'] ?? '',
            HOME: dir,
            NODE_NAME: 'node-1',
            NODELINK_KUBECONFIG: api.writeKubeconfig(),
          },
          stdio: ['ignore', 'pipe', 'pipe'],
        },
      );
      let stderr = '';
      child.stderr.on('data', (chunk: Buffer) => {
        stderr += chunk.toString();
      });
      const timer = setTimeout(() => child.kill('SIGKILL'), 12_000);
      const code = await new Promise<number | null>((resolve) => child.on('exit', resolve));
      clearTimeout(timer);
      expect(code).to.equal(1);
      const lines = stderr.trim().split('\n');
      expect(lines, stderr).to.have.length(1);
      expect(lines[0]).to.match(
        /^nodelink: the Kubernetes API refused to get Node "node-1" \(403 Forbidden: .*grant the service account "get" on nodes/,
      );
    } finally {
      await api.close();
      rmSync(dir, { recursive: true, force: true });
    }
  });
});

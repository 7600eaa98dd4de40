import { expect } from 'chai';
import { mergeWorkerStatuses, type DaemonStatus, type PeerStatus } from '../../src/admin/index.js';
import { parseServerConfig, workerTun } from '../../src/cli/config.js';
import { perWorker, slotOf } from '../../src/cli/workers.js';
import { LinkServer, SessionRoutes, type HeldPeer } from '../../src/link-server/index.js';
import { Prefix } from '../../src/routing/index.js';
import { HOME_ROUTE_METRIC, ServerRoutes, routeTableFor } from '../../src/tun/index.js';
import { silentLogger } from '../../src/log.js';
import { idlePeerStatus } from '../support/status.js';
import { FakeTun } from '../support/fake-tun.js';
import { CONNECTION, Rigs, TUNNEL_ADDRESSES, TUNNEL_CIDRS, newPair, portOf, registryOf } from '../support/link-rig.js';
import { waitFor } from '../support/wait.js';
import { NodeIdentityVerifier, type IdentityApi, type NodeIdentity } from '../../src/k8s/identity.js';
import { KubernetesError } from '../../src/k8s/errors.js';

const TABLE = routeTableFor('nl0');

function peer(name: string, more: Partial<PeerStatus> = {}): PeerStatus {
  return idlePeerStatus({ name, publicKey: `key-${name}`, ...more });
}

function workerStatus(peers: PeerStatus[], more: Partial<DaemonStatus> = {}): DaemonStatus {
  return {
    role: 'server',
    tun: 'nl0-x',
    tunnelAddress: '198.18.255.1',
    tunnelAddresses: ['198.18.255.1'],
    listen: '198.18.0.2:8443',
    startedAt: '2026-01-01T00:00:00.000Z',
    dropsByReason: {},
    refusedConnections: {},
    serverId: 'cp-abc',
    serverCount: 1,
    peers,
    ...more,
  };
}

const BASE = { tun: 'nl0', startedAt: '2026-11-30T00:00:00.000Z' };

describe('server workers (--workers)', function () {
  describe('mergeWorkerStatuses: one server from its workers', function () {
    it('takes each peer from the worker holding its session, and sums its counters over all', function () {
      const merged = mergeWorkerStatuses(
        [
          {
            index: 0,
            status: workerStatus(
              [
                peer('node-a', { rxBytes: 100, drops: 2, dropsByReason: { peer_offline: 2 }, replacements: 0 }),
                peer('node-b', {
                  connected: true,
                  endpoint: '198.18.0.1:1000',
                  routes: ['198.19.2.0/24'],
                  connectedSince: '2026-11-30T10:00:00.000Z',
                  rxBytes: 5,
                  replacements: 1,
                }),
                peer('node-c'),
              ],
              { dropsByReason: { no_route: 3 }, refusedConnections: { rate_limited: 1 } },
            ),
          },
          {
            index: 1,
            status: workerStatus(
              [
                peer('node-a', {
                  connected: true,
                  endpoint: '198.18.0.1:2000',
                  routes: ['198.19.1.0/24'],
                  connectedSince: '2026-11-30T10:00:01.000Z',
                  rxBytes: 1000,
                  drops: 1,
                  dropsByReason: { peer_offline: 1 },
                  replacements: 0,
                  routeStates: [{ route: '198.19.1.0/24', state: 'active', kernel: true }],
                }),
                peer('node-b', { rxBytes: 7, replacements: 0 }),
                peer('node-c'),
              ],
              { dropsByReason: { no_route: 1, malformed: 4 }, refusedConnections: { rate_limited: 2, aborted: 1 } },
            ),
          },
        ],
        BASE,
      );
      expect(merged.peers.map((p) => [p.name, p.connected, p.worker, p.endpoint])).to.deep.equal([
        ['node-a', true, 1, '198.18.0.1:2000'],
        ['node-b', true, 0, '198.18.0.1:1000'],
        ['node-c', false, null, null],
      ]);
      const a = merged.peers[0]!;
      expect(a).to.include({ rxBytes: 1100, drops: 3, replacements: 0 });
      expect(a.dropsByReason).to.deep.equal({ peer_offline: 3 });
      expect(a.routeStates).to.deep.equal([{ route: '198.19.1.0/24', state: 'active', kernel: true }]);
      expect(merged.peers[1]).to.include({ rxBytes: 12, replacements: 1 });
      expect(merged.dropsByReason).to.deep.equal({ no_route: 4, malformed: 4 });
      expect(merged.refusedConnections).to.deep.equal({ rate_limited: 3, aborted: 1 });
      expect(merged).to.include({ role: 'server', tun: 'nl0', startedAt: BASE.startedAt, serverId: 'cp-abc' });
      expect(merged.listen).to.equal('198.18.0.2:8443');
    });

    it('with a node in two workers for a moment, shows the newer session; a silent worker adds nothing', function () {
      const older = peer('node-a', { connected: true, connectedSince: '2026-11-30T10:00:00.000Z', endpoint: 'old' });
      const newer = peer('node-a', { connected: true, connectedSince: '2026-11-30T10:00:05.000Z', endpoint: 'new' });
      const merged = mergeWorkerStatuses(
        [
          { index: 0, status: workerStatus([newer]) },
          { index: 1, status: workerStatus([older]) },
          { index: 2, status: undefined },
        ],
        BASE,
      );
      expect(merged.peers).to.have.length(1);
      expect(merged.peers[0]).to.include({ endpoint: 'new', worker: 0 });
      const swapped = mergeWorkerStatuses(
        [
          { index: 0, status: workerStatus([older]) },
          { index: 1, status: workerStatus([newer]) },
        ],
        BASE,
      );
      expect(swapped.peers[0]).to.include({ endpoint: 'new', worker: 1 });
      const none = mergeWorkerStatuses([{ index: 0, status: undefined }], BASE);
      expect(none).to.include({ role: 'server', tun: 'nl0', tunnelAddress: null });
      expect(none.peers).to.deep.equal([]);
    });
  });

  describe('SessionRoutes: a worker routes the nodes it holds into its TUN', function () {
    const a = Prefix.parse('198.19.1.0/24');
    const a6 = Prefix.parse('fd00:19:1::/64');
    const b = Prefix.parse('198.19.2.0/24');

    function rig(claimTimeoutMs?: number) {
      const held = new Map<string, HeldPeer>([
        ['node-a', { name: 'node-a', allowedIPs: [a, a6], connected: false }],
        ['node-b', { name: 'node-b', allowedIPs: [b], connected: false }],
      ]);
      const calls: string[] = [];
      let gate: Promise<void> = Promise.resolve();
      let failure: Error | undefined;
      const routes = new SessionRoutes({
        peers: () => held.values(),
        claim: async (cidrs) => {
          if (cidrs.length > 0) calls.push(`claim ${cidrs.join(' ')}`);
          await gate;
          if (cidrs.length > 0 && failure) throw failure;
          if (cidrs.length > 0) calls.push('claimed');
        },
        release: async (cidrs) => {
          if (cidrs.length > 0) calls.push(`release ${cidrs.join(' ')}`);
        },
        claimTimeoutMs,
        log: silentLogger(),
      });
      const set = (name: string, connected: boolean, allowedIPs?: Prefix[]): void => {
        const before = held.get(name)!;
        held.set(name, { ...before, connected, allowedIPs: allowedIPs ?? before.allowedIPs });
      };
      return {
        held,
        calls,
        routes,
        set,
        hold: (p: Promise<void>) => (gate = p),
        fail: (err: Error | undefined) => (failure = err),
      };
    }

    it('settles a burst of events in one pass, from what the worker holds, whatever their order', async function () {
      const { calls, routes, set } = rig();
      // node-a: a new session replaced the old one here (connected, then the old one's close).
      set('node-a', true);
      routes.changed('node-a');
      routes.changed('node-a');
      // node-b: connected and gone again within the burst: never claimed, nothing to release.
      set('node-b', true);
      routes.changed('node-b');
      set('node-b', false);
      routes.changed('node-b');
      await routes.idle();
      expect(calls).to.deep.equal(['claim 198.19.1.0/24 fd00:19:1::/64', 'claimed']);
      set('node-a', false);
      routes.changed('node-a');
      await routes.idle();
      expect(calls.slice(2)).to.deep.equal(['release 198.19.1.0/24 fd00:19:1::/64']);
    });

    it('claims before the Welcome: resolves once the routes are in, and the session’s opening costs no second claim', async function () {
      const { calls, routes, set, hold } = rig();
      let open!: () => void;
      hold(new Promise<void>((resolve) => (open = resolve)));
      let resolved = false;
      const claiming = routes.claimBeforeWelcome('node-a').then((done) => {
        resolved = true;
        return done;
      });
      await new Promise((resolve) => setTimeout(resolve, 20));
      expect(calls).to.deep.equal(['claim 198.19.1.0/24 fd00:19:1::/64']);
      expect(resolved, 'resolved before the claim reached the kernel').to.equal(false);
      open();
      const done = await claiming;
      expect(calls).to.deep.equal(['claim 198.19.1.0/24 fd00:19:1::/64', 'claimed']);
      // The session opens (the connected event), then the handshake says it is done.
      set('node-a', true);
      routes.changed('node-a');
      done();
      await routes.idle();
      expect(calls).to.have.length(2);
      // A new session here claims again: another worker may have taken the node since.
      (await routes.claimBeforeWelcome('node-a'))();
      await routes.idle();
      expect(calls.slice(2)).to.deep.equal(['claim 198.19.1.0/24 fd00:19:1::/64', 'claimed']);
    });

    it('a claim that fails or times out rejects, and a session that never opened leaves nothing claimed', async function () {
      const failing = rig();
      failing.fail(new Error('Cannot find device "nl0-1"'));
      const err = await failing.routes.claimBeforeWelcome('node-b').then(
        () => undefined,
        (e: Error) => e,
      );
      expect(err?.message).to.contain('nl0-1');
      await failing.routes.idle();
      // The failed batch may have claimed some: taken back, since no session opened.
      expect(failing.calls).to.deep.equal(['claim 198.19.2.0/24', 'release 198.19.2.0/24']);

      const slow = rig(50);
      slow.hold(new Promise<void>((resolve) => setTimeout(resolve, 300)));
      const late = await slow.routes.claimBeforeWelcome('node-b').then(
        () => undefined,
        (e: Error) => e,
      );
      expect(late?.message).to.match(/did not reach this worker's TUN within 50 ms/);
      await slow.routes.idle();
      expect(slow.calls).to.deep.equal(['claim 198.19.2.0/24', 'claimed', 'release 198.19.2.0/24']);
    });

    it('releases what it claimed, after a reload changed the peer’s routes or removed it', async function () {
      const { calls, routes, set, held } = rig();
      set('node-a', true);
      set('node-b', true);
      routes.changed('node-a');
      routes.changed('node-b');
      await routes.idle();
      calls.length = 0;
      // node-a's pod CIDR moved and its session closed; node-b's Node was deleted.
      set('node-a', false, [Prefix.parse('198.19.9.0/24')]);
      held.delete('node-b');
      routes.changed('node-a');
      routes.changed('node-b');
      await routes.idle();
      expect(calls).to.deep.equal(['release 198.19.1.0/24 fd00:19:1::/64 198.19.2.0/24']);
    });

    it('changes during a pass make one more pass, and a peer a reload removed is skipped', async function () {
      const { calls, routes, set, held, hold } = rig();
      let open!: () => void;
      hold(new Promise<void>((resolve) => (open = resolve)));
      set('node-a', true);
      routes.changed('node-a');
      await new Promise((resolve) => setImmediate(resolve));
      // While the first claim runs: node-a leaves, node-b comes, a removed peer's close arrives.
      set('node-a', false);
      routes.changed('node-a');
      set('node-b', true);
      routes.changed('node-b');
      held.delete('node-c');
      routes.changed('node-c');
      open();
      await routes.idle();
      expect(calls).to.deep.equal([
        'claim 198.19.1.0/24 fd00:19:1::/64',
        'claimed',
        'claim 198.19.2.0/24',
        'claimed',
        'release 198.19.1.0/24 fd00:19:1::/64',
      ]);
    });
  });

  describe('the handshake claims a worker’s routes before the Welcome', function () {
    this.timeout(10_000);
    const rigs = new Rigs();
    const servers: LinkServer[] = [];
    afterEach(async function () {
      await rigs.stopAll();
      await Promise.all(servers.splice(0).map((server) => server.stop()));
    });

    async function serve(claimRoutes: (peer: string) => Promise<() => void>) {
      const serverPair = newPair();
      const nodePair = newPair();
      const failures: string[] = [];
      const server = new LinkServer({
        host: '127.0.0.1',
        port: 0,
        keyPair: serverPair,
        registry: registryOf([{ name: 'node-a', pair: nodePair, allowedIPs: ['198.19.1.0/24'] }]),
        tun: new FakeTun('srv0'),
        tunnelCidrs: TUNNEL_CIDRS,
        tunnelAddresses: TUNNEL_ADDRESSES,
        connection: CONNECTION,
        handshakeTimeoutMs: 2000,
        installRoutes: async () => undefined,
        log: silentLogger(),
        observer: { handshakeFailed: (reason) => failures.push(reason) },
        claimRoutes,
      });
      servers.push(server);
      await server.start();
      const node = rigs.client({
        port: portOf(server.listenAddress),
        name: 'node-a',
        keyPair: nodePair,
        routes: ['198.19.1.0/24'],
        serverKey: serverPair.publicKey,
      });
      const connected = (): boolean => server.status().peers.some((p) => p.connected);
      return { node, failures, connected };
    }

    it('the Welcome waits for the claim; the hook hears when the session opened', async function () {
      const events: string[] = [];
      let open!: () => void;
      const gate = new Promise<void>((resolve) => (open = resolve));
      const { node, connected } = await serve(async (peer) => {
        events.push(`claim ${peer}`);
        await gate;
        events.push('claimed');
        return () => events.push(`settled, session open: ${connected()}`);
      });
      await waitFor('the claim asked', () => events.length === 1);
      await new Promise((resolve) => setTimeout(resolve, 200));
      expect(node.client.isAuthenticated, 'welcomed before its routes were claimed').to.equal(false);
      expect(connected()).to.equal(false);
      open();
      await waitFor('welcomed', () => node.client.isAuthenticated);
      expect(events).to.deep.equal(['claim node-a', 'claimed', 'settled, session open: true']);
    });

    it('a failed claim fails the session as internal; the node is not rejected and gets in once routes can be claimed', async function () {
      let attempts = 0;
      const { node, failures } = await serve(async () => {
        attempts++;
        if (attempts <= 2) throw new Error('Cannot find device "nl0-1"');
        return () => undefined;
      });
      await waitFor('welcomed on the third try', () => node.client.isAuthenticated, 5000);
      expect(attempts).to.equal(3);
      expect(failures).to.deep.equal(['internal', 'internal']);
      expect(node.rejected).to.deep.equal([]);
    });
  });

  describe('Kubernetes mode: the workers share their TokenReview verdicts', function () {
    /** kube-apiserver as one worker sees it: up, or away. */
    function api(up: () => boolean): IdentityApi & { reviews: number } {
      const fake = {
        reviews: 0,
        reviewToken: async () => {
          if (!up()) throw new KubernetesError('k8s_api', 'cannot reach kube-apiserver');
          fake.reviews++;
          return {
            authenticated: true,
            audiences: ['nodelink'],
            user: {
              username: 'system:serviceaccount:nodelink:nodelink-client',
              extra: {
                'authentication.kubernetes.io/pod-name': ['client-1'],
                'authentication.kubernetes.io/pod-uid': ['uid-1'],
                'authentication.kubernetes.io/node-name': ['node-1'],
              },
            },
          };
        },
        getPod: async () => undefined,
      };
      return fake;
    }
    const options = { audience: 'nodelink', serviceAccount: 'nodelink:nodelink-client' };

    it('a verdict one worker got admits the node through another while kube-apiserver is away', async function () {
      let up = true;
      const first = new NodeIdentityVerifier(
        api(() => up),
        options,
      );
      const second = new NodeIdentityVerifier(
        api(() => up),
        options,
      );
      const relayed: Array<[string, NodeIdentity]> = [];
      first.onReviewed((key, identity) => relayed.push([key, identity]));
      expect((await first.verify('token-of-node-1')).node).to.equal('node-1');
      expect(relayed).to.have.length(1);
      expect(relayed[0]![0], 'the key is a hash, not the token').to.not.contain('token-of-node-1');
      up = false;
      expect(await second.verify('token-of-node-1').catch((e: Error) => e.message)).to.match(/cannot reach/);
      second.adopt(...relayed[0]!);
      expect((await second.verify('token-of-node-1')).node).to.equal('node-1');
      // A verdict already expired is not taken.
      const third = new NodeIdentityVerifier(
        api(() => false),
        options,
      );
      third.adopt(relayed[0]![0], { ...relayed[0]![1], validUntil: Date.now() - 1 });
      expect(await third.verify('token-of-node-1').catch((e: Error) => e.message)).to.match(/cannot reach/);
    });
  });

  describe('ServerRoutes of a worker', function () {
    const sources = { 4: '198.18.255.1' };

    function fake() {
      const batches: string[][] = [];
      const routes4: object[] = [
        // The other worker's route for a node it holds, and the first worker's, in the shared table.
        { dst: '198.19.1.0/24', dev: 'nl0-1', table: String(TABLE), protocol: '78', metric: 64 },
        { dst: '198.19.1.0/24', dev: 'nl0', table: String(TABLE), protocol: '78', metric: HOME_ROUTE_METRIC },
      ];
      return {
        batches,
        run: async (args: readonly string[]): Promise<string> => {
          const text = args.join(' ');
          if (text.includes('route show')) return JSON.stringify(text.includes('-6') ? [] : routes4);
          if (text.includes('rule show')) return '[]';
          if (text.includes('rule add')) return '';
          throw new Error(`unexpected ip ${text}`);
        },
        batch: async (commands: readonly string[]): Promise<void> => {
          if (commands.length > 0) batches.push([...commands]);
        },
      };
    }
    const worker = (index: number, ip = fake()) => ({
      ip,
      routes: new ServerRoutes({
        tun: workerTun('nl0', index),
        listenPort: 8443,
        sources,
        run: ip.run,
        batch: ip.batch,
        worker: { baseTun: 'nl0', devices: ['nl0', 'nl0-1'], home: index === 0 },
      }),
    });

    it('every worker uses the first TUN’s table; the workers’ routes are no conflict, another server’s are', async function () {
      const { routes } = worker(1);
      expect(routes.table).to.equal(TABLE);
      await routes.check(['198.19.1.0/24']);
      const alone = new ServerRoutes({ tun: 'nl0', listenPort: 8443, sources, run: fake().run, batch: fake().batch });
      expect(await alone.check(['198.19.1.0/24']).catch((e: Error) => e.message)).to.match(
        /covers another nodelink's route 198\.19\.1\.0\/24 dev nl0-1/,
      );
    });

    it('the first keeps backstops and a route for every peer under the sessions’; the others only check', async function () {
      const first = worker(0);
      await first.routes.install(['198.19.2.0/24']);
      expect(first.ip.batches).to.deep.equal([
        [`route add unreachable 198.19.2.0/24 proto 78 metric 4096 table ${TABLE}`],
        [`route replace 198.19.2.0/24 dev nl0 src 198.18.255.1 proto 78 metric 128 table ${TABLE}`],
      ]);
      const second = worker(1);
      await second.routes.install(['198.19.2.0/24']);
      expect(second.ip.batches).to.deep.equal([]);
      await second.routes.remove(['198.19.2.0/24']);
      expect(second.ip.batches).to.deep.equal([
        [`route del 198.19.2.0/24 dev nl0-1 proto 78 metric 64 table ${TABLE}`],
      ]);
      first.ip.batches.length = 0;
      await first.routes.remove(['198.19.2.0/24']);
      expect(first.ip.batches).to.deep.equal([
        [
          `route del 198.19.2.0/24 dev nl0 proto 78 metric 64 table ${TABLE}`,
          `route del 198.19.2.0/24 dev nl0 proto 78 metric 128 table ${TABLE}`,
          `route del unreachable 198.19.2.0/24 proto 78 metric 4096 table ${TABLE}`,
        ],
      ]);
    });

    it('claims with replace and releases naming its own TUN', async function () {
      const { routes, ip } = worker(1);
      await routes.claim(['198.19.1.0/24']);
      await routes.release(['198.19.1.0/24']);
      expect(ip.batches).to.deep.equal([
        [`route replace 198.19.1.0/24 dev nl0-1 src 198.18.255.1 proto 78 metric 64 table ${TABLE}`],
        [`route del 198.19.1.0/24 dev nl0-1 proto 78 metric 64 table ${TABLE}`],
      ]);
    });
  });

  describe('--workers', function () {
    const raw = { listen: '198.18.0.2:8443', key: '/k', peers: '/p.json', 'tunnel-cidr': ['198.18.255.0/24'] };

    it('defaults to one process; names worker TUNs after --tun, each within 15 characters', function () {
      expect(parseServerConfig(raw).workers).to.equal(1);
      expect(parseServerConfig({ ...raw, workers: '4' }).workers).to.equal(4);
      expect(slotOf(parseServerConfig({ ...raw, workers: '3' }), 2).devices).to.deep.equal(['nl0', 'nl0-1', 'nl0-2']);
      expect(() => parseServerConfig({ ...raw, workers: '0' })).to.throw(/--workers must be a whole number from 1/);
      expect(() => parseServerConfig({ ...raw, tun: 'abcdefghijklmn', workers: '2' })).to.throw(
        /--workers 2 needs TUN names up to "abcdefghijklmn-1", over the 15 characters .*shorten --tun/,
      );
      expect(parseServerConfig({ ...raw, tun: 'abcdefghijklmn', workers: '1' }).workers).to.equal(1);
    });

    it('splits each admission limit over the workers, never to nothing', function () {
      expect(perWorker(256, 2)).to.equal(128);
      expect(perWorker(50, 3)).to.equal(17);
      expect(perWorker(1, 4)).to.equal(1);
      expect(perWorker(0, 4)).to.equal(0);
    });
  });
});

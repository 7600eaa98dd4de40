// A node and two server replicas behind one load-balanced address, over loopback TLS and
// FakeTuns: both replicas share one tunnel CIDR and address, as a Deployment's replicas do. The
// node holds a session to each, sends every reply back on the session its flow came in on, and
// takes a dial that lands on a replica it already holds as no failure.

import { expect } from 'chai';
import { setTimeout as sleep } from 'node:timers/promises';
import { encodeKey, parsePeers } from '../../src/auth/index.js';
import type { HandshakeFailure } from '../../src/reasons.js';
import { LinkMetrics, type DaemonStatus, type ReplicaStatus } from '../../src/admin/index.js';
import {
  expectNoSocketLeft,
  Rigs,
  TUNNEL_ADDRESSES,
  TUNNEL_CIDRS,
  newPair,
  type ClientRig,
  type LoadBalancer,
  type ServerRig,
} from '../support/link-rig.js';
import { ipv4, ipv6 } from '../support/packets.js';
import { waitFor } from '../support/wait.js';

const NODE_IP = '198.19.0.11';
const NODE_ROUTES = [`${NODE_IP}/32`, '198.19.1.0/24', 'fd00:19:1::/64'];
const POD6 = 'fd00:19:1::5';
const TUNNEL = TUNNEL_ADDRESSES[0]!.address;
const TUNNEL6 = TUNNEL_ADDRESSES[1]!.address;
const TCP = 6;
const KUBELET = 10250;

/** A TCP segment's first bytes: the ports, then a zeroed rest of a header. */
function tcp(sport: number, dport: number): Buffer {
  const segment = Buffer.alloc(20);
  segment.writeUInt16BE(sport, 0);
  segment.writeUInt16BE(dport, 2);
  return segment;
}

/** The apiserver's side of a flow (tunnel address → node) and the node's reply on it. */
function flow(remotePort: number, v6 = false): { request: Buffer; reply: Buffer } {
  return v6
    ? {
        request: ipv6(TUNNEL6, POD6, tcp(remotePort, 8080), TCP),
        reply: ipv6(POD6, TUNNEL6, tcp(8080, remotePort), TCP),
      }
    : {
        request: ipv4(TUNNEL, NODE_IP, tcp(remotePort, KUBELET), TCP),
        reply: ipv4(NODE_IP, TUNNEL, tcp(KUBELET, remotePort), TCP),
      };
}

/** The samples of one metric in a fresh scrape of a daemon with this status. */
async function samples(role: 'server' | 'client', status: () => DaemonStatus, metric: string): Promise<string[]> {
  const text = await new LinkMetrics({ role, version: 'x', status, processMetrics: false }).text();
  return text.split('\n').filter((line) => line.startsWith(`${metric}{`) || line.startsWith(`${metric} `));
}

describe('a node and two server replicas behind one address', function () {
  this.timeout(10_000);

  const serverPair = newPair();
  const nodePair = newPair();
  // Each replica reads the same peers file, so each parses it itself.
  const registry = () =>
    parsePeers(
      JSON.stringify({
        peers: [{ name: 'node-1', publicKey: encodeKey(nodePair.publicKey), allowedIPs: NODE_ROUTES }],
      }),
      'peers.json',
      TUNNEL_CIDRS,
    );

  const rigs = new Rigs();
  let a: ServerRig;
  let b: ServerRig;
  let balancer: LoadBalancer;
  let failures: HandshakeFailure[];
  let disconnects: string[];

  const replica = async (serverId: string): Promise<ServerRig> =>
    rigs.server({ registry: registry(), keyPair: serverPair, serverId, serverCount: 2 });

  const startNode = (): ClientRig => {
    failures = [];
    disconnects = [];
    return rigs.client({
      port: balancer.port,
      name: 'node-1',
      keyPair: nodePair,
      routes: NODE_ROUTES,
      serverKey: serverPair.publicKey,
      observer: {
        handshakeFailed: (reason) => failures.push(reason),
        disconnected: (peer, reason) => disconnects.push(`${peer}: ${reason}`),
      },
    });
  };

  const replicas = (node: ClientRig): ReplicaStatus => node.client.replicaStatus();

  /** The node holds both replicas, the first dial having landed on replica-a. */
  const holdingBoth = async (): Promise<ClientRig> => {
    const node = startNode();
    await waitFor('the node to hold both replicas', () => node.client.holdsEveryReplica);
    return node;
  };

  beforeEach(async function () {
    a = await replica('replica-a');
    b = await replica('replica-b');
    balancer = await rigs.loadBalancer([a.port, b.port]);
  });

  afterEach(async function () {
    await rigs.stopAll();
    await expectNoSocketLeft();
  });

  it('holds one session to each replica, both on one tunnel CIDR, and says so', async function () {
    const node = await holdingBoth();
    const status = replicas(node);
    expect(status.count).to.equal(2);
    expect([...status.held].sort()).to.deep.equal(['replica-a', 'replica-b']);
    expect(status.missing).to.deep.equal([]);
    expect(status.unseen).to.equal(0);
    expect(status.complete).to.equal(true);
    const peers = node.client.status().peers;
    expect(peers.map((peer) => peer.name).sort()).to.deep.equal(['server replica-a', 'server replica-b']);
    expect(peers.every((peer) => peer.connected)).to.equal(true);
    // The shared tunnel CIDRs are routed into the node's TUN once, not once per replica.
    expect(node.installed).to.deep.equal([TUNNEL_CIDRS.map(String)]);
    for (const server of [a, b]) expect(server.peer('node-1').connected).to.equal(true);
    expect(failures).to.deep.equal([]);
  });

  it('exports replicas held and expected per server address, and the server count, never a server ID', async function () {
    const node = await holdingBoth();
    const nodeStatus = () => node.client.status();
    const address = `127.0.0.1:${balancer.port}`;
    expect(await samples('client', nodeStatus, 'nodelink_replicas_held')).to.deep.equal([
      `nodelink_replicas_held{server="${address}"} 2`,
    ]);
    expect(await samples('client', nodeStatus, 'nodelink_replicas_expected')).to.deep.equal([
      `nodelink_replicas_expected{server="${address}"} 2`,
    ]);
    expect(await samples('client', nodeStatus, 'nodelink_server_count')).to.deep.equal([]);
    expect(await samples('server', a.status, 'nodelink_server_count')).to.deep.equal(['nodelink_server_count 2']);
    expect(await samples('server', a.status, 'nodelink_replicas_held')).to.deep.equal([]);
    // Neither gauge carries a label whose values would change at every replica restart.
    const scrape = await new LinkMetrics({
      role: 'client',
      version: 'x',
      status: nodeStatus,
      processMetrics: false,
    }).text();
    expect(scrape.split('\n').filter((line) => /^nodelink_replicas_\w+\{[^}]*replica-/.test(line))).to.deep.equal([]);
  });

  it('sends each reply back on the session its flow came in on', async function () {
    const node = await holdingBoth();
    const viaA = flow(40000);
    const viaB = flow(40001);
    const viaB6 = flow(40002, true);
    a.tun.inject(viaA.request);
    b.tun.inject(viaB.request);
    b.tun.inject(viaB6.request);
    await node.tun.waitForWritten(3);
    // Replies in an order unlike the requests', so a reply cannot follow the last replica heard.
    node.tun.inject(viaB.reply);
    node.tun.inject(viaA.reply);
    node.tun.inject(viaB6.reply);
    await a.tun.waitForWritten(1);
    await b.tun.waitForWritten(2);
    await sleep(100);
    expect(a.tun.written).to.deep.equal([viaA.reply]);
    expect(b.tun.written).to.deep.equal([viaB.reply, viaB6.reply]);
    expect(replicas(node).flows).to.equal(3);
    // A flow the node opens belongs to no replica yet: it goes to the one held the longest,
    // replica-a (the first dial landed there).
    const opened = ipv4(NODE_IP, TUNNEL, tcp(50000, 443), TCP);
    node.tun.inject(opened);
    await a.tun.waitForWritten(2);
    await sleep(100);
    expect(a.tun.written[1]).to.deep.equal(opened);
    expect(b.tun.written).to.have.length(2);
  });

  it('takes a dial that lands on a replica it already holds as already_held, no failure', async function () {
    balancer.backends = [a.port];
    const node = startNode();
    await waitFor(
      'replica-a to refuse two dials of a node that holds it',
      () => (a.status().refusedConnections?.already_held ?? 0) >= 2,
    );
    const status = replicas(node);
    expect(status.held).to.deep.equal(['replica-a']);
    expect(status.unseen).to.equal(1);
    expect(status.complete).to.equal(false);
    expect(node.client.holdsEveryReplica).to.equal(false);
    const nodeStatus = () => node.client.status();
    expect(await samples('client', nodeStatus, 'nodelink_replicas_held')).to.deep.equal([
      `nodelink_replicas_held{server="127.0.0.1:${balancer.port}"} 1`,
    ]);
    expect(await samples('client', nodeStatus, 'nodelink_replicas_expected')).to.deep.equal([
      `nodelink_replicas_expected{server="127.0.0.1:${balancer.port}"} 2`,
    ]);
    // The session it holds was neither replaced nor closed by the refused dials.
    const peer = a.peer('node-1');
    expect(peer.connected).to.equal(true);
    expect(peer.replacements ?? 0).to.equal(0);
    expect(failures, 'handshake failures counted').to.deep.equal([]);
    expect(disconnects).to.deep.equal([]);
    expect(node.rejected).to.deep.equal([]);
    // The balancer sends dials to replica-b again: the node finds it.
    balancer.backends = [a.port, b.port];
    await waitFor('the node to hold both replicas', () => node.client.holdsEveryReplica);
    expect(failures, 'handshake failures counted').to.deep.equal([]);
    expect(b.status().refusedConnections?.already_held ?? 0).to.equal(0);
  });

  it("drops a reply whose replica is gone (replica_offline) while the other replica's flows go on", async function () {
    const node = await holdingBoth();
    const viaA = flow(40000);
    const viaB = flow(40001);
    a.tun.inject(viaA.request);
    b.tun.inject(viaB.request);
    await node.tun.waitForWritten(2);
    balancer.backends = [b.port];
    await a.server.stop();
    await waitFor('the node to miss replica-a', () => replicas(node).missing.some((gone) => gone.id === 'replica-a'));
    expect(replicas(node).held).to.deep.equal(['replica-b']);
    node.tun.inject(viaA.reply);
    node.tun.inject(viaB.reply);
    await b.tun.waitForWritten(1);
    await waitFor('the reply to replica-a to be counted as dropped', () => {
      const peer = node.client.status().peers.find((p) => p.name === 'server replica-a');
      return peer?.dropsByReason['replica_offline'] === 1;
    });
    expect(b.tun.written).to.deep.equal([viaB.reply]);
    expect(a.tun.written).to.deep.equal([]);
    expect(disconnects).to.deep.equal(['server replica-a: server_shutdown']);
  });
});

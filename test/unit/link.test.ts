// The link end to end over in-memory TUN fakes and real loopback TLS, plus FramedConnection over
// in-memory streams and the reconnect Backoff. No TUN device, namespace or root needed.

import { expect } from 'chai';
import type { Duplex } from 'node:stream';
import { setTimeout as sleep } from 'node:timers/promises';
import { encodeHello, encodeKey, type KeyPair } from '../../src/auth/index.js';
import {
  CloseCode,
  FrameDecoder,
  FrameType,
  HEADER_SIZE,
  decodeCodePayload,
  decodeWelcome,
  encodeFrame,
  writeHeader,
} from '../../src/protocol/index.js';
import { internetChecksum, parseAddress } from '../../src/routing/index.js';
import { Backoff } from '../../src/link-client/index.js';
import { FramedConnection, type ConnectionEvents, type ConnectionOptions } from '../../src/link/connection.js';
import type { DaemonStatus } from '../../src/admin/index.js';
import {
  expectNoSocketLeft,
  APISERVER,
  CONNECTION as RIG_CONNECTION,
  Rigs,
  TUNNEL_CIDRS,
  newPair,
  twoNodes,
  type ClientRig,
  type ServerRig,
} from '../support/link-rig.js';
import { ipv4, ipv6 } from '../support/packets.js';
import { waitFor } from '../support/wait.js';
import { duplexPair } from '../support/streams.js';

// ---------------------------------------------------------------------------------------------
// helpers

/** The status document as `status --json` prints it: through JSON, so only JSON survives. */
function json(status: DaemonStatus): DaemonStatus {
  return JSON.parse(JSON.stringify(status)) as DaemonStatus;
}

// ---------------------------------------------------------------------------------------------
// the forwarding scenario

const CONNECTION: ConnectionOptions = { ...RIG_CONNECTION, deadAfterMs: 1000 };

const NODE_A_ROUTES = ['198.19.0.11/32', '198.19.1.0/24', 'fd00:19:1::/64'];
const NODE_B_ROUTES = ['198.19.0.12/32', '198.19.2.0/24'];

describe('link over FakeTun and loopback TLS', function () {
  this.timeout(5000);

  const { serverPair, pairA, pairB, registry } = twoNodes(NODE_A_ROUTES, NODE_B_ROUTES);

  // Every test gets its own server with node-a and node-b connected, so each runs alone.
  const rigs = new Rigs();
  let server: ServerRig;
  let a: ClientRig;
  let b: ClientRig;

  function startClient(opts: {
    name: string;
    keyPair: KeyPair;
    routes: readonly string[];
    serverKey?: Uint8Array;
    tunName?: string;
  }): ClientRig {
    return rigs.client({
      ...opts,
      port: server.port,
      serverKey: opts.serverKey ?? serverPair.publicKey,
      connection: CONNECTION,
    });
  }

  beforeEach(async function () {
    server = await rigs.server({ registry, keyPair: serverPair, connection: CONNECTION });
    a = startClient({ name: 'node-a', keyPair: pairA, routes: NODE_A_ROUTES });
    b = startClient({ name: 'node-b', keyPair: pairB, routes: NODE_B_ROUTES });
    await waitFor('node-a and node-b to authenticate', () => a.client.isAuthenticated && b.client.isAuthenticated);
  });

  afterEach(async function () {
    await rigs.stopAll();
    // stop() waits for the server's side of every connection; the client sides follow at once.
    await expectNoSocketLeft();
  });

  it('authenticates both clients and installs routes on both sides', async function () {
    await waitFor('client routes', () => a.installed.length > 0 && b.installed.length > 0);
    for (const rig of [a, b]) {
      expect(rig.installed).to.deep.equal([['198.18.255.0/24', 'fd00:18:ff::/64']]);
      expect(rig.rejected).to.deep.equal([]);
      expect(rig.client.serverTunnelAddresses).to.deep.equal(['198.18.255.1', 'fd00:18:ff::1']);
    }
    // Every allowedIP at start, before any node connected (offline nodes must not leak to the default route).
    expect(server.installed).to.deep.equal([[...NODE_A_ROUTES, ...NODE_B_ROUTES]]);
    expect(server.peer('node-a').connected).to.equal(true);
    expect(server.peer('node-b').connected).to.equal(true);
  });

  it('delivers TUN packets to the node that announced the destination, unchanged, and only there', async function () {
    const toA = ipv4(APISERVER, '198.19.1.5', Buffer.from('GET /metrics'), 6);
    server.tun.inject(toA);
    expect((await a.tun.waitForWritten(1))[0]).to.deep.equal(toA);

    const toB = ipv4(APISERVER, '198.19.2.7', Buffer.from('GET /healthz'), 6);
    server.tun.inject(toB);
    expect((await b.tun.waitForWritten(1))[0]).to.deep.equal(toB);

    const toA6 = ipv6('fd00:18:ff::1', 'fd00:19:1::2', Buffer.from('v6 payload'));
    server.tun.inject(toA6);
    const [first, second] = await a.tun.waitForWritten(2);
    expect(first).to.deep.equal(toA);
    expect(second).to.deep.equal(toA6);

    // A node IP (/32) goes to its node too.
    const kubelet = ipv4(APISERVER, '198.19.0.12', Buffer.from(':10250'), 6);
    server.tun.inject(kubelet);
    expect((await b.tun.waitForWritten(2))[1]).to.deep.equal(kubelet);

    await sleep(100);
    expect(a.tun.written).to.have.length(2);
    expect(b.tun.written).to.have.length(2);
    expect(server.tun.written, 'no ICMP or echo on the server TUN').to.deep.equal([]);
  });

  it('accepts from a node packets whose source is in its announced routes', async function () {
    const reply = ipv4('198.19.1.5', APISERVER, Buffer.from('metrics'), 6);
    a.tun.inject(reply);
    expect((await server.tun.waitForWritten(1))[0]).to.deep.equal(reply);

    const reply6 = ipv6('fd00:19:1::2', 'fd00:18:ff::1', Buffer.from('v6 reply'));
    a.tun.inject(reply6);
    expect((await server.tun.waitForWritten(2))[1]).to.deep.equal(reply6);
  });

  it("node-a's client does not send a packet whose source it does not announce (unannounced_source)", async function () {
    a.tun.inject(ipv4('198.19.2.7', APISERVER, Buffer.from('spoof'))); // node-b's pod
    a.tun.inject(ipv4('198.18.255.1', APISERVER, Buffer.from('spoof'))); // the server's own address
    await waitFor(
      'unannounced_source drops on the client',
      () => a.client.status().peers[0]!.dropsByReason.unannounced_source === 2,
    );
    // A legitimate packet sent after them arrives alone, so the spoofed ones had every chance to.
    const legit = ipv4('198.19.0.11', APISERVER, Buffer.from('legit'));
    a.tun.inject(legit);
    expect(await server.tun.waitForWritten(1)).to.deep.equal([legit]);
    await sleep(50);
    expect(server.tun.written).to.deep.equal([legit]);
    expect(server.peer('node-a').dropsByReason.spoofed_source ?? 0, 'never reached the server').to.equal(0);
  });

  it('the server drops packets from a node whose source that node did not announce (spoofed_source)', async function () {
    // A client that skips its own check: a hand-made session with node-a's key. Hello and data go
    // in one write, so the server handles them back to back, before the real node-a can redial.
    const rogue = await rigs.raw(server.port);
    const spoofed = [
      ipv4('198.19.2.7', APISERVER, Buffer.from('spoof')), //  node-b's pod
      ipv4('198.19.99.1', APISERVER, Buffer.from('spoof')), // nobody's
      ipv6('fd00:19:2::5', 'fd00:18:ff::1'), //                nobody's, IPv6
    ];
    const legit = ipv4('198.19.1.5', APISERVER, Buffer.from('legit'));
    rogue.socket.write(
      Buffer.concat([
        encodeFrame(FrameType.Hello, encodeHello(pairA, rogue.exporter, { name: 'node-a', routes: NODE_A_ROUTES })),
        ...spoofed.map((p) => encodeFrame(FrameType.Data, p)),
        encodeFrame(FrameType.Data, legit),
      ]),
    );
    expect(await server.tun.waitForWritten(1)).to.deep.equal([legit]);
    await waitFor('spoofed_source drops for node-a', () => server.peer('node-a').dropsByReason.spoofed_source === 3);
    expect(server.peer('node-b').dropsByReason.spoofed_source ?? 0).to.equal(0);
    await sleep(50);
    expect(server.tun.written).to.deep.equal([legit]);
    // The real node-a redials after being replaced, and takes its session back.
    await waitFor('the hand-made session to be replaced', () => rogue.closed);
    await waitFor('node-a to be back', () => a.client.isAuthenticated && server.peer('node-a').connected);
  });

  it('drops a packet for an address no peer owns (no_route) and answers ICMP host unreachable', async function () {
    const lost = ipv4(APISERVER, '198.19.99.1', Buffer.from('0123456789abcdef'), 6);
    server.tun.inject(lost);
    const [icmp] = await server.tun.waitForWritten(1);
    expect(server.status().dropsByReason.no_route).to.equal(1);

    expect(icmp![0]! >> 4, 'IPv4').to.equal(4);
    expect(icmp![9], 'protocol ICMP').to.equal(1);
    expect(icmp!.readUInt16BE(2), 'total length').to.equal(icmp!.length);
    // Sourced from the unreachable destination itself (src/link-server/server.ts answerUnreachable:
    // the server's own tunnel address arriving from the TUN would be dropped by the kernel as martian).
    expect(icmp!.subarray(12, 16)).to.deep.equal(Buffer.from(parseAddress('198.19.99.1').bytes));
    expect(icmp!.subarray(16, 20)).to.deep.equal(Buffer.from(parseAddress(APISERVER).bytes));
    expect(internetChecksum(icmp!, 0, 20), 'IP header checksum').to.equal(0);
    expect(icmp![20], 'type: destination unreachable').to.equal(3);
    expect(internetChecksum(icmp!, 20, icmp!.length), 'ICMP checksum').to.equal(0);
    // RFC 792: the original header plus 8 bytes of its payload.
    expect(icmp!.subarray(28)).to.deep.equal(lost.subarray(0, 28));
    await sleep(50);
    expect(a.tun.written).to.deep.equal([]);
    expect(b.tun.written).to.deep.equal([]);
  });

  it('reports every status field, with counters that move', async function () {
    const toA = ipv4(APISERVER, '198.19.1.9', Buffer.alloc(100, 1));
    const fromA = ipv4('198.19.1.9', APISERVER, Buffer.alloc(50, 2));
    server.tun.inject(toA);
    a.tun.inject(fromA);
    await a.tun.waitForWritten(1);
    await server.tun.waitForWritten(1);
    // A keepalive round trip (200 ms interval) must have happened for lastPongMs.
    await waitFor('a pong on the server side', () => typeof server.peer('node-a').lastPongMs === 'number');

    const doc = server.status();
    expect(doc.role).to.equal('server');
    expect(doc.tun).to.equal('srv0');
    expect(doc.tunnelAddress).to.equal('198.18.255.1');
    expect(doc.peers.map((p) => p.name)).to.deep.equal(['node-a', 'node-b']);
    for (const p of doc.peers) {
      for (const field of [
        'name',
        'publicKey',
        'connected',
        'endpoint',
        'routes',
        'connectedSince',
        'lastPongMs',
        'rxBytes',
        'txBytes',
        'rxPackets',
        'txPackets',
        'drops',
      ]) {
        expect(p, `peers[${p.name}]`).to.have.property(field);
      }
      expect(p.connected).to.equal(true);
      expect(p.endpoint).to.match(/^127\.0\.0\.1:\d+$/);
      expect(new Date(p.connectedSince!).toISOString()).to.equal(p.connectedSince);
      for (const n of [p.rxBytes, p.txBytes, p.rxPackets, p.txPackets, p.drops]) expect(n).to.be.a('number');
    }
    const nodeA = doc.peers[0]!;
    expect(nodeA.publicKey).to.equal(encodeKey(pairA.publicKey));
    expect(nodeA.routes).to.deep.equal(NODE_A_ROUTES);
    expect(nodeA.lastPongMs).to.be.a('number').and.to.be.at.least(0).and.below(1000);
    expect(nodeA.txPackets).to.equal(1);
    expect(nodeA.txBytes).to.equal(toA.length);
    expect(nodeA.rxPackets).to.equal(1);
    expect(nodeA.rxBytes).to.equal(fromA.length);
    for (const p of doc.peers) {
      expect(p.drops, 'drops is the sum of dropsByReason').to.equal(
        Object.values(p.dropsByReason).reduce((x, y) => x + y, 0),
      );
    }
    expect(doc.peers[1]!.routes).to.deep.equal(NODE_B_ROUTES);

    // The client side: role client, one peer, the server.
    const mine = json(a.client.status());
    expect(mine.role).to.equal('client');
    expect(mine.tun).to.equal('node-a-tun');
    expect(mine.peers).to.have.length(1);
    const srv = mine.peers[0]!;
    expect(srv.publicKey).to.equal(encodeKey(serverPair.publicKey));
    expect(srv.connected).to.equal(true);
    expect(srv.endpoint).to.equal(`127.0.0.1:${server.port}`);
    expect(srv.routes).to.deep.equal(['198.18.255.0/24', 'fd00:18:ff::/64']);
    expect(srv.rxPackets).to.be.at.least(1);
    expect(srv.txPackets).to.be.at.least(1);
  });

  it('rejects a client with an unknown key; onRejected gets a reason naming the peers file', async function () {
    const stranger = startClient({ name: 'node-x', keyPair: newPair(), routes: ['198.19.0.99/32'] });
    await waitFor('onRejected', () => stranger.rejected.length > 0);
    expect(stranger.rejected).to.have.length(1);
    expect(stranger.rejected[0]).to.include('peers file');
    expect(stranger.client.isAuthenticated).to.equal(false);
    expect(stranger.installed).to.deep.equal([]);
    // A rejected client gives up instead of hammering the server.
    await sleep(300);
    expect(stranger.rejected).to.have.length(1);
    await stranger.client.stop();
  });

  it("rejects node-a's key announcing 198.19.3.0/24, with a reason naming allowedIPs, and keeps the real node-a", async function () {
    const endpointBefore = server.peer('node-a').endpoint;
    const greedy = startClient({
      name: 'node-a',
      keyPair: pairA,
      routes: ['198.19.0.11/32', '198.19.3.0/24'],
      tunName: 'greedy',
    });
    await waitFor('onRejected', () => greedy.rejected.length > 0);
    expect(greedy.rejected[0]).to.include('allowedIPs');
    expect(greedy.rejected[0]).to.include('198.19.3.0/24');
    expect(greedy.client.isAuthenticated).to.equal(false);
    await greedy.client.stop();
    expect(server.peer('node-a').connected).to.equal(true);
    expect(server.peer('node-a').endpoint).to.equal(endpointBefore);
    expect(a.client.isAuthenticated).to.equal(true);
  });

  it('a client pinning the wrong server key never authenticates, and the server does not count it connected', async function () {
    // It even holds node-b's real key: with a broken pin check it would take over node-b's session.
    const before = server.peer('node-b');
    const misled = startClient({
      name: 'node-b',
      keyPair: pairB,
      routes: NODE_B_ROUTES,
      serverKey: newPair().publicKey,
      tunName: 'misled',
    });
    const deadline = Date.now() + 1500;
    while (Date.now() < deadline) {
      expect(misled.client.isAuthenticated).to.equal(false);
      await sleep(20);
    }
    expect(misled.installed).to.deep.equal([]);
    expect(misled.rejected, 'nothing reached the server to reject').to.deep.equal([]);
    expect(json(misled.client.status()).peers[0]!.connected).to.equal(false);
    const after = server.peer('node-b');
    expect(after.connected).to.equal(true);
    expect(after.endpoint, "node-b's session is the original one").to.equal(before.endpoint);
    expect(after.connectedSince).to.equal(before.connectedSince);
    // Packets from its TUN go nowhere.
    misled.tun.inject(ipv4('198.19.2.7', APISERVER));
    await sleep(50);
    expect(server.tun.written).to.deep.equal([]);
    await misled.client.stop();
  });

  it('does not forward a Data frame sent before Hello', async function () {
    const session = await rigs.raw(server.port);
    session.socket.write(encodeFrame(FrameType.Data, ipv4('198.19.1.5', APISERVER)));
    await sleep(150);
    expect(server.tun.written).to.deep.equal([]);
    session.socket.destroy();
  });

  it('refuses a hello replayed from another TLS session (channel binding)', async function () {
    const first = await rigs.raw(server.port);
    const second = await rigs.raw(server.port);
    expect(first.exporter.equals(second.exporter)).to.equal(false);
    // Signed with node-a's real key, for the first session; presented in the second.
    const endpointBefore = server.peer('node-a').endpoint;
    second.hello(pairA, { name: 'node-a', routes: NODE_A_ROUTES }, first.exporter);
    await waitFor('the server to reject and close', () => second.closed);
    const { code, reason } = second.codeOf(FrameType.Reject);
    expect(code).to.equal(CloseCode.AuthFailed);
    expect(reason).to.match(/replayed|forged/);
    expect(second.frame(FrameType.Welcome)).to.equal(undefined);
    expect(server.peer('node-a').endpoint).to.equal(endpointBefore);
    first.socket.destroy();
  });

  it('closes a connection whose first frame is larger than the hello limit', async function () {
    const session = await rigs.raw(server.port);
    const header = Buffer.alloc(HEADER_SIZE);
    writeHeader(header, 0, FrameType.Hello, 100_000);
    session.socket.write(header);
    await waitFor('the server to close', () => session.closed);
    const { code, reason } = session.codeOf(FrameType.Close);
    expect(code).to.equal(CloseCode.ProtocolError);
    expect(reason).to.include('100000');
  });

  it('closes a connection that sends no hello within handshakeTimeoutMs', async function () {
    const session = await rigs.raw(server.port);
    const started = Date.now();
    await waitFor('the server to close', () => session.closed, 3500);
    expect(Date.now() - started).to.be.at.least(1500);
    expect(session.codeOf(FrameType.Close).code).to.equal(CloseCode.Timeout);
  });

  it("a second connection with node-a's key replaces the first, and routes keep working", async function () {
    // One packet each way first, so the peer has counters to keep across the reconnects.
    server.tun.inject(ipv4(APISERVER, '198.19.1.5', Buffer.from('early')));
    await a.tun.waitForWritten(1);
    a.tun.inject(ipv4('198.19.1.5', APISERVER, Buffer.from('early reply')));
    await server.tun.waitForWritten(1);
    const before = server.peer('node-a');
    const clientSinceBefore = a.client.status().peers[0]!.connectedSince;

    // A second connection with node-a's identity (as after a node reboot with a half-open old stream).
    const second = await rigs.raw(server.port);
    second.hello(pairA, { name: 'node-a', routes: NODE_A_ROUTES });
    await waitFor('a Welcome on the second connection', () => second.frame(FrameType.Welcome) !== undefined);
    const welcome = decodeWelcome(second.frame(FrameType.Welcome)!.payload);
    expect(welcome.tunnelCidrs).to.deep.equal(TUNNEL_CIDRS.map(String));

    // The first (the LinkClient's) was closed with 'replaced'; the client then redials (backoff
    // 50 ms) and, being the newest, replaces the hand-made connection in turn.
    await waitFor('the hand-made connection to be replaced', () => second.closed);
    const { code, reason } = second.codeOf(FrameType.Close);
    expect(code).to.equal(CloseCode.Replaced);
    expect(reason).to.include('replaced');

    await waitFor('node-a to be authenticated again', () => a.client.isAuthenticated);
    await waitFor('node-a connected on the server', () => server.peer('node-a').connected);
    const after = server.peer('node-a');
    expect(after.endpoint).to.not.equal(before.endpoint);
    expect(after.endpoint).to.not.equal(`127.0.0.1:${second.socket.localPort}`);
    expect(a.client.status().peers[0]!.connectedSince).to.not.equal(clientSinceBefore);
    // Counters belong to the peer and survive the reconnects.
    expect([after.txPackets, after.rxPackets]).to.deep.equal([1, 1]);
    expect(a.installed, 'the same tunnel CIDRs are not installed twice').to.have.length(1);

    const toA = ipv4(APISERVER, '198.19.1.5');
    server.tun.inject(toA);
    expect((await a.tun.waitForWritten(2))[1]).to.deep.equal(toA);
    const fromA = ipv4('198.19.1.5', APISERVER);
    a.tun.inject(fromA);
    expect((await server.tun.waitForWritten(2))[1]).to.deep.equal(fromA);
  });

  it('after node-b stops, a packet for its pod is dropped as peer_offline and answered with ICMP', async function () {
    await b.client.stop();
    await waitFor('node-b disconnected on the server', () => !server.peer('node-b').connected);
    const nodeB = server.peer('node-b');
    expect(nodeB.endpoint).to.equal(null);
    expect(nodeB.routes).to.deep.equal([]);
    expect(nodeB.connectedSince).to.equal(null);
    expect(b.client.isAuthenticated).to.equal(false);

    const lost = ipv4(APISERVER, '198.19.2.7', Buffer.from('GET /metrics'), 6);
    server.tun.inject(lost);
    const [icmp] = await server.tun.waitForWritten(1);
    expect(server.peer('node-b').dropsByReason.peer_offline).to.equal(1);
    expect(server.status().dropsByReason.no_route ?? 0, 'counted against node-b, not as unknown').to.equal(0);
    expect(icmp![9]).to.equal(1);
    expect(icmp![20]).to.equal(3);
    expect(icmp!.subarray(12, 16)).to.deep.equal(Buffer.from(parseAddress('198.19.2.7').bytes));
    expect(icmp!.subarray(16, 20)).to.deep.equal(Buffer.from(parseAddress(APISERVER).bytes));
    // Node-a is unaffected.
    const toA = ipv4(APISERVER, '198.19.1.5');
    server.tun.inject(toA);
    expect(await a.tun.waitForWritten(1)).to.deep.equal([toA]);
  });
});

// ---------------------------------------------------------------------------------------------
// FramedConnection alone, over in-memory streams

interface Recorder extends ConnectionEvents {
  readonly data: Buffer[];
  readonly control: Array<{ type: FrameType; payload: Buffer }>;
  readonly closes: Array<{ code: CloseCode; reason: string; byPeer: boolean }>;
}

function recorder(): Recorder {
  const data: Buffer[] = [];
  const control: Recorder['control'] = [];
  const closes: Recorder['closes'] = [];
  return {
    data,
    control,
    closes,
    onData: (packet) => data.push(Buffer.from(packet)),
    onControl: (type, payload) => control.push({ type, payload: Buffer.from(payload) }),
    onClose: (code, reason, byPeer) => closes.push({ code, reason, byPeer }),
  };
}

const MEMORY: ConnectionOptions = {
  maxQueueBytes: 1 << 24,
  keepaliveIntervalMs: 20,
  deadAfterMs: 5000,
};

describe('FramedConnection over in-memory streams', function () {
  this.timeout(5000);
  const streams: Duplex[] = [];
  const connections: FramedConnection[] = [];

  function pair(optionsA: ConnectionOptions = MEMORY, optionsB: ConnectionOptions = MEMORY) {
    const [sa, sb] = duplexPair();
    streams.push(sa, sb);
    const ea = recorder();
    const eb = recorder();
    const ca = new FramedConnection(sa, ea, optionsA);
    const cb = new FramedConnection(sb, eb, optionsB);
    connections.push(ca, cb);
    return { sa, sb, ea, eb, ca, cb };
  }

  afterEach(function () {
    for (const c of connections.splice(0)) c.destroy('test over');
    for (const s of streams.splice(0)) s.destroy();
  });

  it('delivers many data packets sent in one tick, in order, corked once', async function () {
    const { sa, ca, cb, eb } = pair();
    let corks = 0;
    const cork = sa.cork.bind(sa);
    sa.cork = () => {
      corks++;
      cork();
    };
    const sent: Buffer[] = [];
    for (let i = 0; i < 2000; i++) {
      const packet = ipv4('198.19.1.5', APISERVER, Buffer.alloc(i % 300, i & 0xff));
      packet.writeUInt16BE(i, 4); // the identification field numbers the packets
      sent.push(packet);
      expect(ca.sendData(packet)).to.equal(true);
    }
    expect(corks, 'the first packet at once (the link was idle), one cork for the rest of the tick').to.equal(1);
    await waitFor('2000 packets', () => eb.data.length === sent.length);
    expect(eb.data.map((p) => p.readUInt16BE(4))).to.deep.equal(sent.map((_, i) => i));
    expect(eb.data).to.deep.equal(sent);
    const bytes = sent.reduce((n, p) => n + p.length, 0);
    expect(ca.counters.txPackets).to.equal(2000);
    expect(ca.counters.txBytes).to.equal(bytes);
    expect(cb.counters.rxPackets).to.equal(2000);
    expect(cb.counters.rxBytes).to.equal(bytes);
    expect(ca.counters.totalDrops()).to.equal(0);
  });

  /** Every write the stream gets: its length, and whether the stream was corked then. */
  function recordWrites(stream: Duplex): Array<{ length: number; corked: boolean }> {
    const writes: Array<{ length: number; corked: boolean }> = [];
    const write = stream.write.bind(stream) as (chunk: Buffer) => boolean;
    stream.write = ((chunk: Buffer) => {
      writes.push({ length: chunk.length, corked: stream.writableCorked > 0 });
      return write(chunk);
    }) as typeof stream.write;
    return writes;
  }

  it('writes a lone packet on an idle link at once, as one frame, before the tick ends', async function () {
    const { sa, ca, eb } = pair();
    const writes = recordWrites(sa);
    const packet = ipv4('198.19.1.5', APISERVER, Buffer.alloc(56, 7));
    expect(ca.sendData(packet)).to.equal(true);
    expect(writes, 'one uncorked write of header and packet, in this tick').to.deep.equal([
      { length: HEADER_SIZE + packet.length, corked: false },
    ]);
    await waitFor('the packet', () => eb.data.length === 1);
    expect(eb.data[0]).to.deep.equal(packet);
    expect(ca.counters.txPackets).to.equal(1);
    expect(ca.counters.txBytes).to.equal(packet.length);
  });

  it('corks a busy link: packets soon after the last write wait for the tick, behind a lone one', async function () {
    const { sa, ca, eb } = pair();
    const sent = [1, 2, 3, 4].map((i) => ipv4('198.19.1.5', APISERVER, Buffer.alloc(20 + i, i)));
    ca.sendData(sent[0]!);
    expect(sa.writableCorked, 'the lone packet went at once').to.equal(0);
    ca.sendData(sent[1]!); // the same tick as the lone one: corked behind it
    expect(sa.writableCorked).to.equal(1);
    await new Promise<void>((resolve) => setImmediate(resolve));
    expect(sa.writableLength, 'the first tick written out').to.equal(0);
    ca.sendData(sent[2]!); // the next tick, right after: the link is busy, not idle
    ca.sendData(sent[3]!);
    expect(sa.writableCorked, 'corked until the tick ends').to.equal(1);
    await new Promise<void>((resolve) => process.nextTick(resolve));
    expect(sa.writableCorked, 'uncorked when it ends').to.equal(0);
    await waitFor('4 packets', () => eb.data.length === 4);
    expect(eb.data).to.deep.equal(sent);
  });

  it('hands Hello/Welcome to onControl and, once the session is open, answers Ping with Pong, setting rttMs', async function () {
    const { ca, cb, eb, ea } = pair();
    ca.sendControl(FrameType.Hello, Buffer.from('hi'));
    await waitFor('the hello', () => eb.control.length === 1);
    expect(eb.control[0]!.type).to.equal(FrameType.Hello);
    expect(eb.control[0]!.payload.toString()).to.equal('hi');

    expect(ca.rttMs).to.equal(undefined);
    // Both ends open the session, as the server does on sending its Welcome and the node on
    // reading it; each then pings and measures its own round trip.
    ca.startKeepalive();
    cb.startKeepalive();
    await waitFor('a pong', () => ca.rttMs !== undefined && cb.rttMs !== undefined);
    expect(ca.rttMs).to.be.at.least(0).and.below(1000);
    expect(ca.lastPongAt).to.be.a('number');
    expect(ea.control, 'ping and pong are handled inside').to.deep.equal([]);
    expect(eb.control).to.have.length(1);
  });

  it('drops data with queue_full when the reader stalls, never control frames, and delivers the rest', async function () {
    const [sa, sb] = duplexPair();
    streams.push(sa, sb);
    const ea = recorder();
    const ca = new FramedConnection(sa, ea, { ...MEMORY, maxQueueBytes: 4096 });
    connections.push(ca);
    // sb has no reader: nothing consumes what ca writes.
    const packet = ipv4('198.19.1.5', APISERVER, Buffer.alloc(1000, 7));
    let accepted = 0;
    for (let i = 0; i < 200; i++) {
      if (ca.sendData(packet)) accepted++;
      await new Promise<void>((resolve) => setImmediate(resolve)); // one packet per tick: no burst
    }
    const drops = ca.counters.drops.get('queue_full') ?? 0;
    expect(drops, 'drops').to.be.greaterThan(0);
    expect(accepted + drops).to.equal(200);
    expect(ca.counters.txPackets).to.equal(accepted);
    expect(ca.queuedBytes).to.be.greaterThan(4096);
    expect(ca.queuedBytes, 'memory stays bounded').to.be.below(4096 + 2 * (packet.length + HEADER_SIZE));
    ca.sendControl(FrameType.Ping, Buffer.alloc(8));

    // Now read: every accepted packet, then the ping, arrive.
    const types: FrameType[] = [];
    const decoder = new FrameDecoder((type) => types.push(type));
    sb.on('data', (chunk: Buffer) => decoder.push(chunk));
    await waitFor('the queue to drain', () => types.length === accepted + 1);
    expect(types.slice(0, accepted).every((t) => t === FrameType.Data)).to.equal(true);
    expect(types[accepted]).to.equal(FrameType.Ping);
    expect(ea.closes).to.deep.equal([]);
  });

  it('drops nothing at the same rate when the reader keeps up', async function () {
    const { ca, eb } = pair({ ...MEMORY, maxQueueBytes: 4096 });
    const packet = ipv4('198.19.1.5', APISERVER, Buffer.alloc(1000, 7));
    for (let i = 0; i < 200; i++) {
      expect(ca.sendData(packet)).to.equal(true);
      await new Promise<void>((resolve) => setImmediate(resolve));
    }
    await waitFor('200 packets', () => eb.data.length === 200);
    expect(ca.counters.totalDrops()).to.equal(0);
  });

  it('closes with a reason the peer receives, exactly once on each side', async function () {
    const { ca, ea, eb, cb } = pair();
    ca.close(CloseCode.ServerShutdown, 'server is shutting down');
    ca.close(CloseCode.Normal, 'again');
    await waitFor('the peer to see the close', () => eb.closes.length > 0);
    expect(eb.closes).to.deep.equal([
      { code: CloseCode.ServerShutdown, reason: 'server is shutting down', byPeer: true },
    ]);
    expect(ea.closes).to.deep.equal([
      { code: CloseCode.ServerShutdown, reason: 'server is shutting down', byPeer: false },
    ]);
    expect(ca.isClosed).to.equal(true);
    expect(cb.isClosed).to.equal(true);
    expect(ca.sendData(ipv4('198.19.1.5', APISERVER))).to.equal(false);
    await sleep(20);
    expect(ea.closes).to.have.length(1);
    expect(eb.closes).to.have.length(1);
  });

  it('closes with protocol_error on a frame of an unknown version', async function () {
    const [sa, sb] = duplexPair();
    streams.push(sa, sb);
    const ea = recorder();
    const ca = new FramedConnection(sa, ea, MEMORY);
    connections.push(ca);
    const types: Array<{ type: FrameType; payload: Buffer }> = [];
    const decoder = new FrameDecoder((type, payload) => types.push({ type, payload: Buffer.from(payload) }));
    sb.on('data', (chunk: Buffer) => decoder.push(chunk));
    sb.write(Buffer.from([9, FrameType.Data, 0, 0, 0, 0]));
    await waitFor('the close', () => ea.closes.length > 0);
    expect(ea.closes[0]!.code).to.equal(CloseCode.ProtocolError);
    expect(ea.closes[0]!.reason).to.include('version 9');
    await waitFor('the Close frame', () => types.length > 0);
    expect(types[0]!.type).to.equal(FrameType.Close);
    expect(decodeCodePayload(types[0]!.payload).code).to.equal(CloseCode.ProtocolError);
  });

  it('declares a silent peer dead after deadAfterMs', async function () {
    const [sa, sb] = duplexPair();
    streams.push(sa, sb);
    const ea = recorder();
    const ca = new FramedConnection(sa, ea, { ...MEMORY, keepaliveIntervalMs: 20, deadAfterMs: 100 });
    connections.push(ca);
    sb.resume(); // reads the pings, never answers
    const started = Date.now();
    ca.startKeepalive();
    await waitFor('the dead-peer close', () => ea.closes.length > 0, 1000);
    expect(Date.now() - started).to.be.at.least(100);
    expect(ea.closes[0]!.reason).to.include('silent');
    expect(ca.isClosed).to.equal(true);
  });
});

// ---------------------------------------------------------------------------------------------

describe('Backoff', function () {
  it('stays within [0, min(cap, base * 2^n)] for every attempt n', function () {
    const backoff = new Backoff(100, 15_000);
    for (let n = 0; n < 60; n++) {
      const value = backoff.next();
      expect(value, `attempt ${n}`)
        .to.be.at.least(0)
        .and.at.most(Math.min(15_000, 100 * 2 ** n));
      expect(Number.isInteger(value)).to.equal(true);
    }
  });

  it('reaches the ceiling of each attempt and then the cap, and reset starts over', function () {
    const top = new Backoff(100, 1000, () => 0.999999);
    expect([1, 2, 3, 4, 5, 6].map(() => top.next())).to.deep.equal([99, 199, 399, 799, 999, 999]);
    top.reset();
    expect(top.next()).to.equal(99);
    const bottom = new Backoff(100, 1000, () => 0);
    expect([bottom.next(), bottom.next(), bottom.next()]).to.deep.equal([0, 0, 0]);
  });

  it('does not overflow after very many attempts', function () {
    const backoff = new Backoff(500, 15_000, () => 0.5);
    let value = 0;
    for (let n = 0; n < 10_000; n++) value = backoff.next();
    expect(value).to.equal(7500);
  });

  it('spreads 1000 draws over the range (full jitter)', function () {
    const backoff = new Backoff(1000, 1000);
    const draws = Array.from({ length: 1000 }, () => backoff.next());
    expect(new Set(draws).size).to.be.greaterThan(100);
    expect(Math.min(...draws)).to.be.below(100);
    expect(Math.max(...draws)).to.be.above(900);
    const mean = draws.reduce((s, v) => s + v, 0) / draws.length;
    expect(mean).to.be.within(400, 600);
  });
});

// A stolen key in a replacement loop: the server limits how often one key may replace its own
// session, so the current session keeps working and the storm shows in status; and a node whose
// sessions keep ending within seconds backs off instead of starting over after every welcome.

import { expect } from 'chai';
import { createServer as createTlsServer, type Server as TlsServer, type TLSSocket } from 'node:tls';
import { encodeHello, encodeKey, parsePeers } from '../../src/auth/index.js';
import {
  CloseCode,
  FrameDecoder,
  FrameType,
  closeCodeName,
  decodeCodePayload,
  encodeCode,
  encodeFrame,
} from '../../src/protocol/index.js';
import { createServerCertificate } from '../../src/link-server/index.js';
import { LinkClient } from '../../src/link-client/index.js';
import { Prefix } from '../../src/routing/index.js';
import { FakeTun } from '../support/fake-tun.js';
import {
  APISERVER,
  CONNECTION,
  RawSession,
  Rigs,
  TUNNEL_CIDRS,
  newPair,
  recordingLogger,
} from '../support/link-rig.js';
import { ipv4 } from '../support/packets.js';
import { waitFor } from '../support/wait.js';

const A_ROUTES = ['198.19.1.0/24'];

describe('session replacement storms', function () {
  this.timeout(15_000);
  const rigs = new Rigs();
  const serverPair = newPair();
  const pairA = newPair();
  const registry = parsePeers(
    JSON.stringify({ peers: [{ name: 'node-a', publicKey: encodeKey(pairA.publicKey), allowedIPs: A_ROUTES }] }),
    'peers.json',
    TUNNEL_CIDRS,
  );

  afterEach(async function () {
    await rigs.stopAll();
  });

  /** A hand-made session of node-a: resolves once the server welcomed or refused it. */
  async function helloAsNodeA(port: number): Promise<RawSession> {
    const session = await rigs.raw(port);
    session.socket.write(
      encodeFrame(FrameType.Hello, encodeHello(pairA, session.exporter, { name: 'node-a', routes: A_ROUTES })),
    );
    await waitFor(
      'a Welcome or a refusal',
      () => session.frames.some((f) => f.type !== FrameType.Ping && f.type !== FrameType.Data) || session.closed,
    );
    return session;
  }

  it('refuses a key that replaced its session 5 times in a row (replace_limited); the current session keeps working', async function () {
    const s = await rigs.server({ registry, keyPair: serverPair });
    const sessions: RawSession[] = [];
    for (let i = 0; i < 6; i++) {
      const session = await helloAsNodeA(s.port);
      expect(session.frame(FrameType.Welcome), `session ${i} welcomed`).to.not.equal(undefined);
      sessions.push(session);
    }
    const current = sessions[5]!;
    const refused = await helloAsNodeA(s.port);
    const reject = refused.frame(FrameType.Reject);
    expect(reject, 'the 6th replacement is refused').to.not.equal(undefined);
    const { code, reason } = decodeCodePayload(reject!.payload);
    expect(closeCodeName(code)).to.equal('replace_limited');
    expect(reason).to.match(/node-a/);
    await refused.closedPromise;

    // The session in place is untouched: still connected, and still carrying traffic.
    expect(current.closed).to.equal(false);
    const peer = s.peer('node-a');
    expect(peer.connected).to.equal(true);
    expect(peer.endpoint).to.equal(`127.0.0.1:${current.socket.localPort}`);
    s.tun.inject(ipv4(APISERVER, '198.19.1.7'));
    await waitFor('the packet at the current session', () => current.frames.some((f) => f.type === FrameType.Data));
    expect(peer).to.include({ replacements: 5, replacementsRefused: 1 });
  });

  describe('a node whose sessions end within seconds', function () {
    let server: TlsServer | undefined;
    let client: LinkClient | undefined;

    afterEach(async function () {
      await client?.stop();
      await new Promise<void>((resolve) => (server ? server.close(() => resolve()) : resolve()));
    });

    it('keeps backing off after each welcome instead of starting over', async function () {
      // A server that welcomes every node and replaces it 30 ms later, as a thief's loop does.
      const certificate = await createServerCertificate(serverPair);
      server = createTlsServer({ cert: certificate.certPem, key: certificate.keyPem, minVersion: 'TLSv1.3' });
      server.on('secureConnection', (socket: TLSSocket) => {
        socket.on('error', () => undefined);
        const decoder = new FrameDecoder((type) => {
          if (type !== FrameType.Hello) return;
          socket.write(
            encodeFrame(
              FrameType.Welcome,
              Buffer.from(JSON.stringify({ tunnelCidrs: TUNNEL_CIDRS.map(String), serverAddresses: [] })),
            ),
          );
          setTimeout(() => socket.end(encodeCode(FrameType.Close, CloseCode.Replaced, 'replaced')), 30);
        });
        socket.on('data', (chunk: Buffer) => decoder.push(chunk));
      });
      await new Promise<void>((resolve) => server!.listen(0, '127.0.0.1', resolve));
      const { log, lines } = recordingLogger();
      client = new LinkClient({
        host: '127.0.0.1',
        port: (server.address() as { port: number }).port,
        serverKey: serverPair.publicKey,
        keyPair: pairA,
        name: 'node-a',
        routes: A_ROUTES.map((route) => Prefix.parse(route)),
        tun: new FakeTun('node-a-tun'),
        connection: CONNECTION,
        handshakeTimeoutMs: 2000,
        backoffBaseMs: 10,
        backoffCapMs: 10_000,
        installRoutes: async () => undefined,
        onRejected: () => undefined,
        log,
      });
      client.start();
      const retries = (): number[] =>
        lines
          .map((line) => JSON.parse(line) as { msg: string; retryInMs?: number; wasAuthenticated?: boolean })
          .filter((entry) => entry.msg === 'disconnected from server' && entry.wasAuthenticated === true)
          .map((entry) => entry.retryInMs!);
      await waitFor('7 sessions ended', () => retries().length >= 7, 10_000);
      // Starting over after each welcome draws every wait below the 10 ms base; backing off draws
      // the 4th to 7th from up to 80, 160, 320 and 640 ms.
      expect(Math.max(...retries().slice(3, 7)), `waits ${retries().join(', ')} ms`).to.be.above(10);
    });
  });
});

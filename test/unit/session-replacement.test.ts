// A stolen key in a replacement loop: the server limits how often one key may replace its own
// session, so the current session keeps working and the storm shows in status; and a node whose
// sessions keep ending within seconds backs off instead of starting over after every welcome.

import { expect } from 'chai';
import { createServer as createTlsServer, type Server as TlsServer, type TLSSocket } from 'node:tls';
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
import { DialPolicy, ReplicaSet, STABLE_SESSION_MS } from '../../src/link-client/replica-set.js';
import { silentLogger } from '../../src/log.js';
import { Prefix } from '../../src/routing/index.js';
import { FakeTun } from '../support/fake-tun.js';
import { APISERVER, CONNECTION, RawSession, Rigs, TUNNEL_CIDRS, newPair, registryOf } from '../support/link-rig.js';
import { ipv4 } from '../support/packets.js';
import { waitFor } from '../support/wait.js';

const A_ROUTES = ['198.19.1.0/24'];

describe('session replacement storms', function () {
  this.timeout(15_000);
  const rigs = new Rigs();
  const serverPair = newPair();
  const pairA = newPair();
  const registry = registryOf([{ name: 'node-a', pair: pairA, allowedIPs: A_ROUTES }]);

  afterEach(async function () {
    await rigs.stopAll();
  });

  /** A hand-made session of node-a: resolves once the server welcomed or refused it. */
  async function helloAsNodeA(port: number): Promise<RawSession> {
    const session = await rigs.raw(port);
    session.hello(pairA, { name: 'node-a', routes: A_ROUTES });
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
      const dials: number[] = [];
      server = createTlsServer({ cert: certificate.certPem, key: certificate.keyPem, minVersion: 'TLSv1.3' });
      server.on('secureConnection', (socket: TLSSocket) => {
        dials.push(Date.now());
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
      // Every backoff draw at the top of its range, so the waits are the ceilings: 10, 20, 40 ms…
      const random = Math.random;
      Math.random = () => 0.999999;
      try {
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
          log: silentLogger(),
          backoffBaseMs: 10,
          backoffCapMs: 10_000,
          installRoutes: async () => undefined,
          onRejected: () => undefined,
        });
      } finally {
        Math.random = random;
      }
      client.start();
      await waitFor('7 dials', () => dials.length >= 7, 10_000);
      // Each gap is a 30 ms session, a TLS handshake and the wait. Starting over after every
      // welcome waits 10 ms each time; backing off waits 320 ms before the 7th dial.
      const gaps = dials.slice(1).map((at, i) => at - dials[i]!);
      expect(gaps[5], `gaps between dials ${gaps.join(', ')} ms`).to.be.above(250);
    });
  });

  describe('DialPolicy', function () {
    const options = { baseMs: 100, capMs: 10_000, searchCapMs: 800, random: () => 0.999999 };

    it('starts the connect backoff over after a session that lasted, not after one that ended at once', function () {
      const set = new ReplicaSet(1000);
      const policy = new DialPolicy(options);
      const session = (lastedMs: number): number | undefined => {
        set.admit('a', 1, 0);
        expect(policy.next(set, 'new_replica')).to.equal(undefined);
        set.lost('a', 1);
        return policy.next(set, 'lost', lastedMs);
      };
      expect([30, 30, 30].map(session), 'sessions of 30 ms').to.deep.equal([99, 199, 399]);
      expect(session(STABLE_SESSION_MS), 'a session that lasted').to.equal(99);
    });
  });
});

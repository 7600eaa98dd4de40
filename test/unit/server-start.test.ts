import { expect } from 'chai';
import { setTimeout as sleep } from 'node:timers/promises';
import { LinkServer } from '../../src/link-server/index.js';
import { silentLogger } from '../../src/log.js';
import { FakeTun } from '../support/fake-tun.js';
import { CONNECTION, Rigs, TUNNEL_ADDRESSES, TUNNEL_CIDRS, newPair, portOf, registryOf } from '../support/link-rig.js';
import { CloseCode, FrameType } from '../../src/protocol/index.js';
import type { RawSession } from '../support/link-rig.js';
import { waitFor } from '../support/wait.js';

describe('link-server: a server listens before it is set up', function () {
  this.timeout(10_000);
  const rigs = new Rigs();
  const servers: LinkServer[] = [];
  afterEach(async function () {
    await rigs.stopAll();
    await Promise.all(servers.splice(0).map((server) => server.stop()));
  });

  /** A server whose route install (the last step of its start) waits for `finishRoutes`. */
  function slowServer() {
    const serverPair = newPair();
    const nodePair = newPair();
    let finishRoutes!: () => void;
    const routesDone = new Promise<void>((resolve) => (finishRoutes = resolve));
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
      installRoutes: () => routesDone,
      log: silentLogger(),
    });
    servers.push(server);
    /** A node's TLS session, its hello sent. */
    const node = async (): Promise<RawSession> => {
      const session = await rigs.raw(portOf(server.listenAddress));
      session.hello(nodePair, { name: 'node-a', routes: ['198.19.1.0/24'] });
      return session;
    };
    const connected = (): boolean => server.status().peers.some((p) => p.name === 'node-a' && p.connected);
    return { server, node, finishRoutes, connected };
  }

  it('a node dialing meanwhile gets through TLS and its hello, and its Welcome only once start() is done', async function () {
    const { server, node, finishRoutes, connected } = slowServer();
    await server.listen();
    const starting = server.start();
    const session = await node();
    await sleep(300);
    expect(session.frame(FrameType.Welcome), 'no Welcome before the server is set up').to.equal(undefined);
    expect(session.closed).to.equal(false);
    expect(connected(), 'no session before the server is set up').to.equal(false);
    finishRoutes();
    await starting;
    await waitFor('the Welcome', () => session.frame(FrameType.Welcome) !== undefined);
    expect(connected()).to.equal(true);
  });

  it('a node waiting for a start that does not come hears server_shutdown when the server stops', async function () {
    const { server, node } = slowServer();
    await server.listen();
    void server.start().catch(() => undefined);
    const session = await node();
    await sleep(100);
    await server.stop();
    await session.closedPromise;
    expect(session.frame(FrameType.Welcome)).to.equal(undefined);
    expect(session.codeOf(FrameType.Close).code).to.equal(CloseCode.ServerShutdown);
  });
});

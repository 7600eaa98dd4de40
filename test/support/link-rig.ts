// The unit rig for the link: a LinkServer and LinkClients over FakeTuns and loopback TLS, and a
// hand-driven TLS connection that speaks the wire protocol itself (the attacker's view). No root,
// no TUN device.

import { expect } from 'chai';
import { once } from 'node:events';
import {
  createServer as createTcpServer,
  connect as tcpConnect,
  type Server as TcpServer,
  type Socket,
} from 'node:net';
import { Writable } from 'node:stream';
import { connect as tlsConnect, type TLSSocket } from 'node:tls';
import { pino } from 'pino';
import {
  EXPORTER_BYTES,
  EXPORTER_LABEL,
  encodeHello,
  encodeKey,
  generateSeed,
  keyPairFromSeed,
  parsePeers,
  type HelloBody,
  type KeyPair,
  type PeerRegistry,
} from '../../src/auth/index.js';
import { FrameDecoder, FrameType, decodeCodePayload, encodeFrame } from '../../src/protocol/index.js';
import { Prefix } from '../../src/routing/index.js';
import { LinkServer, type ServerCertificate } from '../../src/link-server/index.js';
import type { AdmissionLimits } from '../../src/link-server/admission.js';
import { LinkClient } from '../../src/link-client/index.js';
import type { ConnectionOptions } from '../../src/link/connection.js';
import type { LinkObserver } from '../../src/link/observer.js';
import { silentLogger, type Logger } from '../../src/log.js';
import type { DaemonStatus, PeerStatus } from '../../src/admin/index.js';
import { FakeTun } from './fake-tun.js';
import { waitFor } from './wait.js';

export function newPair(): KeyPair {
  return keyPairFromSeed(generateSeed());
}

/** A peers file naming each entry's key and allowed IPs, parsed as the server parses its own. */
export function registryOf(
  entries: Array<{ name: string; pair: KeyPair; allowedIPs: string[] }>,
  tunnelCidrs: readonly Prefix[] = TUNNEL_CIDRS,
): PeerRegistry {
  return parsePeers(
    JSON.stringify({
      peers: entries.map((e) => ({ name: e.name, publicKey: encodeKey(e.pair.publicKey), allowedIPs: e.allowedIPs })),
    }),
    'peers.json',
    tunnelCidrs,
  );
}

/** The keys of a server and of two nodes, node-a and node-b, authorized for their routes in one registry. */
export function twoNodes(
  routesA: readonly string[],
  routesB: readonly string[],
): { serverPair: KeyPair; pairA: KeyPair; pairB: KeyPair; registry: PeerRegistry } {
  const pairA = newPair();
  const pairB = newPair();
  const registry = registryOf([
    { name: 'node-a', pair: pairA, allowedIPs: [...routesA] },
    { name: 'node-b', pair: pairB, allowedIPs: [...routesB] },
  ]);
  return { serverPair: newPair(), pairA, pairB, registry };
}

/** Resolves once this process holds no TCP socket; after 2 s rejects naming the ones left open. */
export async function expectNoSocketLeft(): Promise<void> {
  const sockets = (): string[] => process.getActiveResourcesInfo().filter((r) => r.startsWith('TCP'));
  await waitFor('no socket left open', () => sockets().length === 0, 2000).catch(() => {
    throw new Error(`sockets left open: ${sockets().join(', ')}`);
  });
}

export function portOf(listenAddress: string): number {
  return Number(listenAddress.slice(listenAddress.lastIndexOf(':') + 1));
}

/** A logger that keeps every line it writes, at trace level, so tests can read what was logged. */
export function recordingLogger(): { log: Logger; lines: string[] } {
  const lines: string[] = [];
  const sink = new Writable({
    write(chunk: Buffer, _encoding, done) {
      lines.push(
        ...chunk
          .toString('utf8')
          .split('\n')
          .filter((line) => line.length > 0),
      );
      done();
    },
  });
  return { log: pino({ level: 'trace' }, sink), lines };
}

export const TUNNEL_CIDRS = [Prefix.parse('198.18.255.0/24'), Prefix.parse('fd00:18:ff::/64')];
export const TUNNEL_ADDRESSES = [Prefix.fromAddress('198.18.255.1'), Prefix.fromAddress('fd00:18:ff::1')];
export const CONNECTION: ConnectionOptions = {
  maxQueueBytes: 1 << 20,
  keepaliveIntervalMs: 200,
  deadAfterMs: 1500,
};
export const APISERVER = '198.18.0.10';

export interface ServerRig {
  readonly server: LinkServer;
  readonly port: number;
  readonly tun: FakeTun;
  readonly installed: string[][];
  readonly removed: string[][];
  status(): DaemonStatus;
  peer(name: string): PeerStatus;
}

export interface ClientRig {
  readonly client: LinkClient;
  readonly tun: FakeTun;
  /** The tunnel CIDRs of each installRoutes call (one per welcome that changed them). */
  readonly installed: string[][];
  readonly rejected: string[];
}

/** Tracks what a test started, so `stopAll` leaves no socket or timer behind. */
export class Rigs {
  private readonly servers: LinkServer[] = [];
  private readonly clients: LinkClient[] = [];
  private readonly sockets: TLSSocket[] = [];
  private readonly balancers: LoadBalancer[] = [];

  async server(opts: {
    registry: PeerRegistry;
    keyPair: KeyPair;
    certificate?: ServerCertificate;
    limits?: AdmissionLimits;
    handshakeTimeoutMs?: number;
    connection?: ConnectionOptions;
    log?: Logger;
    /** A replica's name and the replica count it announces (several servers behind one address). */
    serverId?: string;
    serverCount?: number;
    /** A fixed port (a restarted server on its predecessor's); default any free one. */
    port?: number;
    observer?: LinkObserver;
  }): Promise<ServerRig> {
    const tun = new FakeTun('srv0');
    const installed: string[][] = [];
    const removed: string[][] = [];
    const server = new LinkServer({
      host: '127.0.0.1',
      port: opts.port ?? 0,
      keyPair: opts.keyPair,
      registry: opts.registry,
      tun,
      tunnelCidrs: TUNNEL_CIDRS,
      tunnelAddresses: TUNNEL_ADDRESSES,
      connection: opts.connection ?? CONNECTION,
      handshakeTimeoutMs: opts.handshakeTimeoutMs ?? 2000,
      installRoutes: async (cidrs) => {
        installed.push(cidrs.map(String));
      },
      removeRoutes: async (cidrs) => {
        removed.push(cidrs.map(String));
      },
      certificate: opts.certificate,
      limits: opts.limits,
      log: opts.log ?? silentLogger(),
      serverId: opts.serverId,
      serverCount: opts.serverCount,
      observer: opts.observer,
    });
    this.servers.push(server);
    await server.start();
    const status = (): DaemonStatus => JSON.parse(JSON.stringify(server.status())) as DaemonStatus;
    return {
      server,
      port: portOf(server.listenAddress),
      tun,
      installed,
      removed,
      status,
      peer: (name) => {
        const found = status().peers.find((p) => p.name === name);
        if (!found) throw new Error(`no peer ${name} in server status`);
        return found;
      },
    };
  }

  client(opts: {
    port: number;
    name: string;
    keyPair: KeyPair;
    routes: readonly string[];
    serverKey?: Uint8Array;
    ca?: string;
    serverName?: string;
    log?: Logger;
    tunName?: string;
    connection?: ConnectionOptions;
    observer?: LinkObserver;
    handshakeTimeoutMs?: number;
    backoffCapMs?: number;
  }): ClientRig {
    const tun = new FakeTun(opts.tunName ?? `${opts.name}-tun`);
    const installed: string[][] = [];
    const rejected: string[] = [];
    const client = new LinkClient({
      host: '127.0.0.1',
      port: opts.port,
      serverKey: opts.serverKey,
      ca: opts.ca,
      serverName: opts.serverName,
      keyPair: opts.keyPair,
      name: opts.name,
      routes: opts.routes.map((r) => Prefix.parse(r)),
      tun,
      connection: opts.connection ?? CONNECTION,
      handshakeTimeoutMs: opts.handshakeTimeoutMs ?? 2000,
      backoffBaseMs: 50,
      backoffCapMs: opts.backoffCapMs ?? 200,
      installRoutes: async (cidrs) => {
        installed.push(cidrs.map(String));
      },
      onRejected: (reason) => {
        rejected.push(reason);
      },
      observer: opts.observer,
      log: opts.log ?? silentLogger(),
    });
    this.clients.push(client);
    client.start();
    return { client, tun, installed, rejected };
  }

  /** A TLS connection that speaks the protocol by hand. */
  async raw(port: number, opts: { maxVersion?: 'TLSv1.2' | 'TLSv1.3'; session?: Buffer } = {}): Promise<RawSession> {
    const socket = tlsConnect({
      host: '127.0.0.1',
      port,
      rejectUnauthorized: false,
      maxVersion: opts.maxVersion ?? 'TLSv1.3',
      session: opts.session,
    });
    this.sockets.push(socket);
    return RawSession.over(socket);
  }

  /** A hand-made session that says `body`'s hello with `pair`, resolved once welcomed: a compromised node. */
  async welcomed(port: number, pair: KeyPair, body: HelloBody): Promise<RawSession> {
    const session = await this.raw(port);
    session.hello(pair, body);
    await waitFor('welcome', () => session.frame(FrameType.Welcome) !== undefined);
    return session;
  }

  /** A TCP load balancer on loopback in front of `ports`: several server replicas behind one address. */
  async loadBalancer(ports: readonly number[]): Promise<LoadBalancer> {
    const balancer = await LoadBalancer.start(ports);
    this.balancers.push(balancer);
    return balancer;
  }

  adopt(socket: TLSSocket): void {
    this.sockets.push(socket);
  }

  async stopAll(): Promise<void> {
    for (const socket of this.sockets.splice(0)) socket.destroy();
    await Promise.all(this.clients.splice(0).map((client) => client.stop()));
    await Promise.all(this.servers.splice(0).map((server) => server.stop()));
    await Promise.all(this.balancers.splice(0).map((balancer) => balancer.close()));
  }
}

/**
 * Hands each new TCP connection to the next of `backends` in turn (round robin), as a Service's
 * load balancer does at random; a test sets `backends` to steer where dials land. Bytes are
 * piped unchanged, so TLS runs end to end between the client and the chosen replica, until
 * `silence()`.
 */
export class LoadBalancer {
  backends: number[];
  /** Connections handed to each backend port. */
  readonly handed = new Map<number, number>();
  private next = 0;
  private readonly open = new Set<Socket>();
  private silent = false;

  private constructor(
    private readonly listener: TcpServer,
    backends: readonly number[],
  ) {
    this.backends = [...backends];
  }

  static async start(backends: readonly number[]): Promise<LoadBalancer> {
    const listener = createTcpServer();
    const balancer = new LoadBalancer(listener, backends);
    listener.on('connection', (socket) => balancer.accept(socket));
    listener.listen(0, '127.0.0.1');
    await once(listener, 'listening');
    return balancer;
  }

  get port(): number {
    const address = this.listener.address();
    if (address === null || typeof address === 'string') throw new Error('load balancer is not listening');
    return address.port;
  }

  private accept(socket: Socket): void {
    if (this.backends.length === 0) {
      socket.destroy();
      return;
    }
    const port = this.backends[this.next++ % this.backends.length]!;
    this.handed.set(port, (this.handed.get(port) ?? 0) + 1);
    const upstream = tcpConnect(port, '127.0.0.1');
    for (const [one, other] of [
      [socket, upstream],
      [upstream, socket],
    ] as const) {
      this.open.add(one);
      one.on('error', () => this.silent || other.destroy());
      one.on('close', () => {
        this.open.delete(one);
        if (!this.silent) other.destroy();
      });
      if (!this.silent) one.pipe(other);
    }
  }

  /**
   * From now on no byte passes either way and no close is passed on, on the connections open and
   * on new ones: both ends keep a connection that has gone quiet, like a peer whose machine froze.
   */
  silence(): void {
    this.silent = true;
    for (const socket of this.open) socket.unpipe();
  }

  async close(): Promise<void> {
    for (const socket of this.open) socket.destroy();
    await new Promise<void>((resolve) => this.listener.close(() => resolve()));
  }
}

export class RawSession {
  readonly frames: Array<{ type: FrameType; payload: Buffer }> = [];
  /** Session tickets the server gave, to resume with. */
  readonly tickets: Buffer[] = [];
  closed = false;
  readonly closedPromise: Promise<void>;
  exporter: Buffer = Buffer.alloc(0);

  private constructor(readonly socket: TLSSocket) {
    const decoder = new FrameDecoder((type, payload) => this.frames.push({ type, payload: Buffer.from(payload) }));
    socket.on('data', (chunk: Buffer) => {
      try {
        decoder.push(chunk);
      } catch {
        socket.destroy();
      }
    });
    socket.on('error', () => {
      /* tests look at frames and `closed` */
    });
    socket.on('session', (ticket: Buffer) => this.tickets.push(ticket));
    this.closedPromise = new Promise<void>((resolve) =>
      socket.once('close', () => {
        this.closed = true;
        resolve();
      }),
    );
  }

  static async over(socket: TLSSocket): Promise<RawSession> {
    const session = new RawSession(socket);
    await once(socket, 'secureConnect');
    session.exporter = socket.exportKeyingMaterial(EXPORTER_BYTES, EXPORTER_LABEL, Buffer.alloc(0));
    return session;
  }

  frame(type: FrameType): { type: FrameType; payload: Buffer } | undefined {
    return this.frames.find((f) => f.type === type);
  }

  /**
   * Sends a hello signed by `pair` and bound to `exporter`: this session's own, or another
   * session's to replay a hello captured there.
   */
  hello(pair: KeyPair, body: HelloBody, exporter: Buffer = this.exporter): void {
    this.socket.write(encodeFrame(FrameType.Hello, encodeHello(pair, exporter, body)));
  }

  /** The code and reason of the first Close or Reject frame; fails the test when none came. */
  codeOf(type: FrameType.Close | FrameType.Reject): { code: number; reason: string } {
    const frame = this.frame(type);
    expect(frame, `a ${FrameType[type]} frame`).to.not.equal(undefined);
    return decodeCodePayload(frame!.payload);
  }
}

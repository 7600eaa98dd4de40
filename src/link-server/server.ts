import { createServer as createTlsServer, type Server, type TLSSocket } from 'node:tls';
import {
  EXPORTER_BYTES, EXPORTER_LABEL, verifyHello, AuthError, type KeyPair, type PeerConfig, type PeerRegistry,
} from '../auth/index.js';
import { CloseCode, DEFAULT_MAX_HELLO_PAYLOAD, DEFAULT_MAX_PAYLOAD, FrameType, closeCodeName } from '../protocol/index.js';
import { DST_OFFSET_V4, DST_OFFSET_V6, PrefixTable, buildUnreachable, checkPacket, type Prefix } from '../routing/index.js';
import type { TunDevice } from '../tun/index.js';
import type { DaemonStatus, PeerStatus } from '../admin/index.js';
import { FramedConnection, type ConnectionOptions } from '../link/connection.js';
import { TrafficCounters } from '../link/counters.js';
import type { LinkObserver } from '../link/observer.js';
import type { Logger } from '../log.js';
import { NodelinkError } from '../errors.js';
import { createServerCertificate } from './certificate.js';

export interface LinkServerOptions {
  readonly host: string;
  readonly port: number;
  readonly keyPair: KeyPair;
  readonly registry: PeerRegistry;
  readonly tun: TunDevice;
  /** Tunnel CIDRs (one per family) and the server's own address in each, the first host. */
  readonly tunnelCidrs: readonly Prefix[];
  readonly tunnelAddresses: readonly Prefix[];
  readonly connection: ConnectionOptions;
  readonly handshakeTimeoutMs: number;
  /** Installs kernel routes toward the TUN for these CIDRs; injected so unit tests run without root. */
  readonly installRoutes: (cidrs: readonly Prefix[]) => Promise<void>;
  readonly log: Logger;
  /** Per-event hooks (metrics): connect, handshake failure, disconnect, pong. */
  readonly observer?: LinkObserver;
  /**
   * An extra check of a node's announced routes after the peers file allowed them
   * (--authorize-from-nodes: its Node object). Throwing an AuthError rejects the node; any
   * other error (the check's backend is down) closes with `internal`, and the node retries.
   */
  readonly checkRoutes?: (name: string, routes: readonly Prefix[]) => Promise<void>;
}

/** A node as the server knows it, connected or not. Counters live across reconnects, like wg's. */
interface PeerState {
  readonly config: PeerConfig;
  readonly counters: TrafficCounters;
  session: Session | undefined;
}

interface Session {
  readonly peer: PeerState;
  readonly connection: FramedConnection;
  readonly endpoint: string;
  readonly routes: readonly Prefix[];
}

/** ICMP errors answer traffic to offline nodes; cap them so a flood cannot turn into one. */
const ICMP_ERRORS_PER_SECOND = 100;

/**
 * The control-plane side: TLS listener, one authenticated session per node, and forwarding
 * between the TUN and the sessions.
 *
 * TUN → node: the destination is looked up in the table of routes that connected nodes
 * announced; no match means the packet is dropped (peer_offline or no_route) and answered
 * with ICMP unreachable. Node → TUN: the source must lie in that node's announced routes
 * (spoofed_source otherwise). Kernel routes for every authorized peer's allowedIPs stay on
 * the TUN whether the peer is online or not, so traffic for an offline node never leaks to
 * the default route.
 */
export class LinkServer {
  private readonly peers = new Map<string, PeerState>();
  private readonly announced = new PrefixTable<Session>();
  private readonly authorized = new PrefixTable<PeerState>();
  private readonly unattributed = new TrafficCounters();
  private readonly unauthenticated = new Set<TLSSocket>();
  private readonly startedAt = new Date();
  private server: Server | undefined;
  /** Set by stop(): a TLS handshake that completes afterwards must not become a session. */
  private stopping = false;
  private icmpBudget = ICMP_ERRORS_PER_SECOND;
  private icmpRefillTimer: NodeJS.Timeout | undefined;

  constructor(private readonly options: LinkServerOptions) {
    for (const config of options.registry.peers) {
      const state: PeerState = { config, counters: new TrafficCounters(), session: undefined };
      this.peers.set(config.publicKeyText, state);
      for (const prefix of config.allowedIPs) this.authorized.insert(prefix, state);
    }
  }

  async start(): Promise<void> {
    const { options } = this;
    await options.installRoutes(options.registry.peers.flatMap((peer) => peer.allowedIPs));
    options.tun.onPacket((packet) => this.onTunPacket(packet));
    const certificate = await createServerCertificate(options.keyPair);
    const server = createTlsServer({
      cert: certificate.certPem,
      key: certificate.keyPem,
      minVersion: 'TLSv1.3',
      maxVersion: 'TLSv1.3',
      noDelay: true,
      handshakeTimeout: options.handshakeTimeoutMs,
    });
    server.on('secureConnection', (socket) => this.onSecureConnection(socket));
    server.on('tlsClientError', (err, socket) => {
      options.log.debug({ endpoint: `${socket.remoteAddress}:${socket.remotePort}`, err: err.message }, 'TLS handshake failed');
      options.observer?.handshakeFailed?.('tls');
    });
    await new Promise<void>((resolve, reject) => {
      server.once('error', (err: NodeJS.ErrnoException) => reject(listenError(err, options.host, options.port)));
      server.listen(options.port, options.host, () => resolve());
    });
    server.on('error', (err) => options.log.error({ err: err.message }, 'listener error'));
    this.server = server;
    this.icmpRefillTimer = setInterval(() => { this.icmpBudget = ICMP_ERRORS_PER_SECOND; }, 1000);
    options.log.info({ listen: this.listenAddress, peers: this.peers.size }, 'server listening');
  }

  get listenAddress(): string {
    const address = this.server?.address();
    if (address && typeof address === 'object') {
      return address.family === 'IPv6' ? `[${address.address}]:${address.port}` : `${address.address}:${address.port}`;
    }
    return `${this.options.host}:${this.options.port}`;
  }

  /** Says goodbye to every node, then stops listening. */
  async stop(): Promise<void> {
    this.stopping = true;
    if (this.icmpRefillTimer) clearInterval(this.icmpRefillTimer);
    for (const state of this.peers.values()) {
      state.session?.connection.close(CloseCode.ServerShutdown, 'server is shutting down');
    }
    for (const socket of this.unauthenticated) socket.destroy();
    await new Promise<void>((resolve) => (this.server ? this.server.close(() => resolve()) : resolve()));
  }

  /** Live connection counts for leak checks (the `debug` field of status). */
  connectionCounts(): { sessions: number; handshaking: number } {
    let sessions = 0;
    for (const state of this.peers.values()) if (state.session) sessions++;
    return { sessions, handshaking: this.unauthenticated.size };
  }

  private onSecureConnection(socket: TLSSocket): void {
    if (this.stopping) {
      socket.destroy();
      return;
    }
    const { options } = this;
    const endpoint = `${socket.remoteAddress}:${socket.remotePort}`;
    socket.setNoDelay(true);
    this.unauthenticated.add(socket);
    let session: Session | undefined;
    let helloSeen = false;
    const deadline = setTimeout(() => {
      connection.close(CloseCode.Timeout, `no hello within ${options.handshakeTimeoutMs} ms`);
    }, options.handshakeTimeoutMs);
    const connection = new FramedConnection(socket, {
      onData: (packet) => session && this.onNodePacket(session, packet),
      onPong: (rttMs) => { if (session) options.observer?.pong?.(session.peer.config.name, rttMs); },
      onControl: (type, payload) => {
        if (session || helloSeen || type !== FrameType.Hello) {
          connection.close(CloseCode.ProtocolError, `unexpected ${FrameType[type] ?? type} frame`);
          return;
        }
        clearTimeout(deadline);
        this.unauthenticated.delete(socket);
        helloSeen = true;
        void this.authenticate(socket, connection, payload, endpoint, (admitted) => { session = admitted; });
      },
      onClose: (code, reason, byPeer) => {
        clearTimeout(deadline);
        this.unauthenticated.delete(socket);
        if (session) this.onSessionClosed(session, code, reason, byPeer);
        else if (code !== CloseCode.AuthFailed && code !== CloseCode.RouteNotAllowed) {
          // Rejections were counted with their precise reason in authenticate().
          const failure = code === CloseCode.Normal ? 'aborted' : closeCodeName(code);
          options.log[failure === 'aborted' ? 'debug' : 'info']({ endpoint, reason: failure, detail: reason }, 'handshake failed');
          options.observer?.handshakeFailed?.(failure);
        }
      },
    }, { ...options.connection, maxInitialPayload: DEFAULT_MAX_HELLO_PAYLOAD });
  }

  private async authenticate(
    socket: TLSSocket, connection: FramedConnection, payload: Buffer, endpoint: string, admit: (session: Session) => void,
  ): Promise<void> {
    const { log } = this.options;
    try {
      const exporter = socket.exportKeyingMaterial(EXPORTER_BYTES, EXPORTER_LABEL, Buffer.alloc(0));
      const hello = verifyHello(payload, exporter);
      const { peer: config, routes } = this.options.registry.authorize(hello);
      if (this.options.checkRoutes) {
        try {
          await this.options.checkRoutes(config.name, routes);
        } catch (err) {
          if (err instanceof AuthError) throw err;
          const detail = err instanceof NodelinkError ? err.message : String(err);
          log.warn({ peer: config.name, endpoint, detail }, 'cannot check the routes of a peer now: it will retry');
          connection.close(CloseCode.Internal, `the server cannot check this node's routes now: retrying`);
          return;
        }
        if (connection.isClosed) return;
        if (this.stopping) {
          connection.close(CloseCode.ServerShutdown, 'server is shutting down');
          return;
        }
      }
      const peer = this.peers.get(config.publicKeyText)!;
      const previous = peer.session;
      const session: Session = { peer, connection, endpoint, routes };
      // The peer's counters outlive its connections, as in `wg show`.
      connection.counters = peer.counters;
      if (previous) {
        this.withdraw(previous);
        previous.connection.close(CloseCode.Replaced, `replaced by a new connection from ${endpoint}`);
      }
      peer.session = session;
      admit(session);
      for (const route of routes) this.announced.insert(route, session);
      connection.setMaxPayload(DEFAULT_MAX_PAYLOAD);
      connection.sendControl(FrameType.Welcome, Buffer.from(JSON.stringify({
        tunnelCidrs: this.options.tunnelCidrs.map(String),
        serverAddresses: this.options.tunnelAddresses.map((address) => address.toString().split('/')[0]),
        routes: routes.map(String),
      })));
      connection.startKeepalive();
      log.info({ peer: config.name, endpoint, routes: routes.map(String), replaced: previous !== undefined }, 'peer connected');
      this.options.observer?.connected?.(config.name);
    } catch (err) {
      const code = err instanceof AuthError && err.code === 'route_not_allowed' ? CloseCode.RouteNotAllowed : CloseCode.AuthFailed;
      const reason = err instanceof NodelinkError ? err.message : `handshake failed: ${(err as Error).message}`;
      log.warn({ endpoint, reason: closeCodeName(code), detail: reason }, 'peer rejected');
      this.options.observer?.handshakeFailed?.(err instanceof NodelinkError ? err.code : 'internal');
      connection.close(code, reason, FrameType.Reject);
    }
  }

  private withdraw(session: Session): void {
    for (const route of session.routes) {
      if (this.announced.get(route) === session) this.announced.delete(route);
    }
  }

  private onSessionClosed(session: Session, code: CloseCode, reason: string, byPeer: boolean): void {
    this.withdraw(session);
    if (session.peer.session === session) session.peer.session = undefined;
    this.options.log.info({ peer: session.peer.config.name, endpoint: session.endpoint, code: closeCodeName(code), reason, byPeer }, 'peer disconnected');
    this.options.observer?.disconnected?.(session.peer.config.name, closeCodeName(code));
  }

  private onTunPacket(packet: Buffer): void {
    if (checkPacket(packet) !== null) {
      this.unattributed.drop('malformed');
      return;
    }
    const session = this.announced.lookupDestination(packet);
    if (session) {
      session.connection.sendData(packet);
      return;
    }
    const peer = this.authorized.lookupDestination(packet);
    if (peer) peer.counters.drop(peer.session ? 'no_route' : 'peer_offline');
    else this.unattributed.drop('no_route');
    this.answerUnreachable(packet);
  }

  private onNodePacket(session: Session, packet: Buffer): void {
    if (checkPacket(packet) !== null) {
      session.peer.counters.drop('malformed');
      return;
    }
    if (this.announced.lookupSource(packet) !== session) {
      session.peer.counters.drop('spoofed_source');
      return;
    }
    if (!this.options.tun.write(packet)) session.peer.counters.drop('tun_error');
  }

  /**
   * The error comes from the unreachable destination's own address: one of the server's tunnel
   * addresses would be a local address arriving from outside, which the kernel drops as martian.
   */
  private answerUnreachable(packet: Buffer): void {
    if (this.icmpBudget <= 0) return;
    const from = (packet[0]! >> 4) === 6 ? packet.subarray(DST_OFFSET_V6, DST_OFFSET_V6 + 16) : packet.subarray(DST_OFFSET_V4, DST_OFFSET_V4 + 4);
    const reply = buildUnreachable(packet, from);
    if (!reply) return;
    this.icmpBudget--;
    this.options.tun.write(reply);
  }

  status(): DaemonStatus {
    const peers: PeerStatus[] = [];
    for (const state of this.peers.values()) {
      const { session, counters, config } = state;
      const connection = session?.connection;
      peers.push({
        name: config.name,
        publicKey: config.publicKeyText,
        connected: session !== undefined,
        endpoint: session?.endpoint ?? null,
        routes: session ? session.routes.map(String) : [],
        allowedIPs: config.allowedIPs.map(String),
        connectedSince: connection ? connection.connectedAt.toISOString() : null,
        lastPongMs: connection?.rttMs ?? null,
        rxBytes: counters.rxBytes,
        txBytes: counters.txBytes,
        rxPackets: counters.rxPackets,
        txPackets: counters.txPackets,
        drops: counters.totalDrops(),
        dropsByReason: counters.dropsByReason(),
        queuedBytes: connection?.queuedBytes ?? 0,
      });
    }
    return {
      role: 'server',
      tun: this.options.tun.name,
      tunnelAddress: this.options.tunnelAddresses[0]?.toString().split('/')[0] ?? null,
      tunnelAddresses: this.options.tunnelAddresses.map((address) => address.toString().split('/')[0]!),
      listen: this.listenAddress,
      startedAt: this.startedAt.toISOString(),
      dropsByReason: this.unattributed.dropsByReason(),
      peers,
    };
  }
}

function listenError(err: NodeJS.ErrnoException, host: string, port: number): NodelinkError {
  if (err.code === 'EADDRINUSE') return new NodelinkError('listen', `port ${port} on ${host} is already in use: stop the other process or pick another --listen port`);
  if (err.code === 'EADDRNOTAVAIL') return new NodelinkError('listen', `${host} is not an address of this machine: fix --listen`);
  if (err.code === 'EACCES') return new NodelinkError('listen', `not allowed to listen on ${host}:${port}: run as root or pick a port above 1023`);
  return new NodelinkError('listen', `cannot listen on ${host}:${port} (${err.code ?? err.message}): fix --listen`);
}

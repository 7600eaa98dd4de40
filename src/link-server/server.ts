import { createServer as createTcpServer, type Server as TcpServer, type Socket } from 'node:net';
import {
  createServer as createTlsServer,
  type SecureContextOptions,
  type Server as TlsServer,
  type TLSSocket,
} from 'node:tls';
import {
  EXPORTER_BYTES,
  EXPORTER_LABEL,
  verifyHello,
  AuthError,
  type KeyPair,
  type PeerConfig,
  type PeerRegistry,
} from '../auth/index.js';
import {
  CloseCode,
  DEFAULT_MAX_HELLO_PAYLOAD,
  DEFAULT_MAX_PAYLOAD,
  FrameType,
  closeCodeName,
} from '../protocol/index.js';
import { DST_OFFSET_V4, DST_OFFSET_V6, Prefix, PrefixTable, buildUnreachable, checkPacket } from '../routing/index.js';
import type { TunDevice } from '../tun/index.js';
import type { DaemonStatus, PeerStatus } from '../admin/index.js';
import { FramedConnection, type ConnectionOptions } from '../link/connection.js';
import { TrafficCounters, trafficStatus } from '../link/counters.js';
import type { LinkObserver } from '../link/observer.js';
import type { Logger } from '../log.js';
import { NodelinkError } from '../errors.js';
import { createServerCertificate, type ServerCertificate } from './certificate.js';
import { Admission, DEFAULT_ADMISSION_LIMITS, type AdmissionLimits } from './admission.js';

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
  /** A CA-signed certificate (--cert); without one the server presents a self-signed one of its key. */
  readonly certificate?: ServerCertificate;
  /** Limits on connections that have not authenticated yet (see admission.ts). */
  readonly limits?: AdmissionLimits;
  /** Removes kernel routes toward the TUN (peers-file reload); without it they are left in place. */
  readonly removeRoutes?: (cidrs: readonly Prefix[]) => Promise<void>;
}

/** What a peers-file reload changed, by peer name. */
export interface ReloadSummary {
  readonly added: string[];
  readonly removed: string[];
  readonly changed: string[];
  /** Sessions closed because their peer was removed or no longer allowed what it announced. */
  readonly disconnected: string[];
  readonly routesAdded: string[];
  readonly routesRemoved: string[];
}

/** A node as the server knows it, connected or not. Counters live across reconnects, like wg's. */
interface PeerState {
  /** Replaced when a reload changes this key's entry. */
  config: PeerConfig;
  readonly counters: TrafficCounters;
  session: Session | undefined;
}

interface Session {
  readonly peer: PeerState;
  readonly connection: FramedConnection;
  readonly endpoint: string;
  readonly routes: readonly Prefix[];
}

/** What the server's TLS presents, at start and after a certificate renewal: TLS 1.3 only. */
function tlsOptions(certificate: ServerCertificate): SecureContextOptions {
  return { cert: certificate.certPem, key: certificate.keyPem, minVersion: 'TLSv1.3', maxVersion: 'TLSv1.3' };
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
  /** allowedIPs of every peer in the peers file; swapped whole on reload. */
  private authorized = new PrefixTable<PeerState>();
  private registry: PeerRegistry;
  private readonly admission: Admission<Socket>;
  /** Connections refused or failed before authentication, by reason (status: refusedConnections). */
  private readonly refused = new Map<string, number>();
  private readonly unattributed = new TrafficCounters();
  private readonly unauthenticated = new Set<TLSSocket>();
  private readonly startedAt = new Date();
  /** Accepts TCP; admission decides which connections go on to `tls`, which never listens itself. */
  private listener: TcpServer | undefined;
  private tls: TlsServer | undefined;
  /** Set by stop(): a TLS handshake that completes afterwards must not become a session. */
  private stopping = false;
  private icmpBudget = ICMP_ERRORS_PER_SECOND;
  private icmpRefillTimer: NodeJS.Timeout | undefined;
  /** The server's own tunnel addresses, without their prefix length: in every welcome and status. */
  private readonly tunnelAddressTexts: string[];

  constructor(private readonly options: LinkServerOptions) {
    this.registry = options.registry;
    this.tunnelAddressTexts = options.tunnelAddresses.map((address) => address.toString().split('/')[0]!);
    // A held connection gets a slot only with a quarter of its deadline left to use it (1.25 s
    // of the default 5 s: a handshake and a hello take milliseconds once they run).
    this.admission = new Admission(
      options.limits ?? DEFAULT_ADMISSION_LIMITS,
      Date.now,
      options.handshakeTimeoutMs * 0.75,
    );
    for (const config of options.registry.peers) {
      const state: PeerState = { config, counters: new TrafficCounters(), session: undefined };
      this.peers.set(config.publicKeyText, state);
      for (const prefix of config.allowedIPs) this.authorized.insert(prefix, state);
    }
  }

  async start(): Promise<void> {
    const { options } = this;
    await options.installRoutes(this.registry.peers.flatMap((peer) => peer.allowedIPs));
    options.tun.onPacket((packet) => this.onTunPacket(packet));
    const certificate = options.certificate ?? (await createServerCertificate(options.keyPair));
    const tls = createTlsServer({ ...tlsOptions(certificate), handshakeTimeout: options.handshakeTimeoutMs });
    tls.on('secureConnection', (socket) => this.onSecureConnection(socket));
    tls.on('tlsClientError', (err: NodeJS.ErrnoException, socket) => {
      const reason = err.code === 'ERR_TLS_HANDSHAKE_TIMEOUT' ? 'handshake_timeout' : 'tls_handshake_failed';
      // OpenSSL messages span lines; the code alone says what happened (ERR_SSL_HTTP_REQUEST, …).
      options.log.debug(
        { endpoint: `${socket.remoteAddress}:${socket.remotePort}`, err: err.code ?? err.message.split('\n')[0] },
        'TLS handshake failed',
      );
      this.countRefused(reason);
      options.observer?.handshakeFailed?.('tls');
      // With a 'tlsClientError' listener Node leaves the socket open (even on its handshake
      // timeout): without this, a client that sends nothing would hold its slot forever.
      socket.destroy();
    });
    // pauseOnConnect: a held connection is not read (no TLS work, no buffers) until its turn.
    const listener = createTcpServer({ pauseOnConnect: true, noDelay: true }, (raw) => this.onConnection(raw));
    await new Promise<void>((resolve, reject) => {
      listener.once('error', (err: NodeJS.ErrnoException) => reject(listenError(err, options.host, options.port)));
      listener.listen(options.port, options.host, () => resolve());
    });
    listener.on('error', (err) => options.log.error({ err: err.message }, 'listener error'));
    this.listener = listener;
    this.tls = tls;
    this.icmpRefillTimer = setInterval(() => {
      this.icmpBudget = ICMP_ERRORS_PER_SECOND;
    }, 1000);
    options.log.info({ listen: this.listenAddress, peers: this.peers.size }, 'server listening');
  }

  /** Presents another certificate to new connections (a renewed --cert); sessions keep theirs. */
  setCertificate(certificate: ServerCertificate): void {
    this.tls?.setSecureContext(tlsOptions(certificate));
  }

  get listenAddress(): string {
    const address = this.listener?.address();
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
    for (const raw of this.admission.drain()) raw.destroy();
    await new Promise<void>((resolve) => (this.listener ? this.listener.close(() => resolve()) : resolve()));
  }

  /**
   * Applies a new peers file (SIGHUP). The caller has parsed and validated it: a bad file never
   * gets here, and the old one stays. In order:
   *
   *  1. kernel routes for every allowedIP of the new file are installed (idempotent), so a new
   *     peer is routable from the moment it may connect; if that fails, nothing has changed;
   *  2. in one synchronous step, the new file takes effect: new peers may connect; removed
   *     peers are disconnected (auth_failed: the node exits with the reason, as if rejected);
   *     a peer whose name changed, or whose new allowedIPs no longer hold a route it announced,
   *     is disconnected and redials under the new rules; every other session is left alone;
   *  3. kernel routes that no peer claims any more are removed.
   */
  async reload(registry: PeerRegistry): Promise<ReloadSummary> {
    const { options } = this;
    const before = new Set(this.registry.peers.flatMap((peer) => peer.allowedIPs.map(String)));
    const after = new Set(registry.peers.flatMap((peer) => peer.allowedIPs.map(String)));
    await options.installRoutes(registry.peers.flatMap((peer) => peer.allowedIPs));

    const summary: ReloadSummary = {
      added: [],
      removed: [],
      changed: [],
      disconnected: [],
      routesAdded: [...after].filter((cidr) => !before.has(cidr)),
      routesRemoved: [...before].filter((cidr) => !after.has(cidr)),
    };
    const authorized = new PrefixTable<PeerState>();
    const keys = new Set<string>();
    const closing: Array<[Session, CloseCode, string]> = [];
    for (const config of registry.peers) {
      keys.add(config.publicKeyText);
      let state = this.peers.get(config.publicKeyText);
      if (!state) {
        state = { config, counters: new TrafficCounters(), session: undefined };
        this.peers.set(config.publicKeyText, state);
        summary.added.push(config.name);
      } else if (!samePeer(state.config, config)) {
        summary.changed.push(config.name);
        const session = state.session;
        if (session && config.name !== state.config.name) {
          closing.push([
            session,
            CloseCode.AuthFailed,
            `this key now belongs to peer "${config.name}" in the server's peers file, not "${state.config.name}": fix --name`,
          ]);
        } else if (
          session &&
          !session.routes.every((route) => config.allowedIPs.some((allowed) => allowed.contains(route)))
        ) {
          closing.push([
            session,
            CloseCode.RouteNotAllowed,
            `the server's peers file no longer allows all announced routes of peer "${config.name}" (allowedIPs now ${config.allowedIPs.join(', ')}): fix --route`,
          ]);
        }
        state.config = config;
      }
      for (const prefix of config.allowedIPs) authorized.insert(prefix, state);
    }
    for (const [key, state] of this.peers) {
      if (keys.has(key)) continue;
      this.peers.delete(key);
      summary.removed.push(state.config.name);
      if (state.session)
        closing.push([
          state.session,
          CloseCode.AuthFailed,
          `peer "${state.config.name}" was removed from the server's peers file`,
        ]);
    }
    this.registry = registry;
    this.authorized = authorized;
    for (const [session, code, reason] of closing) {
      summary.disconnected.push(session.peer.config.name);
      session.connection.close(code, reason); // its onClose withdraws its routes, synchronously
    }

    if (summary.routesRemoved.length > 0 && options.removeRoutes) {
      await options.removeRoutes(summary.routesRemoved.map((cidr) => Prefix.parse(cidr)));
    }
    options.log.info(summary, 'peers file reloaded');
    return summary;
  }

  /** Live connection counts for leak checks (the `debug` field of status). */
  connectionCounts(): { sessions: number; handshaking: number; queued: number } {
    let sessions = 0;
    for (const state of this.peers.values()) if (state.session) sessions++;
    return { sessions, handshaking: this.unauthenticated.size, queued: this.admission.queued };
  }

  /**
   * Every TCP connection, before TLS: the admission limits decide whether it may handshake now,
   * wait in line (held unread), or not at all. Once admitted it stays pending (counted against
   * maxUnauthenticated) until its hello is verified or it closes.
   */
  private onConnection(raw: Socket): void {
    const endpoint = `${raw.remoteAddress}:${raw.remotePort}`;
    // A held socket has no TLS layer yet to take its errors (a reset while it waits).
    raw.on('error', () => undefined);
    const decision =
      raw.remoteAddress === undefined ? 'aborted' : this.admission.admit(endpoint, raw.remoteAddress, raw);
    if (decision === 'admitted' || decision === 'queued') {
      raw.once('close', () => this.settle(endpoint));
      if (decision === 'admitted') this.startTls(raw);
      return;
    }
    raw.destroy();
    this.countRefused(decision);
    this.options.log.debug({ endpoint, reason: decision }, 'connection refused before TLS');
    this.options.observer?.handshakeFailed?.(decision);
  }

  private startTls(raw: Socket): void {
    if (this.stopping || !this.tls) {
      raw.destroy();
      return;
    }
    this.tls.emit('connection', raw);
  }

  /** A pending connection authenticated or closed: its slot goes to the next held one. */
  private settle(endpoint: string): void {
    const { start, expired } = this.admission.settle(endpoint);
    for (const raw of expired) {
      raw.destroy();
      this.countRefused('handshake_timeout');
      this.options.observer?.handshakeFailed?.('handshake_timeout');
    }
    for (const raw of start) this.startTls(raw);
  }

  private countRefused(reason: string): void {
    this.refused.set(reason, (this.refused.get(reason) ?? 0) + 1);
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
    // One deadline for TLS and hello together, counted from the TCP accept: a peer that
    // dawdles through the TLS handshake has that much less time left for its hello.
    const deadline = setTimeout(
      () => {
        this.countRefused('handshake_timeout');
        connection.close(CloseCode.Timeout, `no hello within ${options.handshakeTimeoutMs} ms`);
      },
      this.admission.remaining(endpoint, options.handshakeTimeoutMs),
    );
    const connection = new FramedConnection(
      socket,
      {
        onData: (packet) => session && this.onNodePacket(session, packet),
        onPong: (rttMs) => {
          if (session) options.observer?.pong?.(session.peer.config.name, rttMs);
        },
        onControl: (type, payload) => {
          if (session || helloSeen || type !== FrameType.Hello) {
            connection.close(CloseCode.ProtocolError, `unexpected ${FrameType[type] ?? type} frame`);
            return;
          }
          clearTimeout(deadline);
          this.unauthenticated.delete(socket);
          this.settle(endpoint);
          helloSeen = true;
          void this.authenticate(socket, connection, payload, endpoint, (admitted) => {
            session = admitted;
          });
        },
        onClose: (code, reason, byPeer) => {
          clearTimeout(deadline);
          this.unauthenticated.delete(socket);
          this.settle(endpoint);
          if (session) this.onSessionClosed(session, code, reason, byPeer);
          else if (code !== CloseCode.AuthFailed && code !== CloseCode.RouteNotAllowed) {
            // Rejections were counted with their precise reason in authenticate().
            const failure = code === CloseCode.Normal ? 'aborted' : closeCodeName(code);
            options.log[failure === 'aborted' ? 'debug' : 'info'](
              { endpoint, reason: failure, detail: reason },
              'handshake failed',
            );
            options.observer?.handshakeFailed?.(failure);
          }
        },
      },
      { ...options.connection, maxInitialPayload: DEFAULT_MAX_HELLO_PAYLOAD },
    );
  }

  private async authenticate(
    socket: TLSSocket,
    connection: FramedConnection,
    payload: Buffer,
    endpoint: string,
    admit: (session: Session) => void,
  ): Promise<void> {
    const { log } = this.options;
    try {
      const exporter = socket.exportKeyingMaterial(EXPORTER_BYTES, EXPORTER_LABEL, Buffer.alloc(0));
      const hello = verifyHello(payload, exporter);
      let { peer: config, routes } = this.registry.authorize(hello);
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
      // A reload may have replaced or removed this peer while checkRoutes ran: decide again
      // against the peers file as it is now.
      if (this.peers.get(config.publicKeyText)?.config !== config)
        ({ peer: config, routes } = this.registry.authorize(hello));
      const peer = this.peers.get(config.publicKeyText)!;
      const previous = peer.session;
      const session: Session = { peer, connection, endpoint, routes };
      // The peer's counters outlive its connections, as in `wg show`.
      connection.counters = peer.counters;
      peer.session = session;
      admit(session);
      // Replacing a session swaps its routes in one synchronous step: the new session's routes
      // overwrite the old ones first, then closing the old one (its onClose runs synchronously)
      // withdraws whatever only it announced, so no packet ever finds a route missing. Kernel
      // routes are not touched (they follow the peers file, not sessions).
      for (const route of routes) this.announced.insert(route, session);
      previous?.connection.close(CloseCode.Replaced, `replaced by a new connection from ${endpoint}`);
      connection.setMaxPayload(DEFAULT_MAX_PAYLOAD);
      connection.sendControl(
        FrameType.Welcome,
        Buffer.from(
          JSON.stringify({
            tunnelCidrs: this.options.tunnelCidrs.map(String),
            serverAddresses: this.tunnelAddressTexts,
            routes: routes.map(String),
          }),
        ),
      );
      connection.startKeepalive();
      log.info(
        { peer: config.name, endpoint, routes: routes.map(String), replaced: previous !== undefined },
        'peer connected',
      );
      this.options.observer?.connected?.(config.name);
    } catch (err) {
      const code =
        err instanceof AuthError && err.code === 'route_not_allowed' ? CloseCode.RouteNotAllowed : CloseCode.AuthFailed;
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
    this.options.log.info(
      { peer: session.peer.config.name, endpoint: session.endpoint, code: closeCodeName(code), reason, byPeer },
      'peer disconnected',
    );
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
    const from =
      packet[0]! >> 4 === 6
        ? packet.subarray(DST_OFFSET_V6, DST_OFFSET_V6 + 16)
        : packet.subarray(DST_OFFSET_V4, DST_OFFSET_V4 + 4);
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
        ...trafficStatus(counters, connection),
      });
    }
    return {
      role: 'server',
      tun: this.options.tun.name,
      tunnelAddress: this.tunnelAddressTexts[0] ?? null,
      tunnelAddresses: [...this.tunnelAddressTexts],
      listen: this.listenAddress,
      startedAt: this.startedAt.toISOString(),
      dropsByReason: this.unattributed.dropsByReason(),
      refusedConnections: Object.fromEntries(this.refused),
      peers,
    };
  }
}

function samePeer(a: PeerConfig, b: PeerConfig): boolean {
  return (
    a.name === b.name &&
    a.allowedIPs.length === b.allowedIPs.length &&
    a.allowedIPs.every((prefix, i) => prefix.equals(b.allowedIPs[i]!))
  );
}

function listenError(err: NodeJS.ErrnoException, host: string, port: number): NodelinkError {
  if (err.code === 'EADDRINUSE')
    return new NodelinkError(
      'listen',
      `port ${port} on ${host} is already in use: stop the other process or pick another --listen port`,
    );
  if (err.code === 'EADDRNOTAVAIL')
    return new NodelinkError('listen', `${host} is not an address of this machine: fix --listen`);
  if (err.code === 'EACCES')
    return new NodelinkError(
      'listen',
      `not allowed to listen on ${host}:${port}: run as root or pick a port above 1023`,
    );
  return new NodelinkError('listen', `cannot listen on ${host}:${port} (${err.code ?? err.message}): fix --listen`);
}

/**
 * The control-plane server's lifecycle and front door: the TCP listener, admission (who may
 * start a handshake now, who waits in line unread, who is refused), and TLS, up to the TLS
 * connection it hands to handshake.ts. The parts of the server, one job each:
 *
 * - server.ts (here): start and stop, listener, admission, TLS, certificate renewal;
 * - handshake.ts: one node's connection from its hello to its close (authorization, Welcome);
 * - peers.ts: the peers, their sessions and the route tables they share;
 * - forward.ts: the packet path between the TUN and the sessions (its flow is described there);
 * - reload.ts: a new peers file on SIGHUP;
 * - status.ts: the status document.
 */
import { hkdfSync } from 'node:crypto';
import { createServer as createTcpServer, type Server as TcpServer, type Socket } from 'node:net';
import {
  createServer as createTlsServer,
  type SecureContextOptions,
  type Server as TlsServer,
  type TLSSocket,
} from 'node:tls';
import type { KeyPair, PeerRegistry } from '../auth/index.js';
import { CloseCode } from '../protocol/index.js';
import { formatEndpoint, type Prefix } from '../routing/index.js';
import type { Refusal } from '../reasons.js';
import type { TunDevice } from '../tun/index.js';
import type { DaemonStatus, KernelRoutes, RouteState } from '../admin/index.js';
import type { ConnectionOptions } from '../link/connection.js';
import type { LinkObserver } from '../link/observer.js';
import type { Logger } from '../log.js';
import { NodelinkError } from '../errors.js';
import { createServerCertificate, type ServerCertificate } from './certificate.js';
import {
  Admission,
  DEFAULT_ADMISSION_LIMITS,
  QUEUE_WAIT_DEADLINES,
  type AdmissionLimits,
  type Dequeued,
} from './admission.js';
import { Forwarder } from './forward.js';
import { NodeConnection, type HandshakeContext } from './handshake.js';
import { Peers } from './peers.js';
import { reloadPeers, type PeerSource, type ReloadSummary } from './reload.js';
import { pathTargets, type PathTarget } from './path-check.js';
import { serverRouteStates, serverStatus } from './status.js';
import type { HeldPeer } from './session-routes.js';

export type { ReloadSummary };

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
  /** Kubernetes mode: the hello check that replaces the peers file's key lookup (handshake.ts). */
  readonly authorizeHello?: HandshakeContext['authorizeHello'];
  /** Workers: claims a node's routes into this worker's TUN before its Welcome (handshake.ts). */
  readonly claimRoutes?: HandshakeContext['claimRoutes'];
  /** A CA-signed certificate (--cert); without one the server presents a self-signed one of its key. */
  readonly certificate?: ServerCertificate;
  /** Limits on connections that have not authenticated yet (see admission.ts). */
  readonly limits?: AdmissionLimits;
  /** Removes kernel routes toward the TUN (peers-file reload); without it they are left in place. */
  readonly removeRoutes?: (cidrs: readonly Prefix[]) => Promise<void>;
  /** This replica's name ('' = none) and how many replicas serve behind the nodes' address. */
  readonly serverId?: string;
  readonly serverCount?: number;
}

/** Node's own listen backlog. */
const LISTEN_BACKLOG_MIN = 511;

/**
 * How long a node may resume its TLS session from a ticket: TLS 1.3's longest. A resumption
 * skips the certificate, its signature and their checks on both ends; the key exchange (ECDHE)
 * still runs afresh, so traffic keys stay forward secret.
 */
export const SESSION_TICKET_LIFETIME_S = 7 * 24 * 3600;

/**
 * Session tickets are sealed with keys derived from the server's own key, not random ones: a
 * restarted server, or another replica with the same key, opens the tickets its predecessor
 * issued, so nodes come back from a restart resuming, with no state kept anywhere. Whoever can
 * open them holds the server key already.
 */
export function sessionTicketKeys(pair: Pick<KeyPair, 'seed'>): Buffer {
  return Buffer.from(hkdfSync('sha256', pair.seed, Buffer.alloc(0), 'nodelink session ticket keys v1', 48));
}

/** What the server's TLS presents, at start and after a certificate renewal: TLS 1.3 only. */
export function serverTlsOptions(
  certificate: ServerCertificate,
  pair: KeyPair,
): SecureContextOptions & { ticketKeys: Buffer } {
  return {
    cert: certificate.certPem,
    key: certificate.keyPem,
    minVersion: 'TLSv1.3',
    maxVersion: 'TLSv1.3',
    ticketKeys: sessionTicketKeys(pair),
    sessionTimeout: SESSION_TICKET_LIFETIME_S,
  };
}

/**
 * The control-plane side: a TLS listener, one authenticated session per node, and forwarding
 * between the TUN and the sessions.
 */
export class LinkServer {
  // Static after construction.
  private readonly peers: Peers;
  private readonly forwarder: Forwarder;
  private readonly admission: Admission<Socket>; // pure bookkeeping of slots and the line
  private readonly handshake: HandshakeContext; // what every NodeConnection shares
  private readonly tunnelAddressTexts: string[]; // the server's own tunnel addresses, in welcome and status
  private readonly startedAt = new Date();
  // Set by listen(), used until stop().
  private listener: TcpServer | undefined; // accepts TCP; admission decides who goes on to `tls`
  private tls: TlsServer | undefined; // never listens itself; takes the sockets admission lets through
  private tlsReady: Promise<void> | undefined; // `tls` is made (listen() starts it, start() waits)
  // Owned by the accept path and the connections it starts; read by status and connectionCounts.
  private readonly refused = new Map<Refusal, number>(); // connections given up on before their hello
  private readonly handshaking = new Set<TLSSocket>(); // admitted, TLS under way or done, no hello yet
  private stopping = false; // set once by stop(): no new session opens after it

  constructor(private readonly options: LinkServerOptions) {
    this.peers = new Peers(options.registry);
    this.forwarder = new Forwarder(this.peers, options.tun);
    this.tunnelAddressTexts = options.tunnelAddresses.map((prefix) => prefix.address);
    this.admission = new Admission(
      options.limits ?? DEFAULT_ADMISSION_LIMITS,
      Date.now,
      options.handshakeTimeoutMs * QUEUE_WAIT_DEADLINES,
    );
    this.handshake = {
      peers: this.peers,
      forwarder: this.forwarder,
      welcome: {
        tunnelCidrs: options.tunnelCidrs.map(String),
        serverAddresses: this.tunnelAddressTexts,
        serverId: options.serverId ?? '',
        serverCount: options.serverCount ?? 1,
      },
      serverId: options.serverId ?? '',
      connection: options.connection,
      handshakeTimeoutMs: options.handshakeTimeoutMs,
      checkRoutes: options.checkRoutes,
      authorizeHello: options.authorizeHello,
      claimRoutes: options.claimRoutes,
      log: options.log,
      observer: options.observer,
      isStopping: () => this.stopping,
      deadlineMs: (endpoint) => this.admission.remaining(endpoint, options.handshakeTimeoutMs),
      release: (socket, endpoint) => {
        this.handshaking.delete(socket);
        this.settle(endpoint);
      },
      refuse: (reason) => this.count(reason),
    };
  }

  /**
   * Listens, holding every connection unread (admission.ts) until start(): a node that dials
   * while the rest of the server is set up waits in line instead of being refused. Optional:
   * start() listens first if this was not called.
   */
  async listen(): Promise<void> {
    if (this.listener) return;
    const { options } = this;
    this.admission.hold();
    // pauseOnConnect: a held connection is not read (no TLS work, no buffers) until its turn.
    const listener = createTcpServer({ pauseOnConnect: true, noDelay: true }, (raw) => this.onConnection(raw));
    // The kernel's queue of connections not yet accepted is as long as the line (Node's 511 at
    // least): a storm that arrives faster than one turn of the event loop accepts waits there
    // too, instead of having its SYNs dropped and retried a second or more later. The kernel
    // caps it at net.core.somaxconn.
    const { maxUnauthenticated, maxQueued } = this.admission.limits;
    const backlog = Math.max(LISTEN_BACKLOG_MIN, maxUnauthenticated + maxQueued);
    await new Promise<void>((resolve, reject) => {
      listener.once('error', (err: NodeJS.ErrnoException) => reject(listenError(err, options.host, options.port)));
      listener.listen({ port: options.port, host: options.host, backlog }, () => resolve());
    });
    listener.on('error', (err) => options.log.error({ err: err.message }, 'listener error'));
    this.listener = listener;
    // The certificate is made while the line holds the first dials, beside the rest of the
    // setup (run-server's backstops and flow filter): listening does not wait for it, start()
    // does, and reports its failure.
    this.tlsReady = this.createTls();
    this.tlsReady.catch(() => undefined);
  }

  private async createTls(): Promise<void> {
    const { options } = this;
    const certificate = options.certificate ?? (await createServerCertificate(options.keyPair));
    const tls = createTlsServer({
      ...serverTlsOptions(certificate, options.keyPair),
      handshakeTimeout: options.handshakeTimeoutMs,
    });
    tls.on('secureConnection', (socket) => this.onSecureConnection(socket));
    tls.on('tlsClientError', (err: NodeJS.ErrnoException, socket) => this.onTlsError(err, socket));
    this.tls = tls;
  }

  /** Routes every peer's allowedIPs into the TUN, forwards, and lets the held connections in. */
  async start(): Promise<void> {
    const { options } = this;
    await this.listen();
    await this.tlsReady;
    await options.installRoutes(this.peers.registry.peers.flatMap((peer) => peer.allowedIPs));
    this.forwarder.attach();
    this.forwarder.startIcmpRefill();
    this.startHeld(this.admission.open());
    options.log.info({ listen: this.listenAddress, peers: this.peers.byKey.size }, 'server listening');
  }

  /** Presents another certificate to new connections (a renewed --cert); sessions keep theirs. */
  setCertificate(certificate: ServerCertificate): void {
    this.tls?.setSecureContext(serverTlsOptions(certificate, this.options.keyPair));
  }

  get listenAddress(): string {
    const address = this.listener?.address();
    if (address && typeof address === 'object') return formatEndpoint({ host: address.address, port: address.port });
    return formatEndpoint(this.options);
  }

  /** Says goodbye to every node, then stops listening. */
  async stop(): Promise<void> {
    this.stopping = true;
    this.forwarder.stop();
    for (const state of this.peers.byKey.values()) {
      state.session?.connection.close(CloseCode.ServerShutdown, 'server is shutting down');
    }
    for (const socket of this.handshaking) socket.destroy();
    for (const raw of this.admission.drain()) raw.destroy();
    await new Promise<void>((resolve) => (this.listener ? this.listener.close(() => resolve()) : resolve()));
  }

  /** Applies a new peers file (SIGHUP), or new Node objects in Kubernetes mode; see reload.ts. */
  reload(registry: PeerRegistry, source: PeerSource = 'peers-file'): Promise<ReloadSummary> {
    return reloadPeers(this.peers, registry, this.options, this.options.log, source);
  }

  status(): DaemonStatus {
    return serverStatus({
      peers: this.peers,
      tun: this.options.tun.name,
      tunnelAddresses: this.tunnelAddressTexts,
      listen: this.listenAddress,
      startedAt: this.startedAt,
      unattributed: this.forwarder.unattributed,
      refused: this.refused,
      serverId: this.options.serverId ?? '',
      serverCount: this.options.serverCount ?? 1,
    });
  }

  /** Each peer's allowed routes with their state, by peer name; `kernel` as `ip route` shows the TUN. */
  routeStates(kernel: KernelRoutes | undefined): Map<string, RouteState[]> {
    return serverRouteStates(this.peers, kernel);
  }

  /** Where the path checker probes: each connected node's node IP. */
  pathTargets(): PathTarget[] {
    const connected: Array<{ name: string; routes: readonly Prefix[] }> = [];
    for (const { session, config } of this.peers.byKey.values()) {
      if (session) connected.push({ name: config.name, routes: session.routes });
    }
    return pathTargets(connected);
  }

  /** Each peer's name, allowedIPs and whether it holds a session here (a worker's routes follow them). */
  *peerSessions(): Iterable<HeldPeer> {
    for (const { session, config } of this.peers.byKey.values())
      yield { name: config.name, allowedIPs: config.allowedIPs, connected: session !== undefined };
  }

  /** Live connection counts for leak checks (the `debug` field of status). */
  connectionCounts(): { sessions: number; handshaking: number; queued: number } {
    return { sessions: this.peers.sessionCount, handshaking: this.handshaking.size, queued: this.admission.queued };
  }

  /**
   * Every TCP connection, before TLS: the admission limits decide whether it may handshake now,
   * wait in line (held unread), or not at all. Once admitted it holds a slot (counted against
   * maxUnauthenticated) until its hello arrives or it closes.
   */
  private onConnection(raw: Socket): void {
    // A held socket has no TLS layer yet to take its errors (a reset while it waits).
    raw.on('error', () => undefined);
    if (raw.remoteAddress === undefined) {
      raw.destroy();
      this.refuse('aborted', '(gone)');
      return;
    }
    const endpoint = formatEndpoint({ host: raw.remoteAddress, port: raw.remotePort ?? 0 });
    const decision = this.admission.admit(endpoint, raw.remoteAddress, raw);
    if (decision === 'admitted' || decision === 'queued') {
      raw.once('close', () => this.settle(endpoint));
      if (decision === 'admitted') this.startTls(raw);
      return;
    }
    raw.destroy();
    this.refuse(decision, endpoint);
  }

  private startTls(raw: Socket): void {
    if (this.stopping || !this.tls) {
      raw.destroy();
      return;
    }
    this.tls.emit('connection', raw);
  }

  /** A connection's slot is free (hello arrived, or it closed): it goes to the next held one. */
  private settle(endpoint: string): void {
    this.startHeld(this.admission.settle(endpoint));
  }

  private startHeld({ start, expired }: Dequeued<Socket>): void {
    for (const raw of expired) {
      raw.destroy();
      this.count('handshake_timeout');
      this.options.observer?.handshakeFailed?.('handshake_timeout');
    }
    for (const raw of start) this.startTls(raw);
  }

  /** Closed before TLS by admission (or gone already): counted, and logged at debug only. */
  private refuse(reason: Refusal, endpoint: string): void {
    this.count(reason);
    this.options.log.debug({ endpoint, reason }, 'connection refused before TLS');
    this.options.observer?.handshakeFailed?.(reason);
  }

  private count(reason: Refusal): void {
    this.refused.set(reason, (this.refused.get(reason) ?? 0) + 1);
  }

  private onTlsError(err: NodeJS.ErrnoException, socket: TLSSocket): void {
    const reason: Refusal = err.code === 'ERR_TLS_HANDSHAKE_TIMEOUT' ? 'handshake_timeout' : 'tls_handshake_failed';
    // OpenSSL messages span lines; the code alone says what happened (ERR_SSL_HTTP_REQUEST, …).
    this.options.log.debug(
      {
        endpoint: formatEndpoint({ host: socket.remoteAddress ?? '?', port: socket.remotePort ?? 0 }),
        reason,
        err: err.code ?? err.message.split('\n')[0],
      },
      'TLS handshake failed',
    );
    this.count(reason);
    this.options.observer?.handshakeFailed?.(reason);
    // With a 'tlsClientError' listener Node leaves the socket open (even on its handshake
    // timeout): without this, a client that sends nothing would hold its slot forever.
    socket.destroy();
  }

  private onSecureConnection(socket: TLSSocket): void {
    if (this.stopping) {
      socket.destroy();
      return;
    }
    socket.setNoDelay(true);
    this.handshaking.add(socket);
    new NodeConnection(socket, this.handshake);
  }
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

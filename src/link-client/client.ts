import { connect as tlsConnect, type TLSSocket } from 'node:tls';
import { EXPORTER_BYTES, EXPORTER_LABEL, encodeHello, encodeKey, type KeyPair } from '../auth/index.js';
import { CloseCode, DEFAULT_MAX_PAYLOAD, FrameType, closeCodeName } from '../protocol/index.js';
import { Prefix, PrefixTable, checkPacket } from '../routing/index.js';
import type { TunDevice } from '../tun/index.js';
import type { DaemonStatus } from '../admin/index.js';
import { FramedConnection, type ConnectionOptions } from '../link/connection.js';
import { TrafficCounters, trafficStatus } from '../link/counters.js';
import { classifyDialFailure, type LinkObserver } from '../link/observer.js';
import type { Logger } from '../log.js';
import { NodelinkError } from '../errors.js';
import { Backoff } from './backoff.js';
import { checkServer, clientTlsOptions, serverIdentity } from './trust.js';

export interface LinkClientOptions {
  readonly host: string;
  readonly port: number;
  /** Pinned Ed25519 key of the server; optional when `ca` is set (see trust.ts). */
  readonly serverKey?: Uint8Array;
  /** PEM CA certificates the server's chain must verify against (--ca). */
  readonly ca?: string;
  /** Name to send as SNI and to find in the server's certificate, instead of `host` (--server-name). */
  readonly serverName?: string;
  readonly keyPair: KeyPair;
  readonly name: string;
  readonly routes: readonly Prefix[];
  readonly tun: TunDevice;
  readonly connection: ConnectionOptions;
  /** TCP connect + TLS + welcome must finish within this. */
  readonly handshakeTimeoutMs: number;
  readonly backoffBaseMs: number;
  readonly backoffCapMs: number;
  /** Routes the server's tunnel CIDRs into the TUN; injected so unit tests run without root. */
  readonly installRoutes: (cidrs: readonly Prefix[]) => Promise<void>;
  /** The server refused us for a reason that retrying cannot fix (unknown key, route not allowed). */
  readonly onRejected: (reason: string) => void;
  readonly log: Logger;
  /** Per-event hooks (metrics): connect, handshake failure, disconnect, pong. */
  readonly observer?: LinkObserver;
  /** This server's name in status and metrics (default 'server'; one per server when there are several). */
  readonly peerName?: string;
}

interface Welcome {
  tunnelCidrs: string[];
  serverAddresses: string[];
}

/**
 * The node side: dials out to the server (the control plane never dials in), authenticates,
 * and pumps packets between the TUN and the one TLS stream. When the stream dies it redials
 * with backoff; packets read from the TUN meanwhile are dropped and counted (disconnected).
 */
export class LinkClient {
  private connection: FramedConnection | undefined;
  private authenticated = false;
  private stopped = false;
  private reconnectTimer: NodeJS.Timeout | undefined;
  private readonly backoff: Backoff;
  private readonly counters = new TrafficCounters();
  private readonly startedAt = new Date();
  private endpoint: string | null = null;
  /** The server's key or certificate fingerprint as last presented (for status in --ca mode). */
  private presentedIdentity: string | undefined;
  private tunnelCidrs: string[] = [];
  private serverAddresses: string[] = [];
  private installedCidrs = '';
  private ownRoutes!: PrefixTable<true>;
  private routes!: readonly Prefix[];

  constructor(private readonly options: LinkClientOptions) {
    this.backoff = new Backoff(options.backoffBaseMs, options.backoffCapMs);
    this.useRoutes(options.routes);
  }

  /** The routes this node announces, and the table its packets' sources are checked against. */
  private useRoutes(routes: readonly Prefix[]): void {
    const table = new PrefixTable<true>();
    for (const route of routes) table.insert(route, true);
    this.routes = routes;
    this.ownRoutes = table;
  }

  start(): void {
    this.options.tun.onPacket((packet) => this.onTunPacket(packet));
    this.dial();
  }

  /**
   * Replaces the routes this node announces (its Node object changed) and closes the current
   * stream, so the client redials and the server authorizes the new set from a fresh hello.
   */
  setRoutes(routes: readonly Prefix[]): void {
    this.useRoutes(routes);
    this.connection?.close(CloseCode.Normal, 'announced routes changed: reconnecting to announce them');
  }

  /** The routes this node announces now (setRoutes changes them). */
  get announcedRoutes(): readonly Prefix[] {
    return this.routes;
  }

  get peerName(): string {
    return this.options.peerName ?? 'server';
  }

  get isAuthenticated(): boolean {
    return this.authenticated;
  }

  async stop(): Promise<void> {
    this.stopped = true;
    if (this.reconnectTimer) clearTimeout(this.reconnectTimer);
    this.connection?.close(CloseCode.Normal, 'node is shutting down');
  }

  private dial(): void {
    const { options } = this;
    let socket: TLSSocket;
    // A failure this client raised itself, named where it knows the cause; others (errno codes
    // in the socket's error) are classified from the reason.
    let failure: string | undefined;
    const deadline = setTimeout(() => {
      failure = 'timeout';
      options.log.warn(
        { server: `${options.host}:${options.port}` },
        `no welcome within ${options.handshakeTimeoutMs} ms`,
      );
      socket.destroy(new Error(`no welcome within ${options.handshakeTimeoutMs} ms`));
    }, options.handshakeTimeoutMs);
    socket = tlsConnect(clientTlsOptions(options.host, options.port, options));
    socket.setNoDelay(true);
    socket.once('secureConnect', () => {
      const untrusted = checkServer(socket, options);
      if (untrusted) {
        failure = untrusted.failure;
        options.log.error(
          { server: `${options.host}:${options.port}`, presented: serverIdentity(socket) ?? null },
          untrusted.message,
        );
        socket.destroy(new Error(untrusted.message));
        return;
      }
      // Status shows the pinned key when there is one; only --ca mode needs what was presented.
      if (!options.serverKey) this.presentedIdentity = serverIdentity(socket);
      this.endpoint = `${socket.remoteAddress}:${socket.remotePort}`;
      const exporter = socket.exportKeyingMaterial(EXPORTER_BYTES, EXPORTER_LABEL, Buffer.alloc(0));
      connection.sendControl(
        FrameType.Hello,
        encodeHello(options.keyPair, exporter, {
          name: options.name,
          routes: this.routes.map(String),
        }),
      );
    });
    const connection = new FramedConnection(
      socket,
      {
        onData: (packet) => {
          if (checkPacket(packet) !== null) {
            this.counters.drop('malformed');
            return;
          }
          if (!options.tun.write(packet)) this.counters.drop('tun_error');
        },
        onControl: (type, payload) => {
          if (type !== FrameType.Welcome || this.authenticated) {
            connection.close(CloseCode.ProtocolError, `unexpected ${FrameType[type] ?? type} frame`);
            return;
          }
          clearTimeout(deadline);
          void this.onWelcome(connection, payload);
        },
        onClose: (code, reason, byPeer) => {
          clearTimeout(deadline);
          if (this.authenticated) options.observer?.disconnected?.(this.peerName, closeCodeName(code));
          else if (!this.stopped)
            options.observer?.handshakeFailed?.(
              byPeer ? closeCodeName(code) : (failure ?? classifyDialFailure(reason)),
              this.peerName,
              reason,
            );
          this.onClosed(code, reason, byPeer);
        },
        onPong: (rttMs) => options.observer?.pong?.(this.peerName, rttMs),
      },
      { ...options.connection, maxInitialPayload: DEFAULT_MAX_PAYLOAD },
      this.counters,
    );
    this.connection = connection;
  }

  private async onWelcome(connection: FramedConnection, payload: Buffer): Promise<void> {
    let welcome: Welcome;
    try {
      welcome = JSON.parse(payload.toString('utf8')) as Welcome;
      if (!Array.isArray(welcome.tunnelCidrs)) throw new Error('no tunnelCidrs');
    } catch {
      connection.close(CloseCode.ProtocolError, 'malformed welcome');
      return;
    }
    this.authenticated = true;
    this.backoff.reset();
    this.tunnelCidrs = welcome.tunnelCidrs;
    this.serverAddresses = welcome.serverAddresses ?? [];
    connection.startKeepalive();
    this.options.log.info({ server: this.endpoint, tunnelCidrs: welcome.tunnelCidrs }, 'connected to server');
    this.options.observer?.connected?.(this.peerName);
    const key = welcome.tunnelCidrs.join(',');
    if (key !== this.installedCidrs) {
      try {
        await this.options.installRoutes(welcome.tunnelCidrs.map((cidr) => Prefix.parse(cidr)));
        this.installedCidrs = key;
        this.options.log.info(
          { routes: welcome.tunnelCidrs, dev: this.options.tun.name },
          'routes to the control plane installed',
        );
      } catch (err) {
        this.options.log.error(
          { err: err instanceof NodelinkError ? err.message : String(err) },
          'cannot install routes to the control plane',
        );
        connection.close(CloseCode.Internal, 'node could not install its routes');
      }
    }
  }

  private onClosed(code: CloseCode, reason: string, byPeer: boolean): void {
    const wasAuthenticated = this.authenticated;
    this.authenticated = false;
    this.connection = undefined;
    if (this.stopped) return;
    if (byPeer && (code === CloseCode.AuthFailed || code === CloseCode.RouteNotAllowed)) {
      this.stopped = true;
      this.options.onRejected(reason);
      return;
    }
    const delay = this.backoff.next();
    this.options.log.warn(
      { code: closeCodeName(code), reason, byPeer, wasAuthenticated, retryInMs: delay },
      'disconnected from server',
    );
    this.reconnectTimer = setTimeout(() => this.dial(), delay);
  }

  private onTunPacket(packet: Buffer): void {
    if (!this.authenticated || !this.connection) {
      this.counters.drop('disconnected');
      return;
    }
    if (checkPacket(packet) !== null) {
      this.counters.drop('malformed');
      return;
    }
    // The server would drop it as spoofed anyway; not sending it keeps its counters meaningful.
    if (this.ownRoutes.lookupSource(packet) === undefined) {
      this.counters.drop('unannounced_source');
      return;
    }
    this.connection.sendData(packet);
  }

  status(): DaemonStatus {
    const connection = this.authenticated ? this.connection : undefined;
    const { counters } = this;
    return {
      role: 'client',
      tun: this.options.tun.name,
      name: this.options.name,
      tunnelAddress: null,
      tunnelAddresses: [],
      startedAt: this.startedAt.toISOString(),
      dropsByReason: {},
      peers: [
        {
          name: this.peerName,
          publicKey: this.options.serverKey ? encodeKey(this.options.serverKey) : (this.presentedIdentity ?? ''),
          connected: connection !== undefined,
          endpoint: connection ? this.endpoint : `${this.options.host}:${this.options.port}`,
          routes: this.tunnelCidrs,
          ...trafficStatus(counters, connection),
        },
      ],
    };
  }

  /** The addresses the server owns in the tunnel (what nodes see as the source). */
  get serverTunnelAddresses(): readonly string[] {
    return this.serverAddresses;
  }
}

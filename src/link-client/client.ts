import { connect as tlsConnect, type TLSSocket } from 'node:tls';
import { EXPORTER_BYTES, EXPORTER_LABEL, encodeHello, encodeKey, type KeyPair } from '../auth/index.js';
import { CloseCode, FrameType, closeCodeName, decodeWelcome } from '../protocol/index.js';
import { Prefix, PrefixTable, checkPacket, formatEndpoint } from '../routing/index.js';
import type { DialFailure } from '../reasons.js';
import type { TunDevice } from '../tun/index.js';
import type { DaemonStatus } from '../admin/index.js';
import { FramedConnection, type ConnectionOptions } from '../link/connection.js';
import { TrafficCounters, trafficStatus } from '../link/counters.js';
import type { LinkObserver } from '../link/observer.js';
import type { Logger } from '../log.js';
import { userMessage } from '../errors.js';
import { Backoff } from './backoff.js';
import { DialError, dialFailureOf } from './dial-error.js';
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

/**
 * The node side: dials out to the server (the control plane never dials in), authenticates,
 * and pumps packets between the TUN and the one TLS stream. When the stream dies it redials
 * with backoff; packets read from the TUN meanwhile are dropped and counted (disconnected).
 */
export class LinkClient {
  // Static after construction.
  private readonly backoff: Backoff;
  private readonly counters = new TrafficCounters(); // this node's traffic, across reconnects
  private readonly startedAt = new Date();
  // Replaced together by setRoutes; ownRoutes is read per packet.
  private routes!: readonly Prefix[]; // what the hello announces
  private ownRoutes!: PrefixTable<true>; // the same, to check each packet's source against
  // Owned by the dial loop: one connection at a time, redialed with backoff until stop().
  private connection: FramedConnection | undefined; // the current one, handshaking or in session
  private authenticated = false; // a Welcome arrived on `connection`
  private stopped = false; // stop() was called, or the server rejected this node
  private reconnectTimer: NodeJS.Timeout | undefined;
  // What the last session learned, for status and the routes into the TUN.
  private endpoint: string | null = null; // the server's address as connected
  private presentedIdentity: string | undefined; // the server's key or certificate fingerprint (--ca mode)
  private tunnelCidrs: readonly string[] = [];
  private serverAddresses: readonly string[] = [];
  private installedCidrs = ''; // the tunnel CIDRs last routed into the TUN, joined

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
    const server = formatEndpoint(options);
    let socket: TLSSocket;
    // Why this dial failed, from the first error the socket reports: a DialError raised here,
    // or the socket's own errno.
    let failure: DialFailure | undefined;
    const deadline = setTimeout(() => {
      const message = `no welcome within ${options.handshakeTimeoutMs} ms`;
      options.log.warn({ server }, message);
      socket.destroy(new DialError('handshake_timeout', message));
    }, options.handshakeTimeoutMs);
    socket = tlsConnect(clientTlsOptions(options.host, options.port, options));
    socket.setNoDelay(true);
    // Registered before the connection's own listener, so the cause is known when it closes.
    socket.on('error', (err) => {
      failure ??= dialFailureOf(err);
    });
    socket.once('secureConnect', () => {
      const untrusted = checkServer(socket, options);
      if (untrusted) {
        options.log.error({ server, presented: serverIdentity(socket) ?? null }, untrusted.message);
        socket.destroy(new DialError(untrusted.failure, untrusted.message));
        return;
      }
      // Status shows the pinned key when there is one; only --ca mode needs what was presented.
      if (!options.serverKey) this.presentedIdentity = serverIdentity(socket);
      this.endpoint = formatEndpoint({
        host: socket.remoteAddress ?? options.host,
        port: socket.remotePort ?? options.port,
      });
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
          else if (!this.stopped) {
            // A code the server sent, or one this end closed with, names the cause; a stream
            // that merely ended does not, and the socket's error does.
            const cause = byPeer || code !== CloseCode.Normal ? closeCodeName(code) : (failure ?? 'connection_error');
            options.observer?.handshakeFailed?.(cause, this.peerName, reason);
          }
          this.onClosed(code, reason, byPeer);
        },
        onPong: (rttMs) => options.observer?.pong?.(this.peerName, rttMs),
      },
      options.connection,
      { counters: this.counters },
    );
    this.connection = connection;
  }

  private async onWelcome(connection: FramedConnection, payload: Buffer): Promise<void> {
    let tunnelCidrs: Prefix[];
    let serverAddresses: readonly string[];
    try {
      const welcome = decodeWelcome(payload);
      tunnelCidrs = welcome.tunnelCidrs.map((cidr) => Prefix.parse(cidr));
      serverAddresses = welcome.serverAddresses;
    } catch (err) {
      connection.close(CloseCode.ProtocolError, `malformed welcome: ${userMessage(err)}`);
      return;
    }
    this.authenticated = true;
    this.backoff.reset();
    this.tunnelCidrs = tunnelCidrs.map(String);
    this.serverAddresses = serverAddresses;
    connection.startKeepalive();
    this.options.log.info({ server: this.endpoint, tunnelCidrs: this.tunnelCidrs }, 'connected to server');
    this.options.observer?.connected?.(this.peerName);
    const key = this.tunnelCidrs.join(',');
    if (key !== this.installedCidrs) {
      try {
        await this.options.installRoutes(tunnelCidrs);
        this.installedCidrs = key;
        this.options.log.info(
          { routes: this.tunnelCidrs, dev: this.options.tun.name },
          'routes to the control plane installed',
        );
      } catch (err) {
        this.options.log.error({ err: userMessage(err) }, 'cannot install routes to the control plane');
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
          endpoint: connection ? this.endpoint : formatEndpoint(this.options),
          routes: [...this.tunnelCidrs],
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

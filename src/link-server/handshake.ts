/**
 * One node's connection on the server, from the end of its TLS handshake to its close: the
 * deadline for the hello, hello verification (signed over this very TLS session), authorization
 * (the key in the peers file, or in Kubernetes mode the Node the hello's token speaks for) and the
 * optional route check, the Welcome that opens the session, and
 * the session's end. The listener (server.ts) creates one NodeConnection per TLS connection that
 * admission let through; forward.ts carries the session's packets.
 */
import type { TLSSocket } from 'node:tls';
import {
  AuthError,
  EXPORTER_BYTES,
  EXPORTER_LABEL,
  verifyHello,
  type Hello,
  type PeerConfig,
  type PeerRegistry,
} from '../auth/index.js';
import {
  CloseCode,
  DEFAULT_MAX_HELLO_PAYLOAD,
  DEFAULT_MAX_PAYLOAD,
  FrameType,
  closeCodeName,
  encodeWelcome,
  type Welcome,
} from '../protocol/index.js';
import { REJECTIONS, isReason, type HandshakeFailure, type Refusal } from '../reasons.js';
import { formatEndpoint, type Prefix } from '../routing/index.js';
import { FramedConnection, type ConnectionOptions } from '../link/connection.js';
import type { LinkObserver } from '../link/observer.js';
import type { Logger } from '../log.js';
import { NodelinkError, userMessage } from '../errors.js';
import type { Forwarder } from './forward.js';
import type { PeerState, Peers, Session } from './peers.js';

/** What every connection of one server shares: the server's parts a handshake reads or calls. */
export interface HandshakeContext {
  readonly peers: Peers;
  readonly forwarder: Forwarder;
  /** The Welcome's fields that are the same for every node; each session adds its routes. */
  readonly welcome: Welcome;
  /** This replica's name in the Welcome; '' = none. */
  readonly serverId: string;
  readonly connection: ConnectionOptions;
  readonly handshakeTimeoutMs: number;
  readonly checkRoutes?: (name: string, routes: readonly Prefix[]) => Promise<void>;
  /**
   * Kubernetes mode: decides on a verified hello instead of the peers file's key lookup (its
   * token names the Node). AuthError refuses the node; any other error is transient.
   */
  readonly authorizeHello?: (
    hello: Hello,
  ) => Promise<(registry: PeerRegistry) => { peer: PeerConfig; routes: Prefix[] }>;
  /**
   * Workers: claims the node's routes into this worker's TUN before its Welcome, and resolves
   * with a function to call once the session opened or was given up. A rejection fails the
   * session (`internal`, the node retries) rather than welcoming a node whose routes lead to
   * another worker.
   */
  readonly claimRoutes?: (peer: string) => Promise<() => void>;
  readonly log: Logger;
  readonly observer?: LinkObserver;
  /** Set once the server stops: a handshake that completes afterwards must not open a session. */
  isStopping(): boolean;
  /** Milliseconds left of the deadline that started at the TCP accept of `endpoint`. */
  deadlineMs(endpoint: string): number;
  /** The connection no longer holds a handshake slot: its hello arrived, or it closed. */
  release(socket: TLSSocket, endpoint: string): void;
  /** Counts a connection the server gave up on before its hello (status refusedConnections). */
  refuse(reason: Refusal): void;
}

export class NodeConnection {
  // Static after construction.
  private readonly endpoint: string;
  private readonly connection: FramedConnection;
  // Owned by the handshake: from construction until the hello is judged.
  private readonly deadline: NodeJS.Timeout; // TLS and hello together, counted from the accept
  private helloSeen = false; // one hello per connection; any other frame before a session closes it
  private failure: HandshakeFailure | undefined; // the cause, when this end knew it before closing
  private rejected = false; // a Reject was sent; its reason is already counted and logged
  // Set once, when the hello is accepted; read by the packet path.
  private session: Session | undefined;

  constructor(
    private readonly socket: TLSSocket,
    private readonly ctx: HandshakeContext,
  ) {
    this.endpoint = formatEndpoint({ host: socket.remoteAddress ?? '?', port: socket.remotePort ?? 0 });
    this.connection = new FramedConnection(
      socket,
      {
        onData: (packet, offload) => this.session && ctx.forwarder.fromNode(this.session, packet, offload),
        onPong: (rttMs) => this.session && ctx.observer?.pong?.(this.session.peer.config.name, rttMs),
        onControl: (type, payload) => this.onControl(type, payload),
        onClose: (code, reason, byPeer) => this.onClose(code, reason, byPeer),
      },
      ctx.connection,
      { maxPayload: DEFAULT_MAX_HELLO_PAYLOAD },
    );
    // One deadline for TLS and hello together, counted from the TCP accept: a peer that
    // dawdles through the TLS handshake has that much less time left for its hello.
    this.deadline = setTimeout(() => this.onDeadline(), ctx.deadlineMs(this.endpoint));
  }

  private onDeadline(): void {
    this.failure = 'handshake_timeout';
    this.ctx.refuse('handshake_timeout');
    this.connection.close(CloseCode.Timeout, `no hello within ${this.ctx.handshakeTimeoutMs} ms`);
  }

  private onControl(type: FrameType, payload: Buffer): void {
    if (this.session || this.helloSeen || type !== FrameType.Hello) {
      this.connection.close(CloseCode.ProtocolError, `unexpected ${FrameType[type] ?? type} frame`);
      return;
    }
    this.helloSeen = true;
    clearTimeout(this.deadline);
    this.ctx.release(this.socket, this.endpoint);
    void this.authenticate(payload);
  }

  private async authenticate(payload: Buffer): Promise<void> {
    const { ctx, connection } = this;
    let hello: Hello;
    let authorized: { peer: PeerState; routes: Prefix[] };
    try {
      hello = verifyHello(payload, this.socket.exportKeyingMaterial(EXPORTER_BYTES, EXPORTER_LABEL, Buffer.alloc(0)));
      if (ctx.authorizeHello) {
        const found = await this.authorizeWith(ctx.authorizeHello, hello);
        if (!found) return;
        authorized = found;
      } else {
        authorized = ctx.peers.authorize(hello);
      }
    } catch (err) {
      this.reject(err);
      return;
    }
    if (ctx.serverId && hello.held?.includes(ctx.serverId)) {
      // The load balancer sent a node here that already holds a session to this replica: it
      // keeps that one and looks on for the others. Nothing failed.
      ctx.log.debug({ peer: authorized.peer.config.name, endpoint: this.endpoint }, 'node already holds this replica');
      ctx.refuse('already_held');
      this.rejected = true;
      connection.close(
        CloseCode.AlreadyHeld,
        `this node already holds a session to server ${ctx.serverId}`,
        FrameType.Reject,
      );
      return;
    }
    if (ctx.checkRoutes) {
      try {
        await ctx.checkRoutes(authorized.peer.config.name, authorized.routes);
      } catch (err) {
        if (err instanceof AuthError) {
          this.reject(err);
          return;
        }
        ctx.log.warn(
          { peer: authorized.peer.config.name, endpoint: this.endpoint, detail: userMessage(err) },
          'cannot check the routes of a peer now: it will retry',
        );
        connection.close(CloseCode.Internal, `the server cannot check this node's routes now: retrying`);
        return;
      }
      if (connection.isClosed) return;
      if (ctx.isStopping()) {
        connection.close(CloseCode.ServerShutdown, 'server is shutting down');
        return;
      }
      // A reload may have replaced or removed this peer while checkRoutes ran: decide again
      // against the peers file as it is now.
      try {
        authorized = ctx.peers.authorize(hello);
      } catch (err) {
        this.reject(err);
        return;
      }
    }
    if (ctx.claimRoutes) {
      await this.openClaimed(ctx.claimRoutes, authorized.peer, authorized.routes, hello.offload === true);
      return;
    }
    this.open(authorized.peer, authorized.routes, hello.offload === true);
  }

  /** Workers: the node's routes reach this worker's TUN first, then the session opens. */
  private async openClaimed(
    claim: NonNullable<HandshakeContext['claimRoutes']>,
    peer: PeerState,
    routes: readonly Prefix[],
    offered: boolean,
  ): Promise<void> {
    const { ctx, connection } = this;
    const { config } = peer;
    let settled: () => void;
    try {
      settled = await claim(config.name);
    } catch (err) {
      ctx.log.warn(
        { peer: config.name, endpoint: this.endpoint, detail: userMessage(err) },
        'cannot route a node to this worker: it will retry',
      );
      connection.close(CloseCode.Internal, `the server cannot route this node now (${userMessage(err)}): retrying`);
      return;
    }
    try {
      if (connection.isClosed) return;
      if (ctx.isStopping()) {
        connection.close(CloseCode.ServerShutdown, 'server is shutting down');
        return;
      }
      // A reload may have replaced or removed the peer while its routes were claimed.
      if (ctx.peers.byKey.get(config.publicKeyText) !== peer || peer.config !== config) {
        connection.close(CloseCode.Internal, `peer "${config.name}" changed on the server while connecting: retrying`);
        return;
      }
      this.open(peer, routes, offered);
    } finally {
      settled();
    }
  }

  /**
   * Asks an asynchronous authority (Kubernetes mode). Undefined when the connection must not go
   * on: it closed meanwhile, the server is stopping, or the authority could not answer now (the
   * node is told to retry, with the cause).
   */
  private async authorizeWith(
    authorize: NonNullable<HandshakeContext['authorizeHello']>,
    hello: Hello,
  ): Promise<{ peer: PeerState; routes: Prefix[] } | undefined> {
    const { ctx, connection } = this;
    let decided: { peer: PeerConfig; routes: Prefix[] };
    try {
      const decide = await authorize(hello);
      if (connection.isClosed) return undefined;
      if (ctx.isStopping()) {
        connection.close(CloseCode.ServerShutdown, 'server is shutting down');
        return undefined;
      }
      // Decided on the peers in force now: they may have moved while the authority answered.
      decided = decide(ctx.peers.registry);
    } catch (err) {
      if (err instanceof AuthError) throw err;
      ctx.log.warn(
        { node: hello.name, endpoint: this.endpoint, detail: userMessage(err) },
        'cannot verify a node now: it will retry',
      );
      connection.close(CloseCode.Internal, `the server cannot admit this node now (${userMessage(err)})`);
      return undefined;
    }
    // A reload replaces the registry and byKey in one step, so every entry of one is in the other.
    const peer = ctx.peers.byKey.get(decided.peer.publicKeyText)!;
    return { peer, routes: decided.routes };
  }

  /**
   * The hello is accepted: the session opens, replacing the peer's previous one. Offloads are
   * agreed when the hello offered them and this server's TUN can.
   */
  private open(peer: PeerState, routes: readonly Prefix[], offered: boolean): void {
    const { ctx, connection, endpoint } = this;
    if (!ctx.peers.mayReplace(peer)) {
      this.refuseReplacement(peer);
      return;
    }
    const session: Session = { peer, connection, endpoint, routes };
    connection.counters = peer.counters;
    this.session = session;
    const previous = ctx.peers.open(session);
    previous?.connection.close(CloseCode.Replaced, `replaced by a new connection from ${endpoint}`);
    connection.setMaxPayload(DEFAULT_MAX_PAYLOAD);
    const offload = offered && ctx.forwarder.offloads;
    if (offload) connection.agreeOffloads();
    ctx.forwarder.sessionOpened(session);
    connection.sendControl(FrameType.Welcome, encodeWelcome({ ...ctx.welcome, routes: routes.map(String), offload }));
    connection.startKeepalive();
    ctx.log.info(
      { peer: peer.config.name, endpoint, routes: routes.map(String), replaced: previous !== undefined },
      'peer connected',
    );
    ctx.observer?.connected?.(peer.config.name);
  }

  /**
   * The key replaced its live session too often (peers.ts mayReplace): the live session stays,
   * this connection is refused. The node is not told to exit; it redials with backoff.
   */
  private refuseReplacement(peer: PeerState): void {
    const { name } = peer.config;
    const current = peer.session?.endpoint ?? '?';
    const detail =
      `peer "${name}" already has a session (from ${current}) and its key replaced sessions too often: ` +
      `that session stays; if two machines use this key, give each its own`;
    this.ctx.log.warn({ peer: name, endpoint: this.endpoint, current, reason: 'replace_limited' }, 'peer refused');
    this.ctx.observer?.handshakeFailed?.('replace_limited', name, detail);
    this.rejected = true;
    this.connection.close(CloseCode.ReplaceLimited, detail, FrameType.Reject);
  }

  /** Tells the node why not (it exits) and counts the rejection under its precise reason. */
  private reject(err: unknown): void {
    const reason: HandshakeFailure = err instanceof AuthError && isReason(REJECTIONS, err.code) ? err.code : 'internal';
    const code = reason === 'route_not_allowed' ? CloseCode.RouteNotAllowed : CloseCode.AuthFailed;
    const detail = err instanceof NodelinkError ? err.message : `handshake failed: ${(err as Error).message}`;
    this.ctx.log.warn({ endpoint: this.endpoint, reason: closeCodeName(code), detail }, 'peer rejected');
    this.ctx.observer?.handshakeFailed?.(reason);
    this.rejected = true;
    this.connection.close(code, detail, FrameType.Reject);
  }

  private onClose(code: CloseCode, reason: string, byPeer: boolean): void {
    const { ctx } = this;
    clearTimeout(this.deadline);
    ctx.release(this.socket, this.endpoint);
    if (this.session) {
      const { peer } = this.session;
      ctx.peers.close(this.session);
      ctx.forwarder.sessionClosed(this.session);
      ctx.log.info(
        { peer: peer.config.name, endpoint: this.endpoint, code: closeCodeName(code), reason, byPeer },
        'peer disconnected',
      );
      ctx.observer?.disconnected?.(peer.config.name, closeCodeName(code));
      return;
    }
    if (this.rejected) return;
    const failure = this.failure ?? (code === CloseCode.Normal ? 'aborted' : closeCodeName(code));
    ctx.log[failure === 'aborted' ? 'debug' : 'info'](
      { endpoint: this.endpoint, reason: failure, detail: reason },
      'handshake failed',
    );
    ctx.observer?.handshakeFailed?.(failure);
  }
}

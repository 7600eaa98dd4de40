import { encodeKey, type HelloBody } from '../auth/index.js';
import { CloseCode, closeCodeName, type Welcome } from '../protocol/index.js';
import { Prefix, PrefixTable, checkPacket, formatEndpoint } from '../routing/index.js';
import type { TunDevice } from '../tun/index.js';
import type { DaemonStatus, PeerStatus, ReplicaStatus } from '../admin/index.js';
import { TrafficCounters, trafficStatus } from '../link/counters.js';
import type { LinkObserver } from '../link/observer.js';
import type { HandshakeFailure } from '../reasons.js';
import { userMessage } from '../errors.js';
import { ReplyFlows, DEFAULT_REPLY_FLOWS, type ReplyFlowOptions } from './reply-flows.js';
import { DialPolicy, ReplicaSet, type DialOutcome } from './replica-set.js';
import { ClientSession, type SessionOptions, type SessionTicket } from './session.js';

export interface LinkClientOptions extends SessionOptions {
  readonly name: string;
  readonly routes: readonly Prefix[];
  readonly tun: TunDevice;
  readonly backoffBaseMs: number;
  readonly backoffCapMs: number;
  /** Largest wait between dials looking for replicas not held yet (--replica-search-cap-ms). */
  readonly replicaSearchCapMs?: number;
  /** A replica whose session ended this long ago is forgotten (--replica-forget-ms). */
  readonly replicaForgetMs?: number;
  /** Size and idle time of the table that sends replies back to the replica that asked. */
  readonly replyFlows?: ReplyFlowOptions;
  /**
   * Routes the server's tunnel CIDRs into the TUN; injected so unit tests run without root.
   * `serverAddress` is the address the welcoming session reached the server at: no route may cover it.
   */
  readonly installRoutes: (cidrs: readonly Prefix[], serverAddress: string | undefined) => Promise<void>;
  /** The server refused us for a reason that retrying cannot fix (unknown key, route not allowed). */
  readonly onRejected: (reason: string) => void;
  /** Per-event hooks (metrics): connect, handshake failure, disconnect, pong. */
  readonly observer?: LinkObserver;
  /** This server's name in status and metrics (default 'server'; one per server when there are several). */
  readonly peerName?: string;
  /**
   * Kubernetes mode: the projected service-account token, read anew for every hello (the kubelet
   * rotates the file). Throwing fails this dial, which is retried with backoff.
   */
  readonly token?: () => string;
  /**
   * Kubernetes mode without --route: announce nothing and carry the routes the server grants
   * (the Node object's), as the Welcome lists them; `onRoutes` hears each new set.
   */
  readonly routesFromServer?: boolean;
  readonly onRoutes?: (routes: readonly Prefix[]) => void;
}

export const DEFAULT_REPLICA_SEARCH_CAP_MS = 10_000;
export const DEFAULT_REPLICA_FORGET_MS = 60_000;

/** A server replica the node knows: held (a session) or missing (until it is forgotten). */
interface Replica {
  readonly id: string;
  readonly slot: number;
  /** Its name in status and metrics. */
  readonly peerName: string;
  /** Traffic with this replica, across its sessions. */
  readonly counters: TrafficCounters;
  session: ClientSession | undefined;
  endpoint: string;
  presentedIdentity: string | undefined;
}

/**
 * The node side of one server address: dials out (the control plane never dials in),
 * authenticates, and pumps packets between the TUN and the sessions.
 *
 * Behind the address may run several server replicas (each names itself and says how many there
 * are in its welcome; see replica-set.ts). The client dials the address again until it holds one
 * session per replica, and keeps doing so as they come and go. A dial that lands on a replica it
 * holds is refused by that replica (already_held, from the hello's list) and is no failure.
 *
 * Replicas share one tunnel address, so packets the node sends go by flow (reply-flows.ts): to
 * the replica whose session the flow came in on, or, for a flow the node opened or one nobody
 * remembers, to the primary replica (held the longest). A flow whose replica is missing is
 * dropped (replica_offline): its sender will retransmit once the session is back. With no
 * session at all, packets are dropped (disconnected).
 */
export class LinkClient {
  // Static after construction.
  private readonly counters = new TrafficCounters(); // drops before any replica is chosen
  private readonly startedAt = new Date();
  private readonly replicas: ReplicaSet;
  private readonly policy: DialPolicy;
  private readonly flows: ReplyFlows;
  // Replaced together by setRoutes; ownRoutes is read per packet.
  private routes!: readonly Prefix[]; // what the hello announces
  private ownRoutes!: PrefixTable<true>; // the same, to check each packet's source against
  // The replicas by slot, and the one that takes flows nobody remembers.
  private readonly bySlot: Array<Replica | undefined> = [];
  private offloadsOn = false; // the TUN's offloads, as last set
  private primary: Replica | undefined;
  /** More than one replica is known: flows must be told apart. */
  private several = false;
  // The dial loop: at most one dial in flight, then a wait chosen by the policy.
  private dialing: ClientSession | undefined;
  private dialTimer: NodeJS.Timeout | undefined;
  private dialAt = Infinity;
  private expiryTimer: NodeJS.Timeout | undefined;
  private stopped = false; // stop() was called, or the server rejected this node
  // What the welcomes said, for status and the routes into the TUN.
  private tunnelCidrs: readonly string[] = [];
  private serverAddresses: readonly string[] = [];
  private installedCidrs = ''; // the tunnel CIDRs last routed into the TUN, joined
  private lastEndpoint: string | null = null;
  private lastIdentity: string | undefined;
  /** The newest ticket a trusted server gave: the next dial resumes with it, cheaper at both ends. */
  private ticket: SessionTicket | undefined;

  constructor(private readonly options: LinkClientOptions) {
    this.useRoutes(options.routes);
    this.replicas = new ReplicaSet(options.replicaForgetMs ?? DEFAULT_REPLICA_FORGET_MS);
    this.policy = new DialPolicy({
      baseMs: options.backoffBaseMs,
      capMs: options.backoffCapMs,
      searchCapMs: options.replicaSearchCapMs ?? DEFAULT_REPLICA_SEARCH_CAP_MS,
    });
    this.flows = new ReplyFlows(options.replyFlows ?? DEFAULT_REPLY_FLOWS);
  }

  /** The routes this node announces, and the table its packets' sources are checked against. */
  private useRoutes(routes: readonly Prefix[]): void {
    const table = new PrefixTable<true>();
    for (const route of routes) table.insert(route, true);
    this.routes = routes;
    this.ownRoutes = table;
  }

  start(): void {
    this.options.tun.onPacket((packet, offload) => this.onTunPacket(packet, offload));
    this.dial();
  }

  /**
   * Replaces the routes this node announces (its Node object changed) and closes every session,
   * so the client redials and each replica authorizes the new set from a fresh hello.
   */
  setRoutes(routes: readonly Prefix[]): void {
    this.useRoutes(routes);
    for (const replica of this.bySlot)
      replica?.session?.close(CloseCode.Normal, 'announced routes changed: reconnecting to announce them');
  }

  /** The routes this node announces now (setRoutes changes them). */
  get announcedRoutes(): readonly Prefix[] {
    return this.routes;
  }

  get peerName(): string {
    return this.options.peerName ?? 'server';
  }

  /** The node holds a session to at least one replica. */
  get isAuthenticated(): boolean {
    return this.primary !== undefined;
  }

  /** The node holds a session to every replica the count says there are. */
  get holdsEveryReplica(): boolean {
    return this.replicas.complete;
  }

  async stop(): Promise<void> {
    this.stopped = true;
    if (this.dialTimer) clearTimeout(this.dialTimer);
    if (this.expiryTimer) clearTimeout(this.expiryTimer);
    this.dialing?.close(CloseCode.Normal, 'node is shutting down');
    for (const replica of this.bySlot) replica?.session?.close(CloseCode.Normal, 'node is shutting down');
  }

  // ---- the dial loop --------------------------------------------------------------------------

  private dial(): void {
    this.dialTimer = undefined;
    this.dialAt = Infinity;
    if (this.stopped || this.dialing) return;
    const { options } = this;
    this.dialing = new ClientSession(options, {
      hello: (): HelloBody => ({
        name: options.name,
        routes: options.routesFromServer ? [] : this.routes.map(String),
        held: this.replicas.heldIds(),
        ...(options.token ? { token: options.token() } : {}),
        ...(options.tun.offloads ? { offload: true } : {}),
      }),
      welcomed: (session, welcome) => this.onWelcome(session, welcome),
      data: (session, packet, offload) => this.onServerPacket(session, packet, offload),
      closed: (session, code, reason, byPeer, failure) => this.onClosed(session, code, reason, byPeer, failure),
      pong: (session, rttMs) => {
        const replica = this.replicaOf(session);
        if (replica) options.observer?.pong?.(replica.peerName, rttMs);
      },
      resume: () => this.ticket,
      ticket: (_session, ticket) => {
        this.ticket = ticket;
      },
    });
  }

  /**
   * Dials after the policy's delay, or sooner if a dial is already due sooner. Returns the wait
   * until the next dial, or undefined when none is needed (for the log line that says so).
   */
  private scheduleDial(outcome: DialOutcome, sessionMs?: number): number | undefined {
    if (this.stopped) return undefined;
    const delay = this.policy.next(this.replicas, outcome, sessionMs);
    if (delay === undefined || this.dialing) return undefined;
    const at = Date.now() + delay;
    if (at >= this.dialAt) return this.dialAt - Date.now();
    if (this.dialTimer) clearTimeout(this.dialTimer);
    this.dialAt = at;
    this.dialTimer = setTimeout(() => this.dial(), delay);
    return delay;
  }

  private onWelcome(session: ClientSession, welcome: Welcome): void {
    const { options } = this;
    this.dialing = undefined;
    if (options.routesFromServer && !this.adoptGrantedRoutes(session, welcome)) return;
    const now = Date.now();
    const slot = this.replicas.admit(welcome.serverId, welcome.serverCount, now);
    if (typeof slot !== 'number') {
      // A server that does not read the hello's list, or more replicas than we keep.
      session.close(
        CloseCode.AlreadyHeld,
        slot === 'already_held'
          ? `this node already holds a session to server ${welcome.serverId}`
          : 'this node holds sessions to as many server replicas as it keeps',
      );
      return;
    }
    const replica = this.replicaIn(slot, welcome.serverId);
    replica.session = session;
    replica.endpoint = session.endpoint;
    replica.presentedIdentity = session.presentedIdentity;
    this.lastEndpoint = session.endpoint;
    this.lastIdentity = session.presentedIdentity;
    session.connection.counters = replica.counters;
    this.several = this.replicas.count > 1 || this.replicas.list().length > 1;
    this.choosePrimary();
    this.tunnelCidrs = welcome.tunnelCidrs;
    this.serverAddresses = welcome.serverAddresses;
    options.log.info(
      {
        server: session.endpoint,
        serverId: welcome.serverId || undefined,
        replicas: `${this.replicas.held}/${this.replicas.count}`,
        tunnelCidrs: welcome.tunnelCidrs,
        resumed: session.resumed,
      },
      'connected to server',
    );
    options.observer?.connected?.(replica.peerName);
    this.scheduleDial('new_replica');
    void this.installTunnelRoutes(session, welcome);
  }

  /** Kubernetes mode without --route: this node carries what the server granted (its Node's routes). */
  private adoptGrantedRoutes(session: ClientSession, welcome: Welcome): boolean {
    const granted = welcome.routes?.map((cidr) => Prefix.parse(cidr)) ?? [];
    if (granted.length === 0) {
      session.close(CloseCode.ProtocolError, 'the server granted this node no routes: check its Node object');
      return false;
    }
    if (granted.map(String).join() !== this.routes.map(String).join()) {
      this.useRoutes(granted);
      this.options.log.info({ routes: granted.map(String) }, 'routes granted by the server (the Node object)');
      this.options.onRoutes?.(granted);
    }
    return true;
  }

  private async installTunnelRoutes(session: ClientSession, welcome: Welcome): Promise<void> {
    const key = welcome.tunnelCidrs.join(',');
    if (key === this.installedCidrs) return;
    try {
      await this.options.installRoutes(
        welcome.tunnelCidrs.map((cidr) => Prefix.parse(cidr)),
        session.remoteAddress,
      );
      this.installedCidrs = key;
      this.options.log.info(
        { routes: welcome.tunnelCidrs, dev: this.options.tun.name },
        'routes to the control plane installed',
      );
    } catch (err) {
      this.options.log.error({ err: userMessage(err) }, 'cannot install routes to the control plane');
      session.close(CloseCode.Internal, 'node could not install its routes');
    }
  }

  private onClosed(
    session: ClientSession,
    code: CloseCode,
    reason: string,
    byPeer: boolean,
    failure: HandshakeFailure,
  ): void {
    const { options } = this;
    if (this.dialing === session) this.dialing = undefined;
    const replica = this.replicaOf(session);
    const rejected = byPeer && (code === CloseCode.AuthFailed || code === CloseCode.RouteNotAllowed);
    if (replica) {
      replica.session = undefined;
      this.replicas.lost(replica.id, Date.now());
      this.choosePrimary();
      this.scheduleExpiry();
      if (!this.stopped) options.observer?.disconnected?.(replica.peerName, closeCodeName(code));
      const shutdown = byPeer && code === CloseCode.ServerShutdown;
      const retryInMs = rejected
        ? undefined
        : this.scheduleDial(shutdown ? 'shutdown' : 'lost', Date.now() - session.welcomedAt);
      options.log[this.stopped ? 'info' : 'warn'](
        { server: session.endpoint, serverId: replica.id || undefined, code: failure, reason, byPeer, retryInMs },
        'disconnected from server',
      );
      if (!rejected) return;
    }
    if (this.stopped) return;
    if (rejected) {
      // Retrying cannot fix this (a key or route the server no longer allows): the node exits.
      if (!replica) options.observer?.handshakeFailed?.(failure, this.peerName, reason);
      this.stopped = true;
      this.dialing?.close(CloseCode.Normal, 'node is shutting down');
      options.onRejected(reason);
      return;
    }
    if (code === CloseCode.AlreadyHeld) {
      // The load balancer sent this dial to a replica the node holds: look again, no failure.
      options.log.debug({ server: session.endpoint, reason }, 'dial reached a server replica already held');
      this.scheduleDial('already_held');
      return;
    }
    options.observer?.handshakeFailed?.(failure, this.peerName, reason);
    const retryInMs = this.scheduleDial(failure === 'connection_refused' ? 'refused' : 'failed');
    options.log.warn({ server: session.endpoint, code: failure, reason, byPeer, retryInMs }, 'dial to server failed');
  }

  private scheduleExpiry(): void {
    if (this.expiryTimer || this.stopped) return;
    const at = this.replicas.nextExpiry();
    if (at === undefined) return;
    this.expiryTimer = setTimeout(
      () => {
        this.expiryTimer = undefined;
        for (const gone of this.replicas.expire(Date.now())) {
          this.flows.forget(gone.slot);
          this.bySlot[gone.slot] = undefined;
          this.options.log.info({ serverId: gone.id || undefined }, 'server replica forgotten: gone too long');
        }
        this.several = this.replicas.count > 1 || this.replicas.list().length > 1;
        this.scheduleExpiry();
        // A count lowered by the forgotten replica may leave nothing to look for, or a held set
        // complete; otherwise the search goes on as it was.
      },
      Math.max(0, at - Date.now()) + 1,
    );
  }

  /** The replica record for a newly admitted slot: the same one if the replica came back. */
  private replicaIn(slot: number, id: string): Replica {
    const known = this.bySlot[slot];
    if (known && known.id === id) return known;
    const base = this.peerName;
    const replica: Replica = {
      id,
      slot,
      peerName: id && this.replicas.count > 1 ? `${base} ${id}` : base,
      counters: new TrafficCounters(),
      session: undefined,
      endpoint: '',
      presentedIdentity: undefined,
    };
    this.bySlot[slot] = replica;
    return replica;
  }

  private replicaOf(session: ClientSession): Replica | undefined {
    for (const replica of this.bySlot) if (replica?.session === session) return replica;
    return undefined;
  }

  /** The held replica with the oldest session takes flows nobody remembers. */
  private choosePrimary(): void {
    let primary: Replica | undefined;
    let since = Infinity;
    for (const info of this.replicas.list()) {
      const replica = this.bySlot[info.slot];
      if (info.connected && replica?.session && info.since < since) {
        primary = replica;
        since = info.since;
      }
    }
    this.primary = primary;
    this.updateOffloads();
  }

  /** The TUN's offloads are on while every held session agreed to them (tun/device.ts). */
  private updateOffloads(): void {
    let on = this.options.tun.offloads === true;
    for (const replica of this.bySlot) if (replica?.session && !replica.session.connection.offloads) on = false;
    if (on === this.offloadsOn) return;
    this.offloadsOn = on;
    this.options.tun.setOffloads?.(on);
  }

  // ---- the data path --------------------------------------------------------------------------

  private onServerPacket(session: ClientSession, packet: Buffer, offload: number): void {
    const counters = session.connection.counters;
    if (checkPacket(packet) !== null) {
      counters.drop('malformed');
      return;
    }
    if (this.several) {
      const replica = this.replicaOf(session);
      if (replica) this.flows.learn(packet, replica.slot, Date.now());
    }
    if (!this.options.tun.write(packet, offload)) counters.drop('tun_error');
  }

  private onTunPacket(packet: Buffer, offload = 0): void {
    const primary = this.primary;
    if (!primary) {
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
    let replica = primary;
    if (this.several) {
      const slot = this.flows.lookup(packet, Date.now());
      if (slot >= 0) {
        const owner = this.bySlot[slot];
        if (!owner?.session) {
          (owner?.counters ?? this.counters).drop('replica_offline');
          return;
        }
        replica = owner;
      }
    }
    replica.session!.connection.sendData(packet, offload);
  }

  // ---- status ---------------------------------------------------------------------------------

  status(): DaemonStatus {
    const peers: PeerStatus[] = [];
    const known = this.bySlot.filter((replica): replica is Replica => replica !== undefined);
    const pinned = this.options.serverKey ? encodeKey(this.options.serverKey) : undefined;
    for (const replica of known) {
      const connection = replica.session?.isWelcomed ? replica.session.connection : undefined;
      peers.push({
        name: replica.peerName,
        publicKey: pinned ?? replica.presentedIdentity ?? '',
        connected: connection !== undefined,
        endpoint: connection ? replica.endpoint : formatEndpoint(this.options),
        routes: [...this.tunnelCidrs],
        ...trafficStatus(replica.counters, connection),
      });
    }
    if (peers.length === 0) {
      peers.push({
        name: this.peerName,
        publicKey: pinned ?? this.lastIdentity ?? '',
        connected: false,
        endpoint: this.lastEndpoint ?? formatEndpoint(this.options),
        routes: [...this.tunnelCidrs],
        ...trafficStatus(new TrafficCounters(), undefined),
      });
    }
    // Drops before a replica was chosen: the one peer's, when there is one; the node's otherwise.
    if (peers.length === 1) addDrops(peers[0]!, this.counters);
    return {
      role: 'client',
      tun: this.options.tun.name,
      name: this.options.name,
      tunnelAddress: null,
      tunnelAddresses: [],
      startedAt: this.startedAt.toISOString(),
      dropsByReason: peers.length === 1 ? {} : this.counters.dropsByReason(),
      peers,
      replicas: [this.replicaStatus()],
    };
  }

  /** Which replicas behind this address the node holds and misses. */
  replicaStatus(): ReplicaStatus {
    const list = this.replicas.list();
    return {
      server: formatEndpoint(this.options),
      count: this.replicas.count,
      held: list.filter((replica) => replica.connected).map((replica) => replica.id),
      missing: list
        .filter((replica) => !replica.connected)
        .map((replica) => ({ id: replica.id, since: new Date(replica.since).toISOString() })),
      unseen: this.replicas.unseen,
      complete: this.replicas.complete,
      flows: this.flowCount(),
    };
  }

  private flowCount(): number {
    let total = 0;
    for (const count of this.flows.countByReplica(Date.now()).values()) total += count;
    return total;
  }

  /** The addresses the server owns in the tunnel (what nodes see as the source). */
  get serverTunnelAddresses(): readonly string[] {
    return this.serverAddresses;
  }
}

function addDrops(peer: PeerStatus, counters: TrafficCounters): void {
  for (const [reason, count] of counters.drops) {
    peer.dropsByReason[reason] = (peer.dropsByReason[reason] ?? 0) + count;
    peer.drops += count;
  }
}

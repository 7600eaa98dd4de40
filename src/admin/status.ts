import type { DropReason, Refusal } from '../reasons.js';
import type { DebugStatus } from './debug.js';
import type { EndpointStatus } from './endpoint.js';

/** The status document, served by each daemon on its admin socket and printed by `nodelink status`. */
export interface PeerStatus {
  name: string;
  publicKey: string;
  connected: boolean;
  endpoint: string | null;
  routes: string[];
  /** Routes the peers file allows (server side); the announced ones are `routes`. */
  allowedIPs?: string[];
  connectedSince: string | null;
  lastPongMs: number | null;
  rxBytes: number;
  txBytes: number;
  rxPackets: number;
  txPackets: number;
  drops: number;
  dropsByReason: Partial<Record<DropReason, number>>;
  queuedBytes: number;
  /** Server: sessions of this peer replaced by a newer connection with its key. */
  replacements?: number;
  /** Server: connections with its key refused because it replaced its session too often (replace_limited). */
  replacementsRefused?: number;
  // ---- filled in by the daemon's observability wiring (src/cli/observe.ts) ----
  /** When the last keepalive pong arrived (ISO-8601); null before the first. */
  lastPongAt?: string | null;
  /** Sessions established with this peer since start; reconnects are those after the first. */
  handshakes?: number;
  reconnects?: number;
  /** Why the last handshake failed or the last session ended, if it did. */
  lastError?: string | null;
  /** Every route with its state in the forwarding table and in the kernel. */
  routeStates?: RouteState[];
  /** Server: the data path to the node checked end to end through the TUN. */
  path?: PathHealth;
  /** Server with --workers: the worker holding its session (null while it has none). */
  worker?: number | null;
}

/** Server with --workers: one worker process, its TUN and what it holds. */
export interface WorkerStatus {
  index: number;
  /** Its process ID; null between a crash and its restart. */
  pid: number | null;
  tun: string;
  /** `running` answered this status; `starting` not ready yet; `unresponsive` did not answer in time. */
  state: 'running' | 'starting' | 'unresponsive';
  sessions: number;
  /** How often the primary started it again after it died. */
  restarts: number;
}

/**
 * `active` announced by the connected peer; `offline` authorized, peer not connected (traffic
 * is dropped and answered with ICMP unreachable); `not_announced` peer connected but did not
 * announce it; `installed` (client) the tunnel CIDR is routed into the TUN; `missing` the
 * kernel has no route for it on the TUN, so its traffic goes elsewhere.
 */
export interface RouteState {
  route: string;
  state: 'active' | 'offline' | 'not_announced' | 'installed' | 'missing';
  /** Whether the kernel routes it into the TUN; null when that could not be read. */
  kernel: boolean | null;
}

/** Result of the periodic end-to-end check: a TCP connect to the node IP through the TUN. */
export interface PathHealth {
  state: 'ok' | 'failing' | 'unknown';
  /** ADDRESS:PORT probed (the node IP the peer announced). */
  target: string | null;
  checkedAt: string | null;
  lastOkAt: string | null;
  /** Connect time of the last successful check. */
  rttMs: number | null;
  error: string | null;
  checks: number;
  failures: number;
}

/** Client: the server replicas behind one --server address, as this node knows them. */
export interface ReplicaStatus {
  /** The address dialed (HOST:PORT). */
  server: string;
  /** The replica count the replicas announced (the highest); 0 before any welcome. */
  count: number;
  /** Server IDs of the replicas this node holds a session to. */
  held: string[];
  /** Replicas whose session ended, not yet forgotten, and when it ended (ISO-8601). */
  missing: Array<{ id: string; since: string }>;
  /** Replicas the count says exist that this node has never reached (or has forgotten). */
  unseen: number;
  /** A session to every replica the count says there are. */
  complete: boolean;
  /** Flows whose replies go back to a replica they came from. */
  flows: number;
}

export interface FlowFilterStatus {
  active: boolean;
  /** e.g. `inet nodelink_nl0`; null when not active. */
  table: string | null;
  /** Tracked flows toward one node before the control plane's next one is refused. */
  maxFlowsPerNode: number | null;
}

export interface DaemonStatus {
  role: 'server' | 'client';
  tun: string;
  tunnelAddress: string | null;
  tunnelAddresses: string[];
  listen?: string;
  name?: string;
  startedAt: string;
  /** Drops not attributable to one peer (unknown destination, malformed from the TUN). */
  dropsByReason: Partial<Record<DropReason, number>>;
  /** Server: connections it gave up on before their hello, by reason (REFUSALS in src/reasons.ts). */
  refusedConnections?: Partial<Record<Refusal, number>>;
  peers: PeerStatus[];
  /** Client: its own public key, the server it dials and the server's tunnel addresses. */
  publicKey?: string;
  server?: string;
  serverTunnelAddresses?: string[];
  /** Client: per --server address, the replicas behind it that it holds and misses. */
  replicas?: ReplicaStatus[];
  /** Server: this replica's name and the replica count it tells nodes (--server-id, --server-count). */
  serverId?: string;
  serverCount?: number;
  /** Client: the routes it announces (node IP, pod CIDRs). */
  announcedRoutes?: string[];
  /**
   * Server: whether packets from nodes that open a flow are dropped (the default) and by which
   * nftables table; `active` false under --allow-node-initiated.
   */
  flowFilter?: FlowFilterStatus;
  /** HOST:PORT of the Prometheus / health endpoint, when --metrics is set. */
  metrics?: string;
  /** The metrics endpoint and the admin socket: serving, or failed and retried (the link runs either way). */
  endpoints?: EndpointStatus[];
  /** Server with --workers: the worker processes, each with its own TUN. */
  workers?: WorkerStatus[];
  /** Process counts for leak checks: fds, timers, sessions (see debug.ts). */
  debug?: DebugStatus;
}

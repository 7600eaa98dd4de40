import { Counter, Gauge, Histogram, Registry, collectDefaultMetrics, type LabelValues } from 'prom-client';
import {
  CLOSE_REASONS,
  DROP_REASONS,
  HANDSHAKE_FAILURES,
  type CloseReason,
  type HandshakeFailure,
} from '../reasons.js';
import { PeerEventLog, type PeerEvents } from './peer-events.js';
import type { DaemonStatus, PathHealth, PeerStatus, ReplicaStatus } from './status.js';

/** Seconds; keepalive round trips from a LAN (sub-ms) to a congested WAN link (seconds). */
const RTT_BUCKETS = [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5];

/** A scrape reads status once even though many collect() callbacks need it. */
const SNAPSHOT_MS = 200;

/** What a metric read at scrape time reads from. */
interface Sources {
  /** The daemon's status, one snapshot per scrape. */
  status(): DaemonStatus;
  readonly events: PeerEventLog;
  /** Server: each node's last path check. */
  readonly paths: ReadonlyMap<string, PathHealth>;
}

type Sample = [labels: LabelValues<string>, value: number];

/** A metric whose every series is read from Sources at scrape time. */
interface ScrapedMetric {
  readonly name: string;
  readonly help: string;
  readonly type: 'gauge' | 'counter';
  readonly labels?: readonly string[];
  /** Registered only by this role: the server checks paths, a client holds server replicas. */
  readonly only?: 'server' | 'client';
  read(from: Sources): Sample[];
}

/** One series per peer in status, labelled `peer`; a peer whose value is undefined has none. */
function perPeer(value: (peer: PeerStatus, from: Sources) => number | null | undefined) {
  return (from: Sources): Sample[] => {
    const samples: Sample[] = [];
    for (const peer of from.status().peers) {
      const v = value(peer, from);
      if (v !== undefined && v !== null) samples.push([{ peer: peer.name }, v]);
    }
    return samples;
  };
}

/** One series per peer with a last path check, where `value` says one. */
function perPath(value: (health: PathHealth) => number | undefined) {
  return (from: Sources): Sample[] => {
    const samples: Sample[] = [];
    for (const [peer, health] of from.paths) {
      const v = value(health);
      if (v !== undefined) samples.push([{ peer }, v]);
    }
    return samples;
  };
}

/** One series per server address a client dials, labelled `server`. */
function perServerAddress(value: (entry: ReplicaStatus) => number) {
  return (from: Sources): Sample[] =>
    (from.status().replicas ?? []).map((entry): Sample => [{ server: entry.server }, value(entry)]);
}

const SCRAPED: readonly ScrapedMetric[] = [
  {
    name: 'nodelink_peers',
    help: 'Peers known to this daemon (server: peers file entries; client: its servers, one per server replica).',
    type: 'gauge',
    read: (from) => [[{}, from.status().peers.length]],
  },
  {
    name: 'nodelink_peers_connected',
    help: 'Peers with an authenticated session right now.',
    type: 'gauge',
    read: (from) => [[{}, from.status().peers.filter((peer) => peer.connected).length]],
  },
  {
    name: 'nodelink_peer_connected',
    help: 'Whether the peer has an authenticated session (1) or not (0).',
    type: 'gauge',
    labels: ['peer'],
    read: perPeer((peer) => (peer.connected ? 1 : 0)),
  },
  {
    name: 'nodelink_peer_receive_bytes_total',
    help: 'IP packet bytes received from the peer over the link.',
    type: 'counter',
    labels: ['peer'],
    read: perPeer((peer) => peer.rxBytes),
  },
  {
    name: 'nodelink_peer_transmit_bytes_total',
    help: 'IP packet bytes sent to the peer over the link.',
    type: 'counter',
    labels: ['peer'],
    read: perPeer((peer) => peer.txBytes),
  },
  {
    name: 'nodelink_peer_receive_packets_total',
    help: 'IP packets received from the peer over the link.',
    type: 'counter',
    labels: ['peer'],
    read: perPeer((peer) => peer.rxPackets),
  },
  {
    name: 'nodelink_peer_transmit_packets_total',
    help: 'IP packets sent to the peer over the link.',
    type: 'counter',
    labels: ['peer'],
    read: perPeer((peer) => peer.txPackets),
  },
  {
    name: 'nodelink_dropped_packets_total',
    help: `Packets dropped, by reason (${DROP_REASONS.join(', ')}); peer is empty when no peer is to blame.`,
    type: 'counter',
    labels: ['peer', 'reason'],
    read: (from) => {
      const status = from.status();
      const samples: Sample[] = [];
      for (const [reason, count] of Object.entries(status.dropsByReason)) samples.push([{ peer: '', reason }, count]);
      for (const peer of status.peers) {
        for (const [reason, count] of Object.entries(peer.dropsByReason))
          samples.push([{ peer: peer.name, reason }, count]);
      }
      return samples;
    },
  },
  {
    name: 'nodelink_peer_replacements_total',
    help: "Server: sessions of the peer replaced by a newer connection with the peer's key.",
    type: 'counter',
    labels: ['peer'],
    read: perPeer((peer) => peer.replacements),
  },
  {
    name: 'nodelink_peer_replacements_refused_total',
    help: "Server: connections with the peer's key refused because it replaced its session too often (replace_limited).",
    type: 'counter',
    labels: ['peer'],
    read: perPeer((peer) => peer.replacementsRefused),
  },
  {
    name: 'nodelink_peer_queued_bytes',
    help: "Bytes waiting in the peer's TLS stream (send queue depth; data, Pings and Pongs are dropped past --max-queue-bytes).",
    type: 'gauge',
    labels: ['peer'],
    read: perPeer((peer) => peer.queuedBytes),
  },
  {
    name: 'nodelink_peer_routes',
    help: 'Routes the peer announced in its current session.',
    type: 'gauge',
    labels: ['peer'],
    read: perPeer((peer) => (peer.connected ? peer.routes.length : 0)),
  },
  {
    name: 'nodelink_peer_rtt_seconds',
    help: 'Round trip of the last keepalive ping to the peer.',
    type: 'gauge',
    labels: ['peer'],
    read: perPeer((peer, from) => {
      const rtt = peer.connected ? from.events.get(peer.name)?.lastRttMs : undefined;
      return rtt === undefined || rtt === null ? undefined : rtt / 1000;
    }),
  },
  {
    name: 'nodelink_peer_last_pong_timestamp_seconds',
    help: 'Unix time of the last keepalive pong from the peer.',
    type: 'gauge',
    labels: ['peer'],
    read: (from) =>
      [...from.events.entries()]
        .filter(([, record]) => record.lastPongAt !== null)
        .map(([peer, record]): Sample => [{ peer }, record.lastPongAt! / 1000]),
  },
  {
    name: 'nodelink_path_up',
    help: 'Whether the last end-to-end path check to the node passed (1) or failed (0); absent before the first check.',
    type: 'gauge',
    labels: ['peer'],
    only: 'server',
    read: perPath((health) => (health.state === 'unknown' ? undefined : health.state === 'ok' ? 1 : 0)),
  },
  {
    name: 'nodelink_path_check_duration_seconds',
    help: 'How long the last successful path check took to connect through the link.',
    type: 'gauge',
    labels: ['peer'],
    only: 'server',
    read: perPath((health) => (health.state === 'ok' && health.rttMs !== null ? health.rttMs / 1000 : undefined)),
  },
  // Server replicas are counted per server address, never labelled by server ID: a replica
  // names itself anew at every start, so such series would pile up with each restart.
  {
    name: 'nodelink_server_count',
    help: 'Server: the replica count it tells nodes (--server-count); each node holds a session to this many.',
    type: 'gauge',
    only: 'server',
    read: (from) => [[{}, from.status().serverCount ?? 1]],
  },
  {
    name: 'nodelink_replicas_held',
    help: 'Client: server replicas behind the server address that this node holds a session to.',
    type: 'gauge',
    labels: ['server'],
    only: 'client',
    read: perServerAddress((entry) => entry.held.length),
  },
  {
    name: 'nodelink_replicas_expected',
    help: 'Client: server replicas behind the server address, as their welcomes count them; 0 before any welcome.',
    type: 'gauge',
    labels: ['server'],
    only: 'client',
    read: perServerAddress((entry) => entry.count),
  },
];

export interface LinkMetricsOptions {
  readonly role: 'server' | 'client';
  readonly version: string;
  /** The daemon's status, read at scrape time. Must be cheap and synchronous. */
  readonly status: () => DaemonStatus;
  /** Where the link's events are recorded; its own log when not given. */
  readonly events?: PeerEventLog;
  /** Reads what status() takes from outside the process (kernel counters) before a scrape. */
  readonly refresh?: () => Promise<void>;
  /** Current readiness for the `nodelink_ready` gauge. */
  readonly ready?: () => Promise<boolean>;
  /** Process and Node.js runtime metrics (default true; tests turn them off for speed). */
  readonly processMetrics?: boolean;
}

/**
 * Prometheus metrics of one daemon (prom-client), all named `nodelink_…`.
 *
 * Two kinds of sources, and nothing on the data path:
 * - traffic (bytes, packets, drops, queue depth, peers), the event log's last pongs and the last
 *   path checks are read at scrape time, as the SCRAPED table says, from the daemon's status
 *   (the counters the link keeps anyway) and the PeerEventLog;
 * - events (handshakes, failures, disconnects, pongs, path checks) arrive through the
 *   LinkObserver methods below, a few per peer per keepalive interval at most. Their reason
 *   labels come from src/reasons.ts.
 *
 * Each event is recorded in the PeerEventLog (status and readiness read it there) before it is
 * counted. Path metrics exist only on the server, which checks paths.
 */
export class LinkMetrics {
  readonly registry = new Registry();
  readonly events: PeerEventLog;
  private snapshot: { at: number; status: DaemonStatus } | undefined;
  private readonly lastPath = new Map<string, PathHealth>();

  private readonly handshakes: Counter<'peer'>;
  private readonly handshakeFailures: Counter<'reason'>;
  private readonly reconnects: Counter<'peer'>;
  private readonly disconnects: Counter<'peer' | 'reason'>;
  private readonly rtt: Histogram<'peer'>;
  /** Server only. */
  private readonly pathChecks: Counter<'peer' | 'result'> | undefined;

  constructor(private readonly options: LinkMetricsOptions) {
    this.events = options.events ?? new PeerEventLog();
    const registers = [this.registry];
    const server = options.role === 'server';
    const sources: Sources = { status: () => this.status(), events: this.events, paths: this.lastPath };

    new Gauge({
      name: 'nodelink_info',
      help: 'Constant 1, labelled with the role, version and TUN device of this daemon.',
      labelNames: ['role', 'version', 'tun'],
      registers,
      collect() {
        this.reset();
        this.set({ role: options.role, version: options.version, tun: sources.status().tun }, 1);
      },
    });
    if (options.ready) {
      const ready = options.ready;
      new Gauge({
        name: 'nodelink_ready',
        help: 'Whether /readyz passes: 1 ready, 0 not.',
        registers,
        async collect() {
          this.set((await ready()) ? 1 : 0);
        },
      });
    }
    for (const metric of SCRAPED) {
      if (metric.only && metric.only !== options.role) continue;
      const config = { name: metric.name, help: metric.help, labelNames: [...(metric.labels ?? [])], registers };
      if (metric.type === 'gauge') {
        new Gauge({
          ...config,
          collect() {
            this.reset();
            for (const [labels, value] of metric.read(sources)) this.set(labels, value);
          },
        });
      } else {
        new Counter({
          ...config,
          collect() {
            this.reset();
            for (const [labels, value] of metric.read(sources)) this.inc(labels, value);
          },
        });
      }
    }

    this.handshakes = new Counter({
      name: 'nodelink_handshakes_total',
      help: 'Sessions established (hello verified and welcome sent or received).',
      labelNames: ['peer'],
      registers,
    });
    this.handshakeFailures = new Counter({
      name: 'nodelink_handshake_failures_total',
      help: `Handshakes that did not end in a session, by reason (${HANDSHAKE_FAILURES.join(', ')}).`,
      labelNames: ['reason'],
      registers,
    });
    this.reconnects = new Counter({
      name: 'nodelink_reconnects_total',
      help: 'Sessions established with a peer that had been connected before (link flaps).',
      labelNames: ['peer'],
      registers,
    });
    this.disconnects = new Counter({
      name: 'nodelink_disconnects_total',
      help: `Established sessions that ended, by close reason (${[...CLOSE_REASONS, 'unknown'].join(', ')}).`,
      labelNames: ['peer', 'reason'],
      registers,
    });
    this.rtt = new Histogram({
      name: 'nodelink_rtt_seconds',
      help: 'Keepalive ping round trips over the link.',
      labelNames: ['peer'],
      buckets: RTT_BUCKETS,
      registers,
    });
    this.pathChecks = server
      ? new Counter({
          name: 'nodelink_path_checks_total',
          help: 'End-to-end checks of the data path to the node through the TUN, by result (ok, failed).',
          labelNames: ['peer', 'result'],
          registers,
        })
      : undefined;
    // prom-client samples the event loop's lag every 10 ms unless told otherwise: a hundred
    // wakeups a second of an otherwise idle daemon, on every node. Every 100 ms still catches
    // any stall long enough to matter to a tunnel.
    if (options.processMetrics !== false)
      collectDefaultMetrics({ register: this.registry, prefix: 'nodelink_', eventLoopMonitoringPrecision: 100 });
  }

  // ---- LinkObserver ---------------------------------------------------------------------------

  connected(peer: string): void {
    this.events.connected(peer);
    this.handshakes.inc({ peer });
    if (this.events.get(peer)!.handshakes > 1) this.reconnects.inc({ peer });
  }

  handshakeFailed(reason: HandshakeFailure, peer?: string, detail?: string): void {
    this.events.handshakeFailed(reason, peer, detail);
    this.handshakeFailures.inc({ reason });
  }

  disconnected(peer: string, reason: CloseReason): void {
    this.events.disconnected(peer, reason);
    this.disconnects.inc({ peer, reason });
  }

  pong(peer: string, rttMs: number): void {
    this.events.pong(peer, rttMs);
    this.rtt.observe({ peer }, rttMs / 1000);
  }

  // ---- the server's PathChecker (onResult) ----------------------------------------------------

  /** Once per check; a client, which checks no paths, keeps none. */
  pathChecked(peer: string, health: PathHealth): void {
    if (!this.pathChecks) return;
    this.lastPath.set(peer, health);
    if (health.state !== 'unknown') this.pathChecks.inc({ peer, result: health.state === 'ok' ? 'ok' : 'failed' });
  }

  // ---- reading --------------------------------------------------------------------------------

  /** The peer's entry in the event log (which status reads directly). */
  peerEvents(peer: string): PeerEvents | undefined {
    return this.events.get(peer);
  }

  async text(): Promise<string> {
    if (this.options.refresh) {
      await this.options.refresh();
      this.snapshot = undefined;
    }
    return this.registry.metrics();
  }

  get contentType(): string {
    return this.registry.contentType;
  }

  private status(): DaemonStatus {
    const now = Date.now();
    if (!this.snapshot || now - this.snapshot.at > SNAPSHOT_MS)
      this.snapshot = { at: now, status: this.options.status() };
    return this.snapshot.status;
  }
}

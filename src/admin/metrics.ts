import { Counter, Gauge, Histogram, Registry, collectDefaultMetrics } from 'prom-client';
import {
  CLOSE_REASONS,
  DROP_REASONS,
  HANDSHAKE_FAILURES,
  type CloseReason,
  type HandshakeFailure,
} from '../reasons.js';
import { PeerEventLog, type PeerEvents } from './peer-events.js';
import type { DaemonStatus, PathHealth } from './status.js';

/** Seconds; keepalive round trips from a LAN (sub-ms) to a congested WAN link (seconds). */
const RTT_BUCKETS = [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5];

/** A scrape reads status once even though many collect() callbacks need it. */
const SNAPSHOT_MS = 200;

export interface LinkMetricsOptions {
  readonly role: 'server' | 'client';
  readonly version: string;
  /** The daemon's status, read at scrape time. Must be cheap and synchronous. */
  readonly status: () => DaemonStatus;
  /** Where the link's events are recorded; its own log when not given. */
  readonly events?: PeerEventLog;
  /** Current readiness for the `nodelink_ready` gauge. */
  readonly ready?: () => Promise<boolean>;
  /** Process and Node.js runtime metrics (default true; tests turn them off for speed). */
  readonly processMetrics?: boolean;
}

/**
 * Prometheus metrics of one daemon (prom-client), all named `nodelink_…`.
 *
 * Two kinds of sources, and nothing on the data path:
 * - traffic (bytes, packets, drops, queue depth, peers) is read from the daemon's status at
 *   scrape time, in collect() callbacks — the counters the link keeps anyway;
 * - events (handshakes, failures, disconnects, pongs, path checks) arrive through the
 *   LinkObserver methods below, a few per peer per keepalive interval at most. Their reason
 *   labels come from src/reasons.ts.
 *
 * Each event is recorded in the PeerEventLog (status and readiness read it there) before it is
 * counted; the per-peer round-trip and last-pong gauges read that log.
 */
export class LinkMetrics {
  readonly registry = new Registry();
  readonly events: PeerEventLog;
  private snapshot: { at: number; status: DaemonStatus } | undefined;

  private readonly handshakes: Counter<'peer'>;
  private readonly handshakeFailures: Counter<'reason'>;
  private readonly reconnects: Counter<'peer'>;
  private readonly disconnects: Counter<'peer' | 'reason'>;
  private readonly rtt: Histogram<'peer'>;
  private readonly pathChecks: Counter<'peer' | 'result'>;
  private readonly lastPath = new Map<string, PathHealth>();

  constructor(private readonly options: LinkMetricsOptions) {
    this.events = options.events ?? new PeerEventLog();
    const registers = [this.registry];
    const status = (): DaemonStatus => this.status();
    const peers = (): DaemonStatus['peers'] => status().peers;

    new Gauge({
      name: 'nodelink_info',
      help: 'Constant 1, labelled with the role, version and TUN device of this daemon.',
      labelNames: ['role', 'version', 'tun'],
      registers,
      collect() {
        this.reset();
        this.set({ role: options.role, version: options.version, tun: status().tun }, 1);
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
    new Gauge({
      name: 'nodelink_peers',
      help: 'Peers known to this daemon (server: peers file entries; client: 1, the server).',
      registers,
      collect() {
        this.set(peers().length);
      },
    });
    new Gauge({
      name: 'nodelink_peers_connected',
      help: 'Peers with an authenticated session right now.',
      registers,
      collect() {
        this.set(peers().filter((peer) => peer.connected).length);
      },
    });
    new Gauge({
      name: 'nodelink_peer_connected',
      help: 'Whether the peer has an authenticated session (1) or not (0).',
      labelNames: ['peer'],
      registers,
      collect() {
        this.reset();
        for (const peer of peers()) this.set({ peer: peer.name }, peer.connected ? 1 : 0);
      },
    });
    const traffic: Array<[string, string, (peer: DaemonStatus['peers'][number]) => number]> = [
      [
        'nodelink_peer_receive_bytes_total',
        'IP packet bytes received from the peer over the link.',
        (peer) => peer.rxBytes,
      ],
      ['nodelink_peer_transmit_bytes_total', 'IP packet bytes sent to the peer over the link.', (peer) => peer.txBytes],
      [
        'nodelink_peer_receive_packets_total',
        'IP packets received from the peer over the link.',
        (peer) => peer.rxPackets,
      ],
      ['nodelink_peer_transmit_packets_total', 'IP packets sent to the peer over the link.', (peer) => peer.txPackets],
    ];
    for (const [name, help, value] of traffic) {
      new Counter({
        name,
        help,
        labelNames: ['peer'],
        registers,
        collect() {
          this.reset();
          for (const peer of peers()) this.inc({ peer: peer.name }, value(peer));
        },
      });
    }
    new Counter({
      name: 'nodelink_dropped_packets_total',
      help: `Packets dropped, by reason (${DROP_REASONS.join(', ')}); peer is empty when no peer is to blame.`,
      labelNames: ['peer', 'reason'],
      registers,
      collect() {
        this.reset();
        const s = status();
        for (const [reason, count] of Object.entries(s.dropsByReason)) this.inc({ peer: '', reason }, count);
        for (const peer of s.peers) {
          for (const [reason, count] of Object.entries(peer.dropsByReason))
            this.inc({ peer: peer.name, reason }, count);
        }
      },
    });
    const replacements: Array<[string, string, (peer: DaemonStatus['peers'][number]) => number | undefined]> = [
      [
        'nodelink_peer_replacements_total',
        "Server: sessions of the peer replaced by a newer connection with the peer's key.",
        (peer) => peer.replacements,
      ],
      [
        'nodelink_peer_replacements_refused_total',
        "Server: connections with the peer's key refused because it replaced its session too often (replace_limited).",
        (peer) => peer.replacementsRefused,
      ],
    ];
    for (const [name, help, value] of replacements) {
      new Counter({
        name,
        help,
        labelNames: ['peer'],
        registers,
        collect() {
          this.reset();
          for (const peer of peers()) {
            const count = value(peer);
            if (count !== undefined) this.inc({ peer: peer.name }, count);
          }
        },
      });
    }
    new Gauge({
      name: 'nodelink_peer_queued_bytes',
      help: "Bytes waiting in the peer's TLS stream (send queue depth; data, Pings and Pongs are dropped past --max-queue-bytes).",
      labelNames: ['peer'],
      registers,
      collect() {
        this.reset();
        for (const peer of peers()) this.set({ peer: peer.name }, peer.queuedBytes);
      },
    });
    new Gauge({
      name: 'nodelink_peer_routes',
      help: 'Routes the peer announced in its current session.',
      labelNames: ['peer'],
      registers,
      collect() {
        this.reset();
        for (const peer of peers()) this.set({ peer: peer.name }, peer.connected ? peer.routes.length : 0);
      },
    });
    const events = this.events;
    new Gauge({
      name: 'nodelink_peer_rtt_seconds',
      help: 'Round trip of the last keepalive ping to the peer.',
      labelNames: ['peer'],
      registers,
      collect() {
        this.reset();
        for (const peer of peers()) {
          const rtt = peer.connected ? events.get(peer.name)?.lastRttMs : undefined;
          if (rtt !== undefined && rtt !== null) this.set({ peer: peer.name }, rtt / 1000);
        }
      },
    });
    new Gauge({
      name: 'nodelink_peer_last_pong_timestamp_seconds',
      help: 'Unix time of the last keepalive pong from the peer.',
      labelNames: ['peer'],
      registers,
      collect() {
        this.reset();
        for (const [peer, record] of events.entries())
          if (record.lastPongAt !== null) this.set({ peer }, record.lastPongAt / 1000);
      },
    });
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
    if (options.role === 'server') {
      const lastPath = this.lastPath;
      this.pathChecks = new Counter({
        name: 'nodelink_path_checks_total',
        help: 'End-to-end checks of the data path to the node through the TUN, by result (ok, failed).',
        labelNames: ['peer', 'result'],
        registers,
      });
      new Gauge({
        name: 'nodelink_path_up',
        help: 'Whether the last end-to-end path check to the node passed (1) or failed (0); absent before the first check.',
        labelNames: ['peer'],
        registers,
        collect() {
          this.reset();
          for (const [peer, health] of lastPath)
            if (health.state !== 'unknown') this.set({ peer }, health.state === 'ok' ? 1 : 0);
        },
      });
      new Gauge({
        name: 'nodelink_path_check_duration_seconds',
        help: 'How long the last successful path check took to connect through the link.',
        labelNames: ['peer'],
        registers,
        collect() {
          this.reset();
          for (const [peer, health] of lastPath)
            if (health.state === 'ok' && health.rttMs !== null) this.set({ peer }, health.rttMs / 1000);
        },
      });
    } else {
      // Clients do not check paths: an unregistered counter keeps pathChecked() harmless.
      this.pathChecks = new Counter({
        name: 'nodelink_path_checks_total',
        help: 'Path checks (server only).',
        labelNames: ['peer', 'result'],
        registers: [],
      });
    }
    if (options.processMetrics !== false) collectDefaultMetrics({ register: this.registry, prefix: 'nodelink_' });
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

  /** From the server's PathChecker, once per check. */
  pathChecked(peer: string, health: PathHealth): void {
    this.lastPath.set(peer, health);
    if (health.state !== 'unknown') this.pathChecks.inc({ peer, result: health.state === 'ok' ? 'ok' : 'failed' });
  }

  // ---- reading --------------------------------------------------------------------------------

  /** The peer's entry in the event log (which status reads directly). */
  peerEvents(peer: string): PeerEvents | undefined {
    return this.events.get(peer);
  }

  async text(): Promise<string> {
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

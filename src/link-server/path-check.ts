import { connect as netConnect, type Socket } from 'node:net';
import { connect as tlsConnect } from 'node:tls';
import type { PathHealth } from '../admin/index.js';
import { formatEndpoint, nodeIp, type Prefix } from '../routing/index.js';
import type { Logger } from '../log.js';

/** A connected node and the address its path is checked at (its announced node IP). */
export interface PathTarget {
  readonly peer: string;
  readonly address: string;
  readonly family: 4 | 6;
}

/** Each connected node's node IP (the first host route it announced, IPv4 first), if it has one. */
export function pathTargets(
  connected: Iterable<{ readonly name: string; readonly routes: readonly Prefix[] }>,
): PathTarget[] {
  const targets: PathTarget[] = [];
  for (const { name, routes } of connected) {
    const host = nodeIp(routes);
    if (host) targets.push({ peer: name, address: host.address, family: host.family });
  }
  return targets;
}

export interface PathCheckOptions {
  /** 0 turns checks off. */
  readonly intervalMs: number;
  readonly timeoutMs: number;
  /** TCP port on the node IP (kubelet's 10250 by default: what the apiserver needs to reach). */
  readonly port: number;
  /** Connected peers and their node IPs, read at each round. */
  readonly targets: () => readonly PathTarget[];
  /** The server's tunnel address of a family, used as the source (what kubelet sees). */
  readonly sourceAddress: (family: 4 | 6) => string | undefined;
  readonly log: Logger;
  readonly onResult?: (peer: string, health: PathHealth) => void;
}

const UNKNOWN: Readonly<PathHealth> = {
  state: 'unknown',
  target: null,
  checkedAt: null,
  lastOkAt: null,
  rttMs: null,
  error: null,
  checks: 0,
  failures: 0,
};

/**
 * Checks each connected node's data path end to end, through the kernel and the TUN, at an
 * interval: a TCP connect from the server's tunnel address to NODE_IP:port. The SYN leaves
 * through the route into nl0, crosses the link, enters the node's TUN and kernel; the answer
 * comes back the same way. A completed connect or a refusal (the node's kernel answered with
 * RST) proves the path; a timeout or an ICMP error means it is broken even if the TLS stream and
 * its pings are fine ("process up, path broken"). After connecting, a TLS handshake is
 * attempted and dropped, so kubelet does not log a handshake error for every check.
 *
 * One connect per node per interval, never per packet; a node whose previous check is still
 * running is skipped.
 */
export class PathChecker {
  private readonly results = new Map<string, PathHealth>();
  private readonly inFlight = new Set<string>();
  private timer: NodeJS.Timeout | undefined;
  /** A round is under way: it schedules the next one itself when it ends. */
  private running = false;
  private stopped = false;

  constructor(private options: PathCheckOptions) {}

  /** The first round comes after a second at most, so status has a result soon after start. */
  start(): void {
    this.schedule(Math.min(this.options.intervalMs, 1000));
  }

  /** Applies a new interval, timeout or port (SIGHUP reload); takes effect from the next round. */
  reconfigure(update: Partial<Pick<PathCheckOptions, 'intervalMs' | 'timeoutMs' | 'port'>>): void {
    this.options = { ...this.options, ...update };
    if (this.timer) clearTimeout(this.timer);
    this.timer = undefined;
    // During a round, rescheduling here too would start a second chain of rounds.
    if (!this.stopped && !this.running) this.schedule();
  }

  stop(): void {
    this.stopped = true;
    if (this.timer) clearTimeout(this.timer);
  }

  health(peer: string): PathHealth {
    return this.results.get(peer) ?? { ...UNKNOWN };
  }

  /** One round over every connected node; resolves when all checks finished. */
  async checkAll(): Promise<void> {
    const targets = this.options.targets();
    const current = new Set(targets.map((target) => target.peer));
    // A node that went away has no path to check: its state is unknown again, counts are kept.
    for (const [peer, health] of this.results) {
      if (!current.has(peer) && health.state !== 'unknown') {
        const next = { ...health, state: 'unknown' as const, error: 'peer not connected' };
        this.results.set(peer, next);
        this.options.onResult?.(peer, next);
      }
    }
    await Promise.all(targets.filter((target) => !this.inFlight.has(target.peer)).map((target) => this.check(target)));
  }

  private schedule(delayMs = this.options.intervalMs): void {
    if (this.stopped || this.options.intervalMs <= 0) return;
    this.timer = setTimeout(() => {
      this.timer = undefined;
      this.running = true;
      void this.checkAll().finally(() => {
        this.running = false;
        this.schedule();
      });
    }, delayMs);
    this.timer.unref();
  }

  private async check(target: PathTarget): Promise<void> {
    const { port, timeoutMs, log } = this.options;
    this.inFlight.add(target.peer);
    const where = formatEndpoint({ host: target.address, port });
    const started = performance.now();
    const outcome = await probe(target.address, port, this.options.sourceAddress(target.family), timeoutMs);
    this.inFlight.delete(target.peer);
    if (this.stopped) return;
    const previous = this.results.get(target.peer) ?? { ...UNKNOWN };
    const now = new Date().toISOString();
    const next: PathHealth = outcome.ok
      ? {
          state: 'ok',
          target: where,
          checkedAt: now,
          lastOkAt: now,
          rttMs: performance.now() - started,
          error: null,
          checks: previous.checks + 1,
          failures: previous.failures,
        }
      : {
          state: 'failing',
          target: where,
          checkedAt: now,
          lastOkAt: previous.lastOkAt,
          rttMs: null,
          error: outcome.error,
          checks: previous.checks + 1,
          failures: previous.failures + 1,
        };
    this.results.set(target.peer, next);
    if (previous.state !== next.state) {
      if (next.state === 'failing') {
        log.warn(
          { peer: target.peer, target: where, err: next.error },
          'path check failed: the link is up but packets do not reach the node through the TUN',
        );
      } else if (previous.state === 'failing') {
        log.info({ peer: target.peer, target: where, rttMs: Number(next.rttMs!.toFixed(2)) }, 'path check recovered');
      } else {
        log.debug({ peer: target.peer, target: where, rttMs: Number(next.rttMs!.toFixed(2)) }, 'path check ok');
      }
    }
    this.options.onResult?.(target.peer, next);
  }
}

type ProbeOutcome = { ok: true } | { ok: false; error: string };

/** TCP connect through the link; refused counts as reachable (the node's kernel answered). */
function probe(
  address: string,
  port: number,
  localAddress: string | undefined,
  timeoutMs: number,
): Promise<ProbeOutcome> {
  return new Promise((resolve) => {
    let settled = false;
    let socket: Socket;
    const done = (outcome: ProbeOutcome): void => {
      if (settled) return;
      settled = true;
      clearTimeout(timer);
      resolve(outcome);
    };
    const timer = setTimeout(() => {
      socket.destroy();
      done({ ok: false, error: `no answer within ${timeoutMs} ms` });
    }, timeoutMs);
    socket = netConnect({ host: address, port, localAddress });
    socket.once('connect', () => {
      done({ ok: true });
      // Politeness only: finish a TLS handshake so the kubelet logs nothing, then hang up.
      const tls = tlsConnect({ socket, rejectUnauthorized: false, servername: undefined });
      const bye = setTimeout(() => tls.destroy(), timeoutMs);
      bye.unref();
      const end = (): void => {
        clearTimeout(bye);
        tls.destroy();
      };
      tls.once('secureConnect', end);
      tls.once('error', end);
      tls.once('close', end);
    });
    socket.on('error', (err: NodeJS.ErrnoException) => {
      if (err.code === 'ECONNREFUSED') done({ ok: true });
      else
        done({
          ok: false,
          error:
            err.code === 'EHOSTUNREACH' ? 'host unreachable (ICMP error through the link)' : (err.code ?? err.message),
        });
    });
  });
}

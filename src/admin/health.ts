import type { PeerEventLog } from './peer-events.js';
import type { DaemonStatus, ReplicaStatus } from './status.js';

/**
 * Readiness, as /readyz and `nodelink_ready` report it: whether the daemon carries traffic. The
 * server is ready once it listens with its TUN up; a node once it holds an authenticated session
 * the server answered a ping on recently, with its TUN up and every server replica held. The
 * checks are pure: the wiring reads the device and passes the result in.
 */

/** One named check of a health report, with what it found. */
export interface HealthCheck {
  ok: boolean;
  detail: string;
}

export interface HealthReport {
  ok: boolean;
  checks: Record<string, HealthCheck>;
}

export function report(checks: Record<string, HealthCheck>): HealthReport {
  return { ok: Object.values(checks).every((check) => check.ok), checks };
}

/** `listening` is the address the server accepts nodes on, once it does. */
export function serverReadiness(listening: string | undefined, tun: HealthCheck): HealthReport {
  return report({
    listening:
      listening !== undefined
        ? { ok: true, detail: `accepting nodes on ${listening}` }
        : { ok: false, detail: 'not listening yet' },
    tun,
  });
}

export interface ClientReadinessInput {
  readonly status: Pick<DaemonStatus, 'peers' | 'replicas'>;
  readonly events: PeerEventLog;
  /** --dead-after-ms: a pong older than this means the server stopped answering. */
  readonly deadAfterMs: number;
  readonly tun: HealthCheck;
  readonly now?: number;
}

/** Authenticated, and the server answered a ping within --dead-after-ms. */
export function clientReadiness(input: ClientReadinessInput): HealthReport {
  const { status, events, deadAfterMs } = input;
  // With several servers, one live session is enough to be reachable.
  const server = status.peers.find((peer) => peer.connected) ?? status.peers[0];
  const record = events.get(server?.name ?? 'server');
  const lastPongAt = record?.lastPongAt ?? null;
  const age = lastPongAt === null ? Infinity : (input.now ?? Date.now()) - lastPongAt;
  return report({
    authenticated: server?.connected
      ? { ok: true, detail: `session with ${server.endpoint ?? 'the server'} since ${server.connectedSince ?? '?'}` }
      : { ok: false, detail: record?.lastError ?? 'not connected to the server yet' },
    pong:
      server?.connected && age <= deadAfterMs
        ? { ok: true, detail: `last pong ${Math.round(age)} ms ago` }
        : {
            ok: false,
            detail:
              lastPongAt === null ? 'no pong yet' : `last pong ${Math.round(age)} ms ago (limit ${deadAfterMs} ms)`,
          },
    tun: input.tun,
    replicas: replicaCheck(status.replicas ?? []),
  });
}

/**
 * Ready only with a session to every replica behind each address, once the replicas have said how
 * many there are: an apiserver replica the node misses cannot reach it.
 */
export function replicaCheck(replicas: readonly ReplicaStatus[]): HealthCheck {
  const short = replicas.filter((entry) => entry.count > 0 && !entry.complete);
  if (short.length === 0) {
    const held = replicas.map((entry) => `${entry.held.length}/${Math.max(entry.count, 1)} at ${entry.server}`);
    return { ok: true, detail: `server replicas held: ${held.join(', ')}` };
  }
  const detail = short.map((entry) => {
    const missing = [...entry.missing.map((replica) => replica.id || '(unnamed)')];
    if (entry.unseen > 0) missing.push(`${entry.unseen} not reached yet`);
    return `${entry.held.length}/${entry.count} at ${entry.server}, missing ${missing.join(', ')}`;
  });
  return { ok: false, detail: `server replicas held: ${detail.join('; ')}` };
}

/** A check read at most once per `ms`, so a burst of probes or scrapes runs `ip` once. */
export function cached<T>(ms: number, read: () => Promise<T>): () => Promise<T> {
  let last: { at: number; value: Promise<T> } | undefined;
  return () => {
    const now = Date.now();
    if (!last || now - last.at > ms) last = { at: now, value: read() };
    return last.value;
  };
}

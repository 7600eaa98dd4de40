import { Backoff } from './backoff.js';

/**
 * The server replicas behind one load-balanced address, as one node knows them.
 *
 * Each replica names itself (its server ID) and says how many replicas there are (its server
 * count) in the Welcome. The node holds at most one session per replica and dials the address
 * again until it holds as many as the count. A replica whose session ended stays known (missing)
 * for `forgetAfterMs`, so a quick return is recognised and the flows it served keep their place;
 * after that it is forgotten. A restarted replica names itself anew, so the old name is forgotten
 * in time rather than waited for.
 *
 * The count in force is the highest a held replica announced (the sessions are the freshest
 * word; with none held, the highest any known replica announced): while replicas are restarted
 * with a new count, the node looks for the larger set as soon as it holds one that says so, and a
 * count lowered on every replica takes effect as soon as the node holds only replicas that say so.
 *
 * Each known replica has a slot, a small number that is stable while it is known and reused after
 * it is forgotten: the flow table stores slots, not names.
 */

export interface ReplicaInfo {
  readonly id: string;
  readonly slot: number;
  readonly connected: boolean;
  /** When its current session started (connected) or its last one ended (missing), in ms. */
  readonly since: number;
  /** The replica count it announced. */
  readonly count: number;
}

/** Why a welcome from a replica was not taken as a new session. */
export type AdmitRefusal = 'already_held' | 'too_many_replicas';

interface Replica {
  readonly id: string;
  readonly slot: number;
  connected: boolean;
  since: number;
  count: number;
}

/** More distinct replicas than anyone runs; bounds the state a misbehaving address can make us keep. */
export const MAX_REPLICAS = 64;

export class ReplicaSet {
  private readonly replicas = new Map<string, Replica>();

  constructor(private readonly forgetAfterMs: number) {
    if (!(forgetAfterMs > 0)) throw new RangeError(`forget time must be positive, got ${forgetAfterMs}`);
  }

  /**
   * A welcome from replica `id`, which announces `count` replicas: returns the replica's slot, or
   * why this session must not be kept (the node already holds one to it, or knows too many).
   */
  admit(id: string, count: number, now: number): number | AdmitRefusal {
    const known = this.replicas.get(id);
    if (known?.connected) return 'already_held';
    if (known) {
      known.connected = true;
      known.since = now;
      known.count = count;
      return known.slot;
    }
    const slot = this.freeSlot();
    if (slot < 0) return 'too_many_replicas';
    this.replicas.set(id, { id, slot, connected: true, since: now, count });
    return slot;
  }

  /** The session to replica `id` ended. */
  lost(id: string, now: number): void {
    const replica = this.replicas.get(id);
    if (!replica?.connected) return;
    replica.connected = false;
    replica.since = now;
  }

  /** Forgets replicas missing for longer than the forget time; returns them. */
  expire(now: number): ReplicaInfo[] {
    const forgotten: ReplicaInfo[] = [];
    for (const replica of this.replicas.values()) {
      if (replica.connected || now - replica.since <= this.forgetAfterMs) continue;
      this.replicas.delete(replica.id);
      forgotten.push({ ...replica });
    }
    return forgotten;
  }

  /** When the next replica would be forgotten, or undefined when none is missing. */
  nextExpiry(): number | undefined {
    let next: number | undefined;
    for (const replica of this.replicas.values()) {
      if (replica.connected) continue;
      const at = replica.since + this.forgetAfterMs;
      if (next === undefined || at < next) next = at;
    }
    return next;
  }

  /** The replica count in force (see above); 0 before any welcome. */
  get count(): number {
    let held = 0;
    let known = 0;
    for (const replica of this.replicas.values()) {
      known = Math.max(known, replica.count);
      if (replica.connected) held = Math.max(held, replica.count);
    }
    return held > 0 ? held : known;
  }

  /** Sessions the node holds. */
  get held(): number {
    let held = 0;
    for (const replica of this.replicas.values()) if (replica.connected) held++;
    return held;
  }

  /** Sessions the node wants: the count, or one while it knows no count. */
  get wanted(): number {
    return Math.max(this.count, 1);
  }

  /** The node holds a session to every replica the count says there are. */
  get complete(): boolean {
    const count = this.count;
    return count > 0 && this.held >= count;
  }

  /** Replicas the count says exist that the node knows nothing of (none held, none missing). */
  get unseen(): number {
    return Math.max(0, this.count - this.replicas.size);
  }

  /** IDs of the replicas the node holds a session to, in slot order. */
  heldIds(): string[] {
    return this.list()
      .filter((replica) => replica.connected)
      .map((replica) => replica.id);
  }

  /** Every known replica, in slot order. */
  list(): ReplicaInfo[] {
    return [...this.replicas.values()].map((replica) => ({ ...replica })).sort((a, b) => a.slot - b.slot);
  }

  get(id: string): ReplicaInfo | undefined {
    const replica = this.replicas.get(id);
    return replica && { ...replica };
  }

  private freeSlot(): number {
    const used = new Set<number>();
    for (const replica of this.replicas.values()) used.add(replica.slot);
    for (let slot = 0; slot < MAX_REPLICAS; slot++) if (!used.has(slot)) return slot;
    return -1;
  }
}

/** What the last dial to the load-balanced address came to, or what else changed. */
export type DialOutcome =
  /** A session to a replica the node did not hold. */
  | 'new_replica'
  /** It landed on a replica the node already holds, and was closed. */
  | 'already_held'
  /** Nothing listened at the address (ECONNREFUSED): the server is down or restarting. */
  | 'refused'
  /** It failed otherwise (timed out, reset, closed before a welcome). */
  | 'failed'
  /** A session the node held ended. */
  | 'lost'
  /** A session the node held ended with the server's goodbye: it is stopping, maybe restarting. */
  | 'shutdown';

export interface DialPolicyOptions {
  /** Backoff while the node holds no session at all (--backoff-base-ms, --backoff-cap-ms). */
  readonly baseMs: number;
  readonly capMs: number;
  /** Backoff cap while the node holds some replicas and looks for the rest (--replica-search-cap-ms). */
  readonly searchCapMs: number;
  readonly random?: () => number;
}

/**
 * A session that lasted this long worked, and the connect backoff starts over after it. One that
 * ended sooner (replaced by a loop with the same key, closed by a server that cannot keep it)
 * counts as one more failed dial, so such a loop is not redialed at full speed.
 */
export const STABLE_SESSION_MS = 10_000;

/**
 * While nothing listens, the wait between dials grows only to this many times the base (or the
 * cap, if lower): a refused dial costs the server nothing, and once it listens again every node
 * is back within that ceiling instead of sitting out waits grown through the restart.
 */
export const REFUSED_CEILING_BASES = 8;

/**
 * The first wait after a refused dial (or a goodbye) is 1 to 2 bases, then 2 to 4, then 4 to 8
 * (equal jitter from twice the base): a node meets a restarting server's empty port at most
 * twice if it listens within 3 bases of the goodbye, and three times within 7.
 */
export const REFUSED_FIRST_CEILING_BASES = 2;

/**
 * When to dial the address again. With no session at all the node redials as any client does
 * (exponential backoff with full jitter up to capMs), and starts that backoff over only after a
 * session that lasted STABLE_SESSION_MS. A dial refused because nothing listens (the server is
 * restarting) leaves that backoff alone: such dials follow their own, with waits of at least
 * half their ceiling, which stops at REFUSED_CEILING_BASES times the base, so a fleet polls a
 * restarting server a few times, spread over that ceiling, and is back soon after it listens
 * (a server's goodbye, server_shutdown, starts that schedule at once: it is stopping, and a
 * process that starts again takes a moment to listen), while a server that accepts and then
 * fails or refuses (overloaded, or refusing beyond its line of waiting connections) still sees
 * the fleet back off exponentially. Holding some replicas,
 * the node looks for the rest with its own backoff, capped lower, because each search dial lands
 * on a replica at the load balancer's choice: a lost session or a newly found replica starts
 * that search from the base again, and each dial that lands on a held replica or fails doubles
 * its ceiling. Holding every replica, it does not dial.
 */
export class DialPolicy {
  private readonly connect: Backoff;
  private readonly refused: Backoff;
  private readonly search: Backoff;

  constructor(options: DialPolicyOptions) {
    this.connect = new Backoff(options.baseMs, options.capMs, options.random);
    this.refused = new Backoff(
      options.baseMs * REFUSED_FIRST_CEILING_BASES,
      Math.min(options.capMs, options.baseMs * REFUSED_CEILING_BASES),
      options.random,
      0.5,
    );
    this.search = new Backoff(options.baseMs, Math.min(options.searchCapMs, options.capMs), options.random);
  }

  /**
   * The wait before the next dial, or undefined when the node holds every replica it wants.
   * `sessionMs`: for a lost session, how long it lasted from its welcome.
   */
  next(replicas: ReplicaSet, outcome: DialOutcome, sessionMs = 0): number | undefined {
    const lost = outcome === 'lost' || outcome === 'shutdown';
    if (lost && sessionMs >= STABLE_SESSION_MS) this.connect.reset();
    if (outcome === 'new_replica' || lost) {
      this.search.reset();
      this.refused.reset();
    }
    const held = replicas.held;
    if (held >= replicas.wanted) return undefined;
    if (held > 0) return this.search.next();
    return outcome === 'refused' || outcome === 'shutdown' ? this.refused.next() : this.connect.next();
  }
}

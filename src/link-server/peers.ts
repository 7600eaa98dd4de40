/**
 * Who the server knows, and where their traffic goes: one entry per key of the peers file, each
 * with its live session if it has one, and the two route tables the packet path reads. Sessions
 * open and close here (handshake.ts), a peers-file reload replaces the file's part (reload.ts),
 * forward.ts reads the tables for every packet and status.ts reads it all on demand. Every
 * change is one synchronous step, so no packet sees half of one.
 */
import type { Hello, PeerConfig, PeerRegistry } from '../auth/index.js';
import type { FramedConnection } from '../link/connection.js';
import { TrafficCounters } from '../link/counters.js';
import { PrefixTable, type Prefix } from '../routing/index.js';

/**
 * How often one key may replace its own live session: REPLACEMENT_BURST times in a row, then once
 * more every REPLACEMENT_REFILL_MS. A node that redials while the server still holds its old
 * session (a NAT rebinding, a quick restart) replaces it once; a key used in two places at once
 * (stolen, or copied to a second machine) would replace back and forth without end, and each
 * side would be offline most of the time.
 */
export const REPLACEMENT_BURST = 5;
export const REPLACEMENT_REFILL_MS = 10_000;

/** A node as the server knows it, connected or not. */
export interface PeerState {
  config: PeerConfig; // its peers-file entry; replaced when a reload changes it
  readonly counters: TrafficCounters; // outlive its sessions, as in `wg show`
  session: Session | undefined; // the live one; set by Peers.open, cleared by Peers.close
  readonly replacements: Replacements; // how often its key replaced its session, and may again
}

/** A token bucket of session replacements, and what became of them (status, metrics). */
export interface Replacements {
  tokens: number;
  refilledAt: number;
  done: number; // sessions replaced by a newer one with the same key
  refused: number; // new connections refused because no token was left (replace_limited)
}

/** One authenticated connection of a node. */
export interface Session {
  readonly peer: PeerState;
  readonly connection: FramedConnection;
  readonly endpoint: string;
  readonly routes: readonly Prefix[]; // announced in its hello and allowed by the peers file
}

export class Peers {
  registry: PeerRegistry; // the peers file in force; replaced whole by a reload
  readonly byKey = new Map<string, PeerState>(); // by public key text; a reload adds and deletes
  authorized = new PrefixTable<PeerState>(); // every entry's allowedIPs; replaced whole by a reload
  readonly announced = new PrefixTable<Session>(); // routes of live sessions; open and close write it

  constructor(registry: PeerRegistry) {
    this.registry = registry;
    for (const config of registry.peers) {
      const state = newPeerState(config);
      this.byKey.set(config.publicKeyText, state);
      for (const prefix of config.allowedIPs) this.authorized.insert(prefix, state);
    }
  }

  /** Decides on a verified hello against the peers file in force (throws AuthError if refused). */
  authorize(hello: Hello): { peer: PeerState; routes: Prefix[] } {
    const { peer: config, routes } = this.registry.authorize(hello);
    const peer = this.byKey.get(config.publicKeyText);
    // A reload replaces the registry and byKey in one step, so every entry of one is in the other.
    if (!peer) throw new Error(`peer "${config.name}" is in the peers file but not in the server's table`);
    return { peer, routes };
  }

  /**
   * Makes `session` its peer's live session and points its routes at it. Returns the session it
   * replaces, which the caller closes next: its routes are overwritten here first and what only
   * it announced is withdrawn by close(), so no packet ever finds a route missing.
   */
  open(session: Session): Session | undefined {
    const previous = session.peer.session;
    session.peer.session = session;
    for (const route of session.routes) this.announced.insert(route, session);
    return previous;
  }

  /**
   * Whether `peer`'s live session may be replaced now, counting the answer. Without a live
   * session there is nothing to replace: always yes, and no token spent.
   */
  mayReplace(peer: PeerState, now = Date.now()): boolean {
    if (!peer.session) return true;
    const bucket = peer.replacements;
    const refills = Math.floor((now - bucket.refilledAt) / REPLACEMENT_REFILL_MS);
    if (refills > 0) {
      bucket.tokens = Math.min(REPLACEMENT_BURST, bucket.tokens + refills);
      bucket.refilledAt += refills * REPLACEMENT_REFILL_MS;
    }
    if (bucket.tokens === 0) {
      bucket.refused++;
      return false;
    }
    bucket.tokens--;
    bucket.done++;
    return true;
  }

  /** A session ended: its routes that no newer session took over are withdrawn. */
  close(session: Session): void {
    for (const route of session.routes) {
      if (this.announced.get(route) === session) this.announced.delete(route);
    }
    if (session.peer.session === session) session.peer.session = undefined;
  }

  get sessionCount(): number {
    let sessions = 0;
    for (const state of this.byKey.values()) if (state.session) sessions++;
    return sessions;
  }
}

export function newPeerState(config: PeerConfig): PeerState {
  return {
    config,
    counters: new TrafficCounters(),
    session: undefined,
    replacements: { tokens: REPLACEMENT_BURST, refilledAt: Date.now(), done: 0, refused: 0 },
  };
}

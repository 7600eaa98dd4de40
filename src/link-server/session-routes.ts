/**
 * A worker's kernel routes for the nodes whose sessions it holds (--workers; see the top of
 * src/tun/routes.ts). Sessions open and close in bursts (a reconnect storm brings thousands), so
 * route changes are not made one `ip` call per event: a changed node is marked, and whenever no
 * change is running, every marked node is settled in one pass from what the worker holds at that
 * moment: held (or being opened) → its routes claimed into this worker's TUN, not held → what this
 * worker claimed for it released. Settling from the state, not replaying events, makes the order
 * of events (a session replaced by a newer one in this worker, a close after a reconnect) not
 * matter.
 *
 * A session's routes are claimed before its Welcome (`claimBeforeWelcome`, the handshake's
 * hook): the node's first packets, and the control plane's first packets to it, already take
 * this worker's TUN, never another worker's stale route or the first worker's offline route.
 * Such a claim always replaces, even where this worker claimed the same routes before, since
 * another worker may have claimed them since. A node whose routes this worker holds claimed
 * already costs no `ip` call when its session opens.
 */
import type { Prefix } from '../routing/index.js';
import type { Logger } from '../log.js';
import { NodelinkError, userMessage } from '../errors.js';

/** One peer as the worker holds it now. */
export interface HeldPeer {
  readonly name: string;
  readonly allowedIPs: readonly Prefix[];
  /** Whether it has a session in this worker. */
  readonly connected: boolean;
}

export interface SessionRoutesOptions {
  /** Every peer of this worker, read at each pass (LinkServer.peerSessions). */
  readonly peers: () => Iterable<HeldPeer>;
  /** Routes CIDRs into this worker's TUN (ServerRoutes.claim). */
  readonly claim: (cidrs: readonly string[]) => Promise<void>;
  /** Removes this worker's routes for CIDRs, where they still name its TUN (ServerRoutes.release). */
  readonly release: (cidrs: readonly string[]) => Promise<void>;
  /** How long a handshake waits for its node's routes before giving up on the session. */
  readonly claimTimeoutMs?: number;
  readonly log: Logger;
}

/** Long enough for an `ip -batch` of a storm's worth of claims on a busy host. */
export const CLAIM_TIMEOUT_MS = 5000;

interface Waiter {
  resolve(): void;
  reject(err: Error): void;
}

export class SessionRoutes {
  private readonly marked = new Set<string>();
  /** Nodes whose next pass must replace their routes, claimed before or not. */
  private readonly forced = new Set<string>();
  /** Sessions being opened, by node: their routes are claimed as if they were held. */
  private readonly opening = new Map<string, number>();
  /** Handshakes waiting for their node's next pass. */
  private readonly waiting = new Map<string, Waiter[]>();
  /** What this worker claimed per node, as CIDR text: what a release takes back. */
  private readonly claimed = new Map<string, readonly string[]>();
  private running: Promise<void> | undefined;

  constructor(private readonly options: SessionRoutesOptions) {}

  /** The peer's session opened or closed here: its routes follow at the next pass. */
  changed(name: string): void {
    this.marked.add(name);
    this.running ??= this.settle();
  }

  /**
   * The handshake's hook: claims the node's routes into this worker's TUN and resolves once
   * they are there, with a function to call once the session opened or was given up (then its
   * routes follow what the worker holds). Rejects, leaving nothing claimed for a session that
   * never opened, when `ip` fails or takes longer than the claim timeout.
   */
  async claimBeforeWelcome(name: string): Promise<() => void> {
    this.opening.set(name, (this.opening.get(name) ?? 0) + 1);
    let finished = false;
    const finish = (): void => {
      if (finished) return;
      finished = true;
      const left = (this.opening.get(name) ?? 1) - 1;
      if (left > 0) this.opening.set(name, left);
      else this.opening.delete(name);
      this.changed(name);
    };
    const timeoutMs = this.options.claimTimeoutMs ?? CLAIM_TIMEOUT_MS;
    let timer: NodeJS.Timeout | undefined;
    try {
      await Promise.race([
        new Promise<void>((resolve, reject) => {
          const list = this.waiting.get(name) ?? [];
          list.push({ resolve, reject });
          this.waiting.set(name, list);
          this.forced.add(name);
          this.changed(name);
        }),
        new Promise<never>((_, reject) => {
          timer = setTimeout(
            () =>
              reject(new NodelinkError('workers', `its routes did not reach this worker's TUN within ${timeoutMs} ms`)),
            timeoutMs,
          );
        }),
      ]);
    } catch (err) {
      finish();
      throw err;
    } finally {
      clearTimeout(timer);
    }
    return finish;
  }

  /** Resolves once every change marked so far has reached the kernel. */
  async idle(): Promise<void> {
    while (this.running) await this.running;
  }

  private async settle(): Promise<void> {
    // Events of the current tick join this pass.
    await Promise.resolve();
    while (this.marked.size > 0) {
      const names = new Set(this.marked);
      this.marked.clear();
      const waiters: Waiter[] = [];
      const claim: string[] = [];
      const release: string[] = [];
      const claiming = new Map<string, readonly string[]>();
      const visit = (name: string, want: readonly string[]): void => {
        const have = this.claimed.get(name) ?? [];
        const force = this.forced.delete(name);
        waiters.push(...(this.waiting.get(name) ?? []));
        this.waiting.delete(name);
        if (want.length > 0 && (force || !sameSet(want, have))) {
          claim.push(...want);
          claiming.set(name, want);
        }
        release.push(...have.filter((cidr) => !want.includes(cidr)));
        if (want.length === 0) this.claimed.delete(name);
      };
      for (const peer of this.options.peers()) {
        if (!names.delete(peer.name)) continue;
        const held = peer.connected || this.opening.has(peer.name);
        visit(peer.name, held ? peer.allowedIPs.map(String) : []);
      }
      // A name no peer carries any more left with a reload: what was claimed for it goes too.
      for (const name of names) visit(name, []);
      let failure: Error | undefined;
      try {
        await this.options.claim(claim);
      } catch (err) {
        failure = err instanceof Error ? err : new Error(String(err));
        this.options.log.warn({ err: userMessage(err), cidrs: claim.length }, 'cannot route nodes to this worker');
      }
      // A failed batch may have claimed some: they count as claimed, so a release takes them back.
      for (const [name, want] of claiming) {
        const have = this.claimed.get(name) ?? [];
        this.claimed.set(name, failure ? [...new Set([...have, ...want])] : want);
      }
      await this.options.release(release);
      for (const waiter of waiters) {
        if (failure) waiter.reject(failure);
        else waiter.resolve();
      }
    }
    this.running = undefined;
  }
}

function sameSet(a: readonly string[], b: readonly string[]): boolean {
  return a.length === b.length && a.every((item) => b.includes(item));
}

/**
 * A worker's kernel routes for the nodes whose sessions it holds (--workers; see the top of
 * src/tun/routes.ts). Sessions open and close in bursts (a reconnect storm brings thousands), so
 * route changes are not made one `ip` call per event: a changed node is marked, and whenever no
 * change is running, every marked node is settled in one pass from what the worker holds at that
 * moment: held → its routes claimed into this worker's TUN, not held → released. Settling from
 * the state, not replaying events, makes the order of events (a session replaced by a newer one
 * in this worker, a close after a reconnect) not matter.
 */
import type { Prefix } from '../routing/index.js';
import type { Logger } from '../log.js';

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
  readonly log: Logger;
}

export class SessionRoutes {
  private readonly marked = new Set<string>();
  private running: Promise<void> | undefined;

  constructor(private readonly options: SessionRoutesOptions) {}

  /** The peer's session opened or closed here: its routes follow at the next pass. */
  changed(name: string): void {
    this.marked.add(name);
    this.running ??= this.settle();
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
      const claim: string[] = [];
      const release: string[] = [];
      for (const peer of this.options.peers()) {
        if (!names.delete(peer.name)) continue;
        for (const prefix of peer.allowedIPs) (peer.connected ? claim : release).push(String(prefix));
      }
      // A name no peer carries any more left with a reload, which removed its routes itself.
      try {
        await this.options.claim(claim);
      } catch (err) {
        this.options.log.warn(
          { err: (err as Error).message, cidrs: claim.length },
          'cannot route nodes to this worker',
        );
      }
      await this.options.release(release);
    }
    this.running = undefined;
  }
}

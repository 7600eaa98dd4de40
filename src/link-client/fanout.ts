import { PrefixTable, type Prefix } from '../routing/index.js';
import type { TunDevice } from '../tun/index.js';

/**
 * One TUN shared by several server sessions (one per control-plane server). Each session gets
 * a view of the TUN: its writes go straight to the device; it receives the packets whose
 * destination lies in its server's tunnel CIDRs — replies to whichever apiserver asked. The
 * CIDRs are registered when that server's welcome names them, so servers of one cluster must
 * use distinct tunnel CIDRs.
 */
export class TunFanout {
  private readonly byDestination = new PrefixTable<FanoutView>();

  constructor(private readonly tun: TunDevice) {
    // A packet for no known server (before any welcome, or a stray destination) goes nowhere.
    tun.onPacket((packet) => this.byDestination.lookupDestination(packet)?.deliver(packet));
  }

  view(): FanoutView {
    return new FanoutView(this.tun);
  }

  /**
   * Points these tunnel CIDRs at `view`. Returns the CIDRs another view already owns (left
   * unchanged), so the caller can report the misconfiguration.
   */
  claim(view: FanoutView, cidrs: readonly Prefix[]): Prefix[] {
    const conflicts: Prefix[] = [];
    for (const cidr of cidrs) {
      const owner = this.byDestination.get(cidr);
      if (owner && owner !== view) conflicts.push(cidr);
      else this.byDestination.insert(cidr, view);
    }
    return conflicts;
  }

  async close(): Promise<void> {
    await this.tun.close();
  }
}

export class FanoutView implements TunDevice {
  private handler: ((packet: Buffer) => void) | undefined;

  constructor(private readonly tun: TunDevice) {}

  get name(): string {
    return this.tun.name;
  }

  onPacket(handler: (packet: Buffer) => void): void {
    this.handler = handler;
  }

  deliver(packet: Buffer): void {
    this.handler?.(packet);
  }

  write(packet: Buffer): boolean {
    return this.tun.write(packet);
  }

  /** The shared device outlives a view; TunFanout.close() closes it. */
  async close(): Promise<void> {
    this.handler = undefined;
  }
}

import type { TunDevice } from '../../src/tun/index.js';

/**
 * An in-memory TUN device for tests and the load generator. `inject` plays the kernel handing
 * us a packet; `written` collects what the link wrote toward the kernel. Delivery is
 * asynchronous, as from a real device.
 */
export class FakeTun implements TunDevice {
  readonly written: Buffer[] = [];
  private handler: ((packet: Buffer) => void) | undefined;
  private waiters: Array<() => void> = [];
  closed = false;

  constructor(readonly name = 'fake0') {}

  onPacket(handler: (packet: Buffer) => void): void {
    this.handler = handler;
  }

  write(packet: Buffer): boolean {
    if (this.closed) return false;
    this.written.push(Buffer.from(packet));
    for (const wake of this.waiters.splice(0)) wake();
    return true;
  }

  inject(packet: Buffer): void {
    const copy = Buffer.from(packet);
    setImmediate(() => this.handler?.(copy));
  }

  /** Resolves once `count` packets have been written, or rejects after `timeoutMs`. */
  async waitForWritten(count: number, timeoutMs = 2000): Promise<Buffer[]> {
    const deadline = Date.now() + timeoutMs;
    while (this.written.length < count) {
      const left = deadline - Date.now();
      if (left <= 0)
        throw new Error(`${this.name}: ${this.written.length} of ${count} packets written after ${timeoutMs} ms`);
      await new Promise<void>((resolve) => {
        const timer = setTimeout(resolve, left);
        this.waiters.push(() => {
          clearTimeout(timer);
          resolve();
        });
      });
    }
    return this.written;
  }

  async close(): Promise<void> {
    this.closed = true;
  }
}

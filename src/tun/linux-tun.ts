import { createRequire } from 'node:module';
import type { TunDevice } from './device.js';
import { TunError } from './errors.js';
import { existingLink, ip, ipSync } from './iproute2.js';
import { loadTunIo, type TunIo } from './tunio.js';

interface AddonTun {
  readonly name: string;
  readonly _fd: number;
  on(event: 'data', listener: (packet: Buffer) => void): unknown;
  on(event: 'error', listener: (err: unknown) => void): unknown;
  write(packet: Buffer): boolean;
  release(callback?: () => void): void;
}

export interface TunOptions {
  /** Final interface name (the addon picks tunN itself; we rename). */
  readonly name: string;
  readonly mtu: number;
  /** Addresses with prefix length, e.g. "198.18.255.1/24", "fd00:18:ff::1/64". */
  readonly addresses: readonly string[];
}

const require = createRequire(import.meta.url);

function loadAddon(): { LinuxTun: new () => AddonTun } {
  try {
    return require('@xiaobaidadada/node-tuntap2-wintun') as { LinuxTun: new () => AddonTun };
  } catch (err) {
    throw new TunError('tun_open', `the TUN addon did not load (${(err as Error).message}): run 'npm ci' so it builds`);
  }
}

/** The addon throws strings; this turns anything thrown into one line. */
function describe(thrown: unknown): string {
  return thrown instanceof Error ? thrown.message : String(thrown);
}

/**
 * A kernel TUN device over the tuntap addon. The addon names devices itself and refuses a
 * name, so we rename with iproute2 and configure everything with `ip` from then on (its
 * setters would use the old name). The fd survives the rename.
 */
export class LinuxTun implements TunDevice {
  private closed = false;
  private readonly io: TunIo | null = loadTunIo();
  private pollHandle: unknown;

  private constructor(
    private readonly addon: AddonTun,
    readonly name: string,
    private readonly mtu: number,
  ) {}

  static async open(options: TunOptions): Promise<LinuxTun> {
    const { LinuxTun: Tun } = loadAddon();
    const existing = await existingLink(options.name);
    if (existing === 'other')
      throw new TunError(
        'tun_open',
        `interface ${options.name} exists and is not a TUN device: pass another --tun name`,
      );
    if (existing === 'tun-in-use')
      throw new TunError(
        'tun_open',
        `TUN device ${options.name} is in use by another process (another nodelink?): stop it or pass another --tun name`,
      );
    if (existing === 'tun-persistent') await ip(['link', 'del', 'dev', options.name]).catch(() => undefined);
    let addon: AddonTun;
    try {
      addon = new Tun();
    } catch (thrown) {
      throw new TunError(
        'tun_open',
        `cannot create a TUN device (${describe(thrown)}): run as root or with CAP_NET_ADMIN and /dev/net/tun present`,
      );
    }
    const device = new LinuxTun(addon, options.name, options.mtu);
    try {
      await ip(['link', 'set', 'dev', addon.name, 'name', options.name]);
      // No IPv6 link-local address: the kernel would send router solicitations and MLD reports
      // from it, which no peer routes and the server would count as drops. A deeper queue than
      // the default 500 absorbs bursts while the event loop is busy elsewhere: at 500 a single
      // iperf3 stream saw ~2,300 retransmits in 4 s, at 2000 none.
      await ip([
        'link',
        'set',
        'dev',
        options.name,
        'mtu',
        String(options.mtu),
        'addrgenmode',
        'none',
        'txqueuelen',
        '2000',
      ]);
      for (const address of options.addresses) {
        const args = address.includes(':')
          ? ['-6', 'addr', 'add', address, 'dev', options.name, 'nodad']
          : ['addr', 'add', address, 'dev', options.name];
        await ip(args);
      }
      await ip(['link', 'set', 'dev', options.name, 'up']);
    } catch (err) {
      await device.close();
      throw err;
    }
    return device;
  }

  onPacket(handler: (packet: Buffer) => void): void {
    if (!this.io) {
      this.addon.on('data', handler);
      this.addon.on('error', () => undefined);
      return;
    }
    this.pollHandle = this.io.attach(this.addon._fd, this.mtu, (batch, lengths, count) => {
      let offset = 0;
      for (let i = 0; i < count; i++) {
        const length = lengths[i]!;
        handler(batch.subarray(offset, offset + length));
        offset += length;
      }
    });
  }

  write(packet: Buffer): boolean {
    if (this.closed) return false;
    if (!this.io) return this.addon.write(packet);
    return this.io.write(this.addon._fd, packet) === packet.length;
  }

  /**
   * Deletes the interface (its routes go with it) and releases the fd. A read may still be
   * parked in the threadpool on the fd; it does not keep the process alive past exit.
   */
  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    if (this.pollHandle) this.io?.detach(this.pollHandle);
    ipSync(['link', 'del', 'dev', this.name]);
    try {
      this.addon.release();
    } catch {
      // Already released by the addon on its own error path.
    }
  }
}

import { closeSync } from 'node:fs';
import { createRequire } from 'node:module';
import { constants as osConstants } from 'node:os';
import type { TunDevice } from './device.js';
import { TunError } from './errors.js';
import { existingLink, ip, ipSync } from './iproute2.js';
import { OPEN_UNSUPPORTED, loadTunIo, type TunIo } from './tunio.js';

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

/** The message of a negative errno from tunio. */
function errnoText(result: number): string {
  const name = Object.entries(osConstants.errno).find(([, value]) => value === -result)?.[0];
  return name ?? `errno ${-result}`;
}

/** The fd of a TUN device, and who opened it. */
type TunFd =
  | { readonly kind: 'tunio'; readonly io: TunIo; readonly fd: number }
  | { readonly kind: 'addon'; readonly io: TunIo | null; readonly addon: AddonTun; readonly fd: number };

/**
 * A kernel TUN device. With our native module (tunio.ts) it opens the device itself, under its
 * final name and with a virtio header per packet, so the kernel's offloads can be used
 * (device.ts). Without it, over the tuntap addon, which names devices itself and refuses a
 * name: we rename with iproute2 and configure everything with `ip` from then on (its setters
 * would use the old name). The fd survives the rename.
 */
export class LinuxTun implements TunDevice {
  private closed = false;
  private pollHandle: unknown;
  readonly offloads: boolean;

  private constructor(
    private readonly tun: TunFd,
    readonly name: string,
    private readonly mtu: number,
  ) {
    this.offloads = tun.kind === 'tunio';
  }

  /** Creates the device under `name` through tunio, or with the addon (then named tunN). */
  private static create(name: string): TunFd {
    const io = loadTunIo();
    const fd = io ? io.open(name) : OPEN_UNSUPPORTED;
    if (io && fd !== OPEN_UNSUPPORTED) {
      if (fd < 0)
        throw new TunError(
          'tun_open',
          `cannot create TUN device ${name} (${errnoText(fd)}): run as root or with CAP_NET_ADMIN and /dev/net/tun present`,
        );
      return { kind: 'tunio', io, fd };
    }
    const { LinuxTun: Tun } = loadAddon();
    try {
      const addon = new Tun();
      return { kind: 'addon', io, addon, fd: addon._fd };
    } catch (thrown) {
      throw new TunError(
        'tun_open',
        `cannot create a TUN device (${describe(thrown)}): run as root or with CAP_NET_ADMIN and /dev/net/tun present`,
      );
    }
  }

  static async open(options: TunOptions): Promise<LinuxTun> {
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
    const tun = LinuxTun.create(options.name);
    const device = new LinuxTun(tun, options.name, options.mtu);
    try {
      if (tun.kind === 'addon') await ip(['link', 'set', 'dev', tun.addon.name, 'name', options.name]);
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

  /** The ioctl does not fail on a TUN opened by tunio; if it did, packets would stay plain. */
  setOffloads(on: boolean): void {
    if (this.closed || this.tun.kind !== 'tunio') return;
    this.tun.io.setOffload(this.tun.fd, on);
  }

  /** With tunio, each packet is a view of the one buffer every read batch refills (tunio.ts, attach). */
  onPacket(handler: (packet: Buffer, offload: number) => void): void {
    const { io } = this.tun;
    if (!io) {
      if (this.tun.kind === 'addon') {
        this.tun.addon.on('data', (packet) => handler(packet, 0));
        this.tun.addon.on('error', () => undefined);
      }
      return;
    }
    this.pollHandle = io.attach(this.tun.fd, this.mtu, this.tun.kind === 'tunio', (batch, lengths, count, offloads) => {
      let offset = 0;
      for (let i = 0; i < count; i++) {
        const length = lengths[i]!;
        handler(batch.subarray(offset, offset + length), offloads[i]!);
        offset += length;
      }
    });
  }

  write(packet: Buffer, offload = 0): boolean {
    if (this.closed) return false;
    const { tun } = this;
    if (tun.kind === 'tunio') return tun.io.writeOffload(tun.fd, packet, offload) === packet.length;
    if (!tun.io) return tun.addon.write(packet);
    return tun.io.write(tun.fd, packet) === packet.length;
  }

  /**
   * Deletes the interface (its routes go with it) and releases the fd. A read may still be
   * parked in the threadpool on the fd; it does not keep the process alive past exit.
   */
  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    if (this.pollHandle) this.tun.io?.detach(this.pollHandle);
    ipSync(['link', 'del', 'dev', this.name]);
    if (this.tun.kind === 'tunio') {
      closeSync(this.tun.fd);
      return;
    }
    try {
      this.tun.addon.release();
    } catch {
      // Already released by the addon on its own error path.
    }
  }
}

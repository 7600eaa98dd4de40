import { createRequire } from 'node:module';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

/**
 * Our native TUN I/O (native/tunio.c): uv_poll on the non-blocking fd, batched reads handed
 * to JS in one call, one synchronous write(2) per packet. A TUN it opens itself carries a
 * virtio header per packet, so the kernel's offloads can be turned on (device.ts, `offload`).
 */
export interface TunIo {
  /** The fd of a new TUN device with virtio headers, or -errno. */
  open(name: string): number;
  /** TSO and partial checksums on or off; 0 or -errno. */
  setOffload(fd: number, on: boolean): number;
  /**
   * Calls `onPackets` for each batch read. `batch`, `lengths` and `offloads` belong to the handle
   * and are refilled by the next batch: valid during the call (and the nextTick and microtask
   * queues run right after it), to be copied by whoever keeps a packet longer.
   */
  attach(
    fd: number,
    mtu: number,
    vnet: boolean,
    onPackets: (batch: Buffer, lengths: Uint32Array, count: number, offloads: Uint32Array) => void,
  ): unknown;
  detach(handle: unknown): void;
  /** Bytes written, or -errno (a TUN without virtio headers). */
  write(fd: number, packet: Buffer): number;
  /** Packet bytes written, or -errno (a TUN from `open`). */
  writeOffload(fd: number, packet: Buffer, offload: number): number;
}

/** What `open` answers for a build from before it existed: the addon opens the device then. */
export const OPEN_UNSUPPORTED = -38; // -ENOSYS

/** A build from before virtio headers: its attach takes no vnet flag and hands no offloads. */
interface LegacyTunIo {
  attach(fd: number, mtu: number, onPackets: (batch: Buffer, lengths: Uint32Array, count: number) => void): unknown;
  detach(handle: unknown): void;
  write(fd: number, packet: Buffer): number;
}

/** An older native/build left in place keeps its batched I/O; only offloads are missing. */
function fromLegacy(legacy: LegacyTunIo): TunIo {
  const noOffloads = new Uint32Array(64);
  return {
    open: () => OPEN_UNSUPPORTED,
    setOffload: () => OPEN_UNSUPPORTED,
    attach: (fd, mtu, _vnet, onPackets) =>
      legacy.attach(fd, mtu, (batch, lengths, count) => onPackets(batch, lengths, count, noOffloads)),
    detach: (handle) => legacy.detach(handle),
    write: (fd, packet) => legacy.write(fd, packet),
    writeOffload: (fd, packet) => legacy.write(fd, packet),
  };
}

const require = createRequire(import.meta.url);
const here = path.dirname(fileURLToPath(import.meta.url));

let loaded: TunIo | null | undefined;

/** The native module, or null when it was not built (then the addon's streams are used). */
export function loadTunIo(): TunIo | null {
  if (loaded !== undefined) return loaded;
  if (process.env['NODELINK_TUNIO'] === 'streams') return (loaded = null);
  // src/tun → dist/src/tun at run time; native/ sits at the package root.
  for (const candidate of [path.join(here, '..', '..', '..', 'native'), path.join(here, '..', '..', 'native')]) {
    try {
      const io = require(path.join(candidate, 'build', 'Release', 'tunio.node')) as TunIo | LegacyTunIo;
      return (loaded = 'open' in io ? io : fromLegacy(io));
    } catch {
      // Try the next layout.
    }
  }
  return (loaded = null);
}

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
      const io = require(path.join(candidate, 'build', 'Release', 'tunio.node')) as TunIo;
      // A build from before virtio headers (an old native/build left in place) reads as absent.
      if (typeof io.open !== 'function') continue;
      return (loaded = io);
    } catch {
      // Try the next layout.
    }
  }
  return (loaded = null);
}

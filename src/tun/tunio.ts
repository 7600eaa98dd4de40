import { createRequire } from 'node:module';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

/**
 * Our native TUN I/O (native/tunio.c): uv_poll on the non-blocking fd, batched reads handed
 * to JS in one call, one synchronous write(2) per packet. Measured against the addon's fs
 * streams in README "Performance".
 */
export interface TunIo {
  attach(fd: number, mtu: number, onPackets: (batch: Buffer, lengths: Uint32Array, count: number) => void): unknown;
  detach(handle: unknown): void;
  /** Bytes written, or -errno. */
  write(fd: number, packet: Buffer): number;
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
      return (loaded = require(path.join(candidate, 'build', 'Release', 'tunio.node')) as TunIo);
    } catch {
      // Try the next layout.
    }
  }
  return (loaded = null);
}

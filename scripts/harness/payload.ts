// The deterministic byte stream the stubs serve at /bytes/N (see stub-server.mjs, which makes
// the same stream; keep the two in sync): AES-128-CTR over zeros, so a transfer's integrity is
// checked against a hash computed here without storing the bytes.

import { createCipheriv, createHash } from 'node:crypto';

const BYTES_KEY = createHash('sha256').update('nodelink stub bytes v1').digest().subarray(0, 16);
const BYTES_IV = Buffer.alloc(16);
const CHUNK = 64 * 1024;

/** The bytes a stub serves at /bytes/n. */
export function expectedBytes(n: number): Buffer {
  const cipher = createCipheriv('aes-128-ctr', BYTES_KEY, BYTES_IV);
  return cipher.update(Buffer.alloc(n));
}

/** hex sha256 of what a stub serves at /bytes/n (computed in chunks, fine for large n). */
export function expectedSha256(n: number): string {
  const cipher = createCipheriv('aes-128-ctr', BYTES_KEY, BYTES_IV);
  const hash = createHash('sha256');
  const zero = Buffer.alloc(CHUNK);
  for (let left = n; left > 0; left -= CHUNK) {
    const len = Math.min(left, CHUNK);
    hash.update(cipher.update(len === CHUNK ? zero : zero.subarray(0, len)));
  }
  return hash.digest('hex');
}

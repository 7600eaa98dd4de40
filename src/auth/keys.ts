import { readFileSync, statSync } from 'node:fs';
import { createPrivateKey, createPublicKey, timingSafeEqual, type KeyObject } from 'node:crypto';
import nacl from 'tweetnacl';
import { AuthError } from './errors.js';

export const KEY_BYTES = 32;

/** An Ed25519 identity. `seed` is the secret; it never leaves this process in any form. */
export interface KeyPair {
  readonly seed: Uint8Array;
  readonly publicKey: Uint8Array;
  /** tweetnacl's 64-byte signing key (seed || public key). */
  readonly secretKey: Uint8Array;
}

export function generateSeed(): Uint8Array {
  return nacl.randomBytes(KEY_BYTES);
}

/** Derives the public key with OpenSSL: the same bytes as nacl.sign.keyPair.fromSeed, ~50x faster. */
export function keyPairFromSeed(seed: Uint8Array): KeyPair {
  const privateKey = createPrivateKey({ key: pkcs8Der({ seed }), format: 'der', type: 'pkcs8' });
  const jwk = privateKey.export({ format: 'jwk' });
  const publicKey = new Uint8Array(Buffer.from(jwk.x!, 'base64url'));
  const pair = { seed, publicKey, secretKey: new Uint8Array(Buffer.concat([seed, publicKey])) };
  privateKeyObjects.set(pair, privateKey);
  return pair;
}

export function encodeKey(key: Uint8Array): string {
  return Buffer.from(key).toString('base64');
}

/** Parses a base64 32-byte key; `what` names it in the error ("--server-key", "peer node-a"). */
export function decodeKey(text: string, what: string): Uint8Array {
  const trimmed = text.trim();
  const bytes = Buffer.from(trimmed, 'base64');
  if (!/^[A-Za-z0-9+/]+={0,2}$/.test(trimmed) || bytes.length !== KEY_BYTES) {
    throw new AuthError(
      'bad_key',
      `${what} is not a key: expected base64 of 32 bytes, as printed by 'nodelink keygen' or 'nodelink pubkey'`,
    );
  }
  return new Uint8Array(bytes);
}

/** Reads a file a flag names; one that is missing or unreadable fails as "LABEL PATH does not exist: FIX". */
export function readNamedFile(
  path: string,
  label: string,
  fixMissing: string,
  fail: (message: string) => Error,
): string {
  try {
    return readFileSync(path, 'utf8');
  } catch (err) {
    const reason = (err as NodeJS.ErrnoException).code === 'ENOENT' ? 'does not exist' : 'cannot be read';
    throw fail(`${label} ${path} ${reason}: ${fixMissing}`);
  }
}

/** The `-----BEGIN CERTIFICATE-----` blocks of a PEM text, in order (a chain: leaf first). */
export function pemCertificates(text: string): string[] {
  return text.match(/-----BEGIN CERTIFICATE-----[\s\S]+?-----END CERTIFICATE-----/g) ?? [];
}

/**
 * Reads a PEM file a flag names (as readNamedFile) and returns its certificates, in order; a file
 * with none fails as "LABEL PATH holds no PEM certificate".
 */
export function readPemCertificates(
  path: string,
  label: string,
  fixMissing: string,
  fail: (message: string) => Error,
): string[] {
  const pems = pemCertificates(readNamedFile(path, label, fixMissing, fail));
  if (pems.length === 0) throw fail(`${label} ${path} holds no PEM certificate: expected -----BEGIN CERTIFICATE-----`);
  return pems;
}

/**
 * Reads a file holding a secret. Like ssh and wg, refuse a file that others can read: a leaked
 * node key lets anyone on the network impersonate that node. `label` names it in the error
 * ("key file", "--cert-key file"); `fixMissing` says how to create it; `fail` builds the error.
 */
export function readSecretFile(
  path: string,
  label: string,
  fixMissing: string,
  fail: (message: string) => Error,
): string {
  const text = readNamedFile(path, label, fixMissing, fail);
  const mode = statSync(path).mode;
  if ((mode & 0o077) !== 0) {
    throw fail(
      `${label} ${path} is readable by group or others (mode ${(mode & 0o777).toString(8)}): run 'chmod 600 ${path}'`,
    );
  }
  return text;
}

export function readKeyFile(path: string): KeyPair {
  const text = readSecretFile(
    path,
    'key file',
    `create it with 'umask 077; nodelink keygen > ${path}'`,
    (message) => new AuthError('key_file', message),
  );
  return keyPairFromSeed(decodeKey(text, `key file ${path}`));
}

export function keysEqual(a: Uint8Array, b: Uint8Array): boolean {
  return a.length === b.length && timingSafeEqual(a, b);
}

const PKCS8_ED25519_PREFIX = Buffer.from('302e020100300506032b657004220420', 'hex');
const SPKI_ED25519_PREFIX = Buffer.from('302a300506032b6570032100', 'hex');

/** DER encodings of the same key, for the TLS certificate (node:crypto and WebCrypto take DER). */
export function pkcs8Der(pair: Pick<KeyPair, 'seed'>): Buffer {
  return Buffer.concat([PKCS8_ED25519_PREFIX, pair.seed]);
}

export function spkiDer(pair: KeyPair): Buffer {
  return Buffer.concat([SPKI_ED25519_PREFIX, pair.publicKey]);
}

/**
 * The same for public keys, which a server makes at every hello it verifies: from the raw key
 * (JWK), as OpenSSL's DER decoder costs several times more than the key itself, and kept in a
 * cache by key, bounded because the keys come from the network, and emptied when full so that
 * a client cycling through fresh keys costs memory no more than this.
 */
const PUBLIC_KEY_CACHE_LIMIT = 16_384;
const publicKeyObjects = new Map<string, KeyObject>();

export function publicKeyObject(publicKey: Uint8Array): KeyObject {
  const bytes = Buffer.from(publicKey.buffer, publicKey.byteOffset, publicKey.byteLength);
  const text = bytes.toString('base64');
  let key = publicKeyObjects.get(text);
  if (!key) {
    key = createPublicKey({ key: { kty: 'OKP', crv: 'Ed25519', x: bytes.toString('base64url') }, format: 'jwk' });
    if (publicKeyObjects.size >= PUBLIC_KEY_CACHE_LIMIT) publicKeyObjects.clear();
    publicKeyObjects.set(text, key);
  }
  return key;
}

/**
 * OpenSSL parses a key's DER in ~0.66 ms here, ten times the cost of the signature it is for:
 * a client signs a hello at every connect, so each key pair keeps its KeyObject.
 */
const privateKeyObjects = new WeakMap<KeyPair, KeyObject>();

export function privateKeyObject(pair: KeyPair): KeyObject {
  let key = privateKeyObjects.get(pair);
  if (!key) {
    key = createPrivateKey({ key: pkcs8Der(pair), format: 'der', type: 'pkcs8' });
    privateKeyObjects.set(pair, key);
  }
  return key;
}

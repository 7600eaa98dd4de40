import { sign, verify } from 'node:crypto';
import { AuthError } from './errors.js';
import { KEY_BYTES, privateKeyObject, publicKeyObject, type KeyPair } from './keys.js';

/*
 * Signing and verifying use node:crypto (OpenSSL), not tweetnacl: the signatures are the same
 * Ed25519 bytes (a unit test checks both ways), and a pure-JS verify is far too slow for a
 * server that must verify a hello for every node of a reconnect storm.
 */
function ed25519Verify(message: Uint8Array, signature: Uint8Array, publicKey: Uint8Array): boolean {
  try {
    return verify(null, message, publicKeyObject(publicKey), signature);
  } catch {
    return false;
  }
}

/**
 * The client's hello: who it is, what it announces, and proof that it holds its key in THIS
 * TLS session.
 *
 *   publicKey [32] | signature [64] | body [UTF-8 JSON: { "name": string, "routes": string[],
 *                                                         "held"?: string[], "offload"?: true }]
 *
 * `held` names the server replicas (server IDs from their welcomes) this node already holds a
 * session to behind the same address: a replica that finds itself there refuses the connection
 * (already_held) instead of replacing the session the node has. `offload` offers Offload frames
 * (protocol/frame.ts); a server that predates them ignores it.
 *
 * The signature covers HELLO_CONTEXT | exporter | body, where exporter is the TLS 1.3 keying
 * material exported under EXPORTER_LABEL. Both ends derive the same exporter only inside the
 * same TLS session, so a hello recorded from one session fails verification in any other: it
 * cannot be replayed, nor relayed by a man in the middle who terminates TLS himself.
 */
export const EXPORTER_LABEL = 'EXPORTER-nodelink-hello-v1';
export const EXPORTER_BYTES = 32;
const HELLO_CONTEXT = Buffer.from('nodelink hello v1\0');
const SIGNATURE_BYTES = 64;
const FIXED_BYTES = KEY_BYTES + SIGNATURE_BYTES;

export interface HelloBody {
  readonly name: string;
  readonly routes: readonly string[];
  /** Server IDs of the replicas this node holds a session to; absent or empty for none. */
  readonly held?: readonly string[];
  /**
   * Kubernetes mode: the pod's projected service-account token. It travels only inside the
   * signed body of a channel-bound hello, so it reaches only a server the client authenticated.
   */
  readonly token?: string;
  /** The node takes and sends Offload frames, if the server agrees in its welcome. */
  readonly offload?: boolean;
}

/** Entries of `held` at most, and their length: server IDs, one per replica behind an address. */
const MAX_HELD = 16;
const MAX_HELD_LENGTH = 63;

/** A projected service-account token is about 1 KiB; anything far longer is refused unread. */
export const MAX_HELLO_TOKEN_BYTES = 8192;

export interface Hello extends HelloBody {
  readonly publicKey: Uint8Array;
}

function signedMessage(exporter: Uint8Array, body: Uint8Array): Uint8Array {
  return Buffer.concat([HELLO_CONTEXT, exporter, body]);
}

export function encodeHello(pair: KeyPair, exporter: Uint8Array, body: HelloBody): Buffer {
  // Without held replicas or a token the body is what it was before they existed (undefined is
  // left out).
  const held = body.held && body.held.length > 0 ? body.held : undefined;
  const bodyBytes = Buffer.from(
    JSON.stringify({
      name: body.name,
      routes: body.routes,
      held,
      token: body.token,
      offload: body.offload === true || undefined,
    }),
  );
  const signature = sign(null, signedMessage(exporter, bodyBytes), privateKeyObject(pair));
  return Buffer.concat([pair.publicKey, signature, bodyBytes]);
}

/**
 * Parses and verifies a hello against this session's exporter. Throws AuthError
 * ('bad_hello' or 'bad_signature'); it does not decide whether the key is authorized.
 */
export function verifyHello(payload: Uint8Array, exporter: Uint8Array): Hello {
  if (payload.length <= FIXED_BYTES) throw new AuthError('bad_hello', 'hello is truncated');
  const publicKey = payload.subarray(0, KEY_BYTES);
  const signature = payload.subarray(KEY_BYTES, FIXED_BYTES);
  const bodyBytes = payload.subarray(FIXED_BYTES);
  if (!ed25519Verify(signedMessage(exporter, bodyBytes), signature, publicKey)) {
    throw new AuthError('bad_signature', 'hello signature does not verify for this TLS session (replayed or forged)');
  }
  let parsed: unknown;
  try {
    parsed = JSON.parse(Buffer.from(bodyBytes).toString('utf8'));
  } catch {
    throw new AuthError('bad_hello', 'hello body is not JSON');
  }
  // Any key holder can sign any body: `null`, a number or an array must fail here, not crash.
  const body = (typeof parsed === 'object' && parsed !== null ? parsed : {}) as Partial<HelloBody>;
  if (
    typeof body.name !== 'string' ||
    body.name.length === 0 ||
    body.name.length > 253 ||
    !Array.isArray(body.routes) ||
    body.routes.length > 256 ||
    !body.routes.every((r) => typeof r === 'string' && r.length <= 64)
  ) {
    throw new AuthError('bad_hello', 'hello body must hold a name and at most 256 routes');
  }
  const held = body.held ?? [];
  if (
    !Array.isArray(held) ||
    held.length > MAX_HELD ||
    !held.every((id) => typeof id === 'string' && id.length > 0 && id.length <= MAX_HELD_LENGTH)
  ) {
    throw new AuthError('bad_hello', `hello held must list at most ${MAX_HELD} server IDs`);
  }
  if (body.token !== undefined && (typeof body.token !== 'string' || body.token.length > MAX_HELLO_TOKEN_BYTES)) {
    throw new AuthError('bad_hello', `hello token must be a string of at most ${MAX_HELLO_TOKEN_BYTES} bytes`);
  }
  return {
    publicKey: new Uint8Array(publicKey),
    name: body.name,
    routes: body.routes,
    held,
    ...(body.token === undefined ? {} : { token: body.token }),
    ...(body.offload === true ? { offload: true } : {}),
  };
}

import { X509Certificate } from 'node:crypto';
import { createSecureContext, type ConnectionOptions, type SecureContext, type TLSSocket } from 'node:tls';
import { encodeKey, keysEqual, readPemCertificates } from '../auth/index.js';
import { NodelinkError } from '../errors.js';
import type { DialFailure } from '../reasons.js';

/**
 * How the client decides that it talks to the real server, before it sends its hello:
 *
 * - pinned key (`--server-key`): the Ed25519 key in the server's certificate must be this one;
 *   TLS 1.3's CertificateVerify proves the server holds it. No CA is involved.
 * - CA (`--ca FILE`): the server's certificate chain must verify against these CA certificates
 *   (and only these, not the system store), and name the server: its IP address, or
 *   `--server-name` when given.
 *
 * With both, both must hold. With neither, nothing is trusted: config refuses that.
 */
export interface ServerTrust {
  readonly serverKey?: Uint8Array;
  /** PEM CA certificates; when set, the TLS stack verifies the chain and the name against them. */
  readonly ca?: string;
  /** Name to send as SNI and to find in the server's certificate, instead of the host (--server-name). */
  readonly serverName?: string;
}

/** A --ca file that cannot be used. */
export class TrustError extends NodelinkError {
  constructor(message: string) {
    super('ca_file', message);
  }
}

/** Reads and checks a --ca file: PEM certificates, at least one, all parseable. */
export function readCaFile(path: string): string {
  const pems = readPemCertificates(
    path,
    '--ca file',
    "pass the PEM certificate of the CA that signed the server's certificate",
    (message) => new TrustError(message),
  );
  for (const [index, pem] of pems.entries()) {
    try {
      new X509Certificate(pem);
    } catch {
      throw new TrustError(`--ca file ${path}: certificate #${index + 1} cannot be parsed`);
    }
  }
  return pems.join('\n') + '\n';
}

/** The TLS server name to send: --server-name, else the host unless it is an IP literal (SNI takes names only). */
export function sniFor(host: string, serverName?: string): string | undefined {
  return serverName ?? (/^[0-9.]+$/.test(host) || host.includes(':') ? undefined : host);
}

/**
 * Without a secureContext every tls.connect builds its own (an SSL_CTX with its certificate
 * store): a quarter of the load generator's CPU in a 5,000-peer reconnect storm. Dials share
 * one per trust setting; one entry is enough, as every dial of a process uses the same --ca.
 */
let sharedContext: { ca: string | undefined; context: SecureContext } | undefined;

/** The TLS context of every dial to a server: TLS 1.3 only, and the --ca certificates if any. */
export function clientTlsContext(trust: ServerTrust): SecureContext {
  if (!sharedContext || sharedContext.ca !== trust.ca) {
    sharedContext = {
      ca: trust.ca,
      context: createSecureContext({ minVersion: 'TLSv1.3', maxVersion: 'TLSv1.3', ca: trust.ca }),
    };
  }
  return sharedContext.context;
}

/**
 * How to dial a server: the client and `nodelink diagnose` open the same TLS session. Trust is
 * decided once the session is up, by checkServer (pinned key and/or --ca chain), which can say
 * why it refuses; Node still verifies the chain and the name against `ca` for it, so the socket
 * is opened with rejectUnauthorized false.
 */
export function clientTlsOptions(host: string, port: number, trust: ServerTrust): ConnectionOptions {
  return {
    host,
    port,
    servername: sniFor(host, trust.serverName),
    secureContext: clientTlsContext(trust),
    rejectUnauthorized: false,
  };
}

/** The raw Ed25519 key of a certificate, if it has one. */
function ed25519Key(certificate: X509Certificate | undefined): Uint8Array | undefined {
  if (!certificate || certificate.publicKey.asymmetricKeyType !== 'ed25519') return undefined;
  const jwk = certificate.publicKey.export({ format: 'jwk' });
  return jwk.x ? new Uint8Array(Buffer.from(jwk.x, 'base64url')) : undefined;
}

/**
 * On Node 20 a second getPeerX509Certificate() of the same socket comes back empty (no key, no
 * fingerprint), so each socket's certificate is read once and kept here.
 */
const peerCertificates = new WeakMap<TLSSocket, X509Certificate | undefined>();

function peerCertificate(socket: TLSSocket): X509Certificate | undefined {
  if (!peerCertificates.has(socket)) peerCertificates.set(socket, socket.getPeerX509Certificate());
  return peerCertificates.get(socket);
}

/** The raw Ed25519 key of the server's certificate, if it has one. */
export function serverPublicKey(socket: TLSSocket): Uint8Array | undefined {
  return ed25519Key(peerCertificate(socket));
}

/** How `status` names the server: its Ed25519 key, or else its certificate's SHA-256 fingerprint. */
export function serverIdentity(socket: TLSSocket): string | undefined {
  const certificate = peerCertificate(socket);
  const key = ed25519Key(certificate);
  if (key) return encodeKey(key);
  return certificate?.fingerprint256 ? `sha256:${certificate.fingerprint256}` : undefined;
}

/** Why a server is not trusted: the handshake-failure name for metrics, and one line for people. */
export interface Untrusted {
  readonly failure: Extract<DialFailure, 'untrusted_certificate' | 'server_key_mismatch' | 'no_trust'>;
  readonly message: string;
}

/**
 * Checks a TLS session that has just connected. Returns undefined when the server is trusted,
 * else why not and what to check. The socket must have been opened with clientTlsOptions, so
 * that Node computed `authorized` (chain and name) without tearing the socket down before we
 * could say why.
 */
export function checkServer(socket: TLSSocket, trust: ServerTrust): Untrusted | undefined {
  // A resumed session shows no certificate, and needs none: a client offers only tickets from
  // sessions it checked, against this same trust, and resuming one proves the server opened it,
  // which takes the key its tickets are sealed with (derived from the server key).
  if (socket.isSessionReused()) return undefined;
  if (trust.ca !== undefined && !socket.authorized) {
    const why = String(socket.authorizationError ?? 'unverified');
    return {
      failure: 'untrusted_certificate',
      message: `server certificate does not verify against --ca (${why}): wrong server, a certificate from another CA, or a name that is not in it (see --server-name)`,
    };
  }
  if (trust.serverKey) {
    const presented = serverPublicKey(socket);
    if (!presented || !keysEqual(presented, trust.serverKey)) {
      return {
        failure: 'server_key_mismatch',
        message: `server key ${presented ? encodeKey(presented) : '(not Ed25519)'} does not match --server-key: wrong server, or --server-key is stale (check with nodelink pubkey on the server)`,
      };
    }
  }
  if (trust.ca === undefined && !trust.serverKey)
    return { failure: 'no_trust', message: 'no --server-key or --ca to check the server against' };
  return undefined;
}

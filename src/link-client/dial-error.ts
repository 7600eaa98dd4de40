import { NodelinkError } from '../errors.js';
import type { DialFailure } from '../reasons.js';

/** A dial the client gave up on itself, for a cause it names where it knows it. */
export class DialError extends NodelinkError {
  declare readonly code: DialFailure;

  constructor(code: DialFailure, message: string) {
    super(code, message);
  }
}

/** What a socket's errno code means for a dial. */
const ERRNO_FAILURES: ReadonlyMap<string, DialFailure> = new Map([
  ['ECONNREFUSED', 'connection_refused'],
  ['ENOTFOUND', 'dns'],
  ['EAI_AGAIN', 'dns'],
  ['EAI_NONAME', 'dns'],
  ['EAI_FAIL', 'dns'],
  ['EHOSTUNREACH', 'unreachable'],
  ['ENETUNREACH', 'unreachable'],
  ['ETIMEDOUT', 'handshake_timeout'],
  ['ECONNRESET', 'connection_reset'],
  ['EPIPE', 'connection_reset'],
  ['EPROTO', 'tls_handshake_failed'],
]);

/**
 * Names the error that ended a dial: a DialError by its code, a socket error by its errno or
 * OpenSSL code (ERR_SSL_…, a TLS alert), anything else as connection_error.
 */
export function dialFailureOf(err: unknown): DialFailure {
  if (err instanceof DialError) return err.code;
  const code = (err as NodeJS.ErrnoException | undefined)?.code;
  if (typeof code !== 'string') return 'connection_error';
  const known = ERRNO_FAILURES.get(code);
  if (known) return known;
  if (code.startsWith('ERR_SSL_') || code.startsWith('ERR_TLS_')) return 'tls_handshake_failed';
  return 'connection_error';
}

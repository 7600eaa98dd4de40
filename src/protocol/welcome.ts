import { isIP } from 'node:net';
import { ProtocolError } from './errors.js';

/**
 * The Welcome payload: what a node learns from the server when its hello is accepted. Its
 * layout is in frame.ts; both ends and `nodelink diagnose` encode and read it only here.
 */
export interface Welcome {
  /** The server's tunnel CIDRs (one per family), as ADDRESS/LENGTH text. */
  readonly tunnelCidrs: readonly string[];
  /** The server's own address inside each tunnel CIDR, as text. */
  readonly serverAddresses: readonly string[];
}

/** More than any server sends (one of each per address family), few enough to bound the parse. */
const MAX_ENTRIES = 16;

export function encodeWelcome(welcome: Welcome): Buffer {
  return Buffer.from(
    JSON.stringify({ tunnelCidrs: welcome.tunnelCidrs, serverAddresses: welcome.serverAddresses }),
    'utf8',
  );
}

/**
 * Reads and checks a Welcome payload. Throws ProtocolError 'bad_payload' naming the field at
 * fault. A missing serverAddresses reads as none (a server from before it existed); fields this
 * version does not know are ignored.
 */
export function decodeWelcome(payload: Uint8Array): Welcome {
  let parsed: unknown;
  try {
    parsed = JSON.parse(Buffer.from(payload.buffer, payload.byteOffset, payload.byteLength).toString('utf8'));
  } catch {
    throw new ProtocolError('bad_payload', 'welcome is not JSON');
  }
  if (typeof parsed !== 'object' || parsed === null || Array.isArray(parsed)) {
    throw new ProtocolError('bad_payload', 'welcome is not a JSON object');
  }
  const fields = parsed as Record<string, unknown>;
  return {
    tunnelCidrs: texts(fields['tunnelCidrs'], 'tunnelCidrs', isCidrText),
    serverAddresses:
      fields['serverAddresses'] === undefined ? [] : texts(fields['serverAddresses'], 'serverAddresses', isAddressText),
  };
}

function texts(value: unknown, field: string, valid: (text: string) => boolean): string[] {
  if (!Array.isArray(value) || value.length > MAX_ENTRIES) {
    throw new ProtocolError('bad_payload', `welcome ${field} is not a list of at most ${MAX_ENTRIES} entries`);
  }
  for (const entry of value) {
    if (typeof entry !== 'string' || !valid(entry)) {
      throw new ProtocolError(
        'bad_payload',
        `welcome ${field} holds ${JSON.stringify(entry)}, not an IP address${field === 'tunnelCidrs' ? '/length' : ''}`,
      );
    }
  }
  return value as string[];
}

function isAddressText(text: string): boolean {
  return isIP(text) !== 0;
}

function isCidrText(text: string): boolean {
  const slash = text.indexOf('/');
  const family = isIP(text.slice(0, slash));
  const length = text.slice(slash + 1);
  return (
    slash > 0 && family !== 0 && /^(0|[1-9][0-9]{0,2})$/.test(length) && Number(length) <= (family === 4 ? 32 : 128)
  );
}

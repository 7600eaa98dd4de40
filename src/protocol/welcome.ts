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
  /**
   * This replica's name, unique among the replicas behind the address the node dialed (server
   * ID); '' from a server that predates it, which is then the only one.
   */
  readonly serverId: string;
  /** How many replicas serve behind that address (server count); 1 from an older server. */
  readonly serverCount: number;
  /**
   * The routes this session carries, as the server authorized them. A node in Kubernetes mode
   * that announced none takes these (its Node object's addresses and pod CIDRs).
   */
  readonly routes?: readonly string[];
  /** The server agreed to Offload frames (the hello offered them); false from an older server. */
  readonly offload?: boolean;
}

/** What a server ID may be: also the form of each entry of the hello's list of held replicas. */
export const SERVER_ID_PATTERN = /^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$/;
/** Replicas behind one address at most. */
export const MAX_SERVER_COUNT = 16;

/** More than any server sends (one of each per address family), few enough to bound the parse. */
const MAX_ENTRIES = 16;
/** As many routes as a hello may announce. */
const MAX_ROUTES = 256;

export function encodeWelcome(welcome: Welcome): Buffer {
  return Buffer.from(
    JSON.stringify({
      tunnelCidrs: welcome.tunnelCidrs,
      serverAddresses: welcome.serverAddresses,
      // A server without an ID leaves it out, as an older one does ('' is no ID on the wire).
      serverId: welcome.serverId || undefined,
      serverCount: welcome.serverCount,
      routes: welcome.routes,
      offload: welcome.offload === true || undefined,
    }),
    'utf8',
  );
}

/**
 * Reads and checks a Welcome payload. Throws ProtocolError 'bad_payload' naming the field at
 * fault. A field a server from before it existed leaves out reads as that server meant it: no
 * serverAddresses, serverId '', serverCount 1. Fields this version does not know are ignored.
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
    serverId: serverId(fields['serverId']),
    serverCount: serverCount(fields['serverCount']),
    ...(fields['routes'] === undefined ? {} : { routes: texts(fields['routes'], 'routes', isCidrText, MAX_ROUTES) }),
    ...(fields['offload'] === true ? { offload: true } : {}),
  };
}

function serverId(value: unknown): string {
  if (value === undefined) return '';
  if (typeof value !== 'string' || !SERVER_ID_PATTERN.test(value))
    throw new ProtocolError(
      'bad_payload',
      `welcome serverId ${JSON.stringify(value)} is not 1-63 letters, digits, . _ -`,
    );
  return value;
}

function serverCount(value: unknown): number {
  if (value === undefined) return 1;
  if (typeof value !== 'number' || !Number.isInteger(value) || value < 1 || value > MAX_SERVER_COUNT)
    throw new ProtocolError(
      'bad_payload',
      `welcome serverCount ${JSON.stringify(value)} is not a whole number from 1 to ${MAX_SERVER_COUNT}`,
    );
  return value;
}

function texts(value: unknown, field: string, valid: (text: string) => boolean, max = MAX_ENTRIES): string[] {
  if (!Array.isArray(value) || value.length > max) {
    throw new ProtocolError('bad_payload', `welcome ${field} is not a list of at most ${max} entries`);
  }
  for (const entry of value) {
    if (typeof entry !== 'string' || !valid(entry)) {
      throw new ProtocolError(
        'bad_payload',
        `welcome ${field} holds ${JSON.stringify(entry)}, not an IP address${valid === isCidrText ? '/length' : ''}`,
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

import { readFileSync } from 'node:fs';
import { Prefix } from '../routing/index.js';
import { NodelinkError } from '../errors.js';
import { AuthError } from './errors.js';
import { decodeKey, encodeKey, keysEqual } from './keys.js';
import type { Hello } from './hello.js';

/** One authorized node, as the peers file states it (like a WireGuard [Peer] with AllowedIPs). */
export interface PeerConfig {
  readonly name: string;
  readonly publicKey: Uint8Array;
  readonly publicKeyText: string;
  readonly allowedIPs: readonly Prefix[];
}

/** The peers file, validated as a whole: a bad entry rejects the file, naming the entry. */
export class PeerRegistry {
  private readonly byKey = new Map<string, PeerConfig>();

  constructor(readonly peers: readonly PeerConfig[]) {
    for (const peer of peers) this.byKey.set(peer.publicKeyText, peer);
  }

  findByKey(publicKey: Uint8Array): PeerConfig | undefined {
    const peer = this.byKey.get(encodeKey(publicKey));
    return peer && keysEqual(peer.publicKey, publicKey) ? peer : undefined;
  }

  /**
   * Decides whether a verified hello may join: the key must be known, the name must be the
   * one the peers file gives that key, and every announced route must lie in its allowedIPs.
   */
  authorize(hello: Hello): { peer: PeerConfig; routes: Prefix[] } {
    const peer = this.findByKey(hello.publicKey);
    if (!peer) {
      throw new AuthError('unknown_key', `key ${encodeKey(hello.publicKey)} is not in the server's peers file: add it there`);
    }
    if (peer.name !== hello.name) {
      throw new AuthError('name_mismatch', `this key belongs to peer "${peer.name}", not "${hello.name}": fix --name or the peers file`);
    }
    const routes: Prefix[] = [];
    for (const text of hello.routes) {
      let route: Prefix;
      try {
        route = Prefix.parse(text);
      } catch (err) {
        throw new AuthError('bad_hello', `route ${text}: ${(err as Error).message}`);
      }
      if (!peer.allowedIPs.some((allowed) => allowed.contains(route))) {
        throw new AuthError('route_not_allowed',
          `route ${route} is outside allowedIPs of peer "${peer.name}" (${peer.allowedIPs.join(', ')}): fix --route or the peers file`);
      }
      routes.push(route);
    }
    return { peer, routes };
  }
}

export function parsePeers(text: string, source: string, tunnelCidrs: readonly Prefix[] = []): PeerRegistry {
  const fail = (why: string): never => {
    throw new AuthError('peers_file', `peers file ${source}: ${why}`);
  };
  let doc: unknown;
  try {
    doc = JSON.parse(text);
  } catch (err) {
    fail(`not valid JSON (${(err as Error).message})`);
  }
  const list = (doc as { peers?: unknown })?.peers;
  if (!Array.isArray(list)) fail('expected {"peers": [ { "name", "publicKey", "allowedIPs" } ]}');
  const peers: PeerConfig[] = [];
  for (const [index, raw] of (list as unknown[]).entries()) {
    const entry = raw as { name?: unknown; publicKey?: unknown; allowedIPs?: unknown };
    const label = typeof entry?.name === 'string' ? `peer "${entry.name}"` : `peer #${index + 1}`;
    if (typeof entry?.name !== 'string' || !/^[A-Za-z0-9][A-Za-z0-9._-]{0,252}$/.test(entry.name)) {
      fail(`${label}: "name" must be a node name (letters, digits, . _ -)`);
    }
    if (typeof entry.publicKey !== 'string') fail(`${label}: "publicKey" is missing`);
    if (!Array.isArray(entry.allowedIPs) || entry.allowedIPs.length === 0) fail(`${label}: "allowedIPs" must be a non-empty list of CIDRs`);
    let publicKey: Uint8Array;
    let allowedIPs: Prefix[];
    try {
      publicKey = decodeKey(entry.publicKey as string, `${label} publicKey`);
      allowedIPs = (entry.allowedIPs as unknown[]).map((cidr) => Prefix.parse(String(cidr)));
    } catch (err) {
      fail(`${label}: ${err instanceof NodelinkError ? err.message : String(err)}`);
    }
    peers.push({ name: entry.name as string, publicKey: publicKey!, publicKeyText: encodeKey(publicKey!), allowedIPs: allowedIPs! });
  }
  checkConflicts(peers, tunnelCidrs, fail);
  return new PeerRegistry(peers);
}

function checkConflicts(peers: PeerConfig[], tunnelCidrs: readonly Prefix[], fail: (why: string) => never): void {
  const problems: string[] = [];
  for (let i = 0; i < peers.length; i++) {
    const a = peers[i]!;
    for (const cidr of tunnelCidrs) {
      for (const ip of a.allowedIPs) if (ip.overlaps(cidr)) problems.push(`peer "${a.name}" claims ${ip}, inside the tunnel CIDR ${cidr}`);
    }
    for (let j = i + 1; j < peers.length; j++) {
      const b = peers[j]!;
      if (a.name === b.name) problems.push(`two peers are named "${a.name}"`);
      if (a.publicKeyText === b.publicKeyText) problems.push(`peers "${a.name}" and "${b.name}" share a public key`);
      for (const x of a.allowedIPs) {
        for (const y of b.allowedIPs) if (x.overlaps(y)) problems.push(`peers "${a.name}" (${x}) and "${b.name}" (${y}) overlap`);
      }
    }
  }
  if (problems.length > 0) fail(problems.join('; '));
}

export function readPeersFile(path: string, tunnelCidrs: readonly Prefix[] = []): PeerRegistry {
  let text: string;
  try {
    text = readFileSync(path, 'utf8');
  } catch (err) {
    const reason = (err as NodeJS.ErrnoException).code === 'ENOENT' ? 'does not exist' : 'cannot be read';
    throw new AuthError('peers_file', `peers file ${path} ${reason}: pass --peers with a JSON file of authorized nodes`);
  }
  return parsePeers(text, path, tunnelCidrs);
}

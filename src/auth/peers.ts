import { readFileSync } from 'node:fs';
import { Prefix, PrefixTable } from '../routing/index.js';
import { userMessage } from '../errors.js';
import { AuthError } from './errors.js';
import { decodeKey, encodeKey, keysEqual } from './keys.js';
import { whereJsonFails } from './file-errors.js';
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
  private readonly byName = new Map<string, PeerConfig>();

  constructor(readonly peers: readonly PeerConfig[]) {
    for (const peer of peers) {
      this.byKey.set(peer.publicKeyText, peer);
      this.byName.set(peer.name, peer);
    }
  }

  findByName(name: string): PeerConfig | undefined {
    return this.byName.get(name);
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
      throw new AuthError(
        'unknown_key',
        `key ${encodeKey(hello.publicKey)} is not in the server's peers file: add it there`,
      );
    }
    if (peer.name !== hello.name) {
      throw new AuthError(
        'name_mismatch',
        `this key belongs to peer "${peer.name}", not "${hello.name}": fix --name or the peers file`,
      );
    }
    return this.authorizeRoutes(peer, hello.routes);
  }

  /** Every announced route must lie inside the peer's allowedIPs. */
  authorizeRoutes(peer: PeerConfig, announced: readonly string[]): { peer: PeerConfig; routes: Prefix[] } {
    const routes: Prefix[] = [];
    for (const text of announced) {
      let route: Prefix;
      try {
        route = Prefix.parse(text);
      } catch (err) {
        throw new AuthError('bad_hello', `route ${text}: ${(err as Error).message}`);
      }
      if (!peer.allowedIPs.some((allowed) => allowed.contains(route))) {
        throw new AuthError(
          'route_not_allowed',
          `route ${route} is outside allowedIPs of peer "${peer.name}" (${peer.allowedIPs.join(', ')}): fix --route or the peers file`,
        );
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
  } catch {
    // Never the parser's message: it quotes the file, which may be a key passed by mistake.
    fail(
      `not valid JSON (${whereJsonFails(text)}; content not shown): --peers takes a JSON file {"peers": [ { "name", "publicKey", "allowedIPs" } ]}`,
    );
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
    if (!Array.isArray(entry.allowedIPs) || entry.allowedIPs.length === 0)
      fail(`${label}: "allowedIPs" must be a non-empty list of CIDRs`);
    let publicKey: Uint8Array;
    let allowedIPs: Prefix[];
    try {
      publicKey = decodeKey(entry.publicKey as string, `${label} publicKey`);
      allowedIPs = (entry.allowedIPs as unknown[]).map((cidr) => Prefix.parse(String(cidr)));
    } catch (err) {
      fail(`${label}: ${userMessage(err)}`);
    }
    peers.push({
      name: entry.name as string,
      publicKey: publicKey!,
      publicKeyText: encodeKey(publicKey!),
      allowedIPs: allowedIPs!,
    });
  }
  checkConflicts(peers, tunnelCidrs, fail);
  return new PeerRegistry(peers);
}

/**
 * Refuses a peers file whose entries collide. Overlaps are found through a prefix table, shortest
 * prefixes first, so a later prefix overlaps an earlier one exactly when the table already holds
 * a prefix containing its network address: O(n) probes instead of comparing every pair, which
 * took over a second at 5,000 peers.
 */
function checkConflicts(peers: PeerConfig[], tunnelCidrs: readonly Prefix[], fail: (why: string) => never): void {
  const problems: string[] = [];
  const byName = new Map<string, PeerConfig>();
  const byKey = new Map<string, PeerConfig>();
  for (const peer of peers) {
    if (byName.has(peer.name)) problems.push(`two peers are named "${peer.name}"`);
    else byName.set(peer.name, peer);
    const sharing = byKey.get(peer.publicKeyText);
    if (sharing) problems.push(`peers "${sharing.name}" and "${peer.name}" share a public key`);
    else byKey.set(peer.publicKeyText, peer);
    for (const cidr of tunnelCidrs) {
      for (const ip of peer.allowedIPs)
        if (ip.overlaps(cidr)) problems.push(`peer "${peer.name}" claims ${ip}, inside the tunnel CIDR ${cidr}`);
    }
  }
  interface Claim {
    readonly peer: PeerConfig;
    readonly ip: Prefix;
  }
  const claims: Claim[] = peers.flatMap((peer) => peer.allowedIPs.map((ip) => ({ peer, ip })));
  claims.sort((a, b) => a.ip.length - b.ip.length);
  const claimed = new PrefixTable<Claim>();
  for (const claim of claims) {
    const owner = claimed.lookup(claim.ip.family, claim.ip.bytes);
    if (owner && owner.peer !== claim.peer)
      problems.push(`peers "${owner.peer.name}" (${owner.ip}) and "${claim.peer.name}" (${claim.ip}) overlap`);
    if (claimed.get(claim.ip) === undefined) claimed.insert(claim.ip, claim);
  }
  if (problems.length > 0) fail(problems.join('; '));
}

export function readPeersFile(path: string, tunnelCidrs: readonly Prefix[] = []): PeerRegistry {
  let text: string;
  try {
    text = readFileSync(path, 'utf8');
  } catch (err) {
    const reason = (err as NodeJS.ErrnoException).code === 'ENOENT' ? 'does not exist' : 'cannot be read';
    throw new AuthError(
      'peers_file',
      `peers file ${path} ${reason}: pass --peers with a JSON file of authorized nodes`,
    );
  }
  return parsePeers(text, path, tunnelCidrs);
}

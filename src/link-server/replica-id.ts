import { randomBytes } from 'node:crypto';
import { hostname } from 'node:os';

/** Room left for the suffix within the 63 characters a server ID may have. */
const MAX_HOST_PART = 56;

/**
 * A replica's default server ID: the host name (a pod's name, in Kubernetes) and a random suffix
 * drawn at each start. A restarted process has lost its sessions and its flows, so it must not
 * pass for the replica that ran before it under the same host name; nodes forget that one in
 * time.
 */
export function defaultServerId(host = hostname(), suffix = randomBytes(3).toString('hex')): string {
  const part =
    host
      .replace(/[^A-Za-z0-9._-]/g, '-')
      .replace(/^[^A-Za-z0-9]+/, '')
      .slice(0, MAX_HOST_PART) || 'server';
  return `${part}-${suffix}`;
}

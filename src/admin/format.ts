import type { DaemonStatus, PeerStatus } from './status.js';

const UNITS = ['B', 'KiB', 'MiB', 'GiB', 'TiB'];

export function formatBytes(bytes: number): string {
  let value = bytes;
  let unit = 0;
  while (value >= 1024 && unit < UNITS.length - 1) {
    value /= 1024;
    unit++;
  }
  return unit === 0 ? `${value} B` : `${value.toFixed(2)} ${UNITS[unit]}`;
}

export function formatAge(since: string, now: number): string {
  let seconds = Math.max(0, Math.round((now - Date.parse(since)) / 1000));
  const parts: string[] = [];
  for (const [size, unit] of [[86400, 'd'], [3600, 'h'], [60, 'm']] as const) {
    if (seconds >= size) {
      parts.push(`${Math.floor(seconds / size)}${unit}`);
      seconds %= size;
    }
  }
  parts.push(`${seconds}s`);
  return parts.join(' ');
}

function formatDrops(byReason: Record<string, number>): string {
  const entries = Object.entries(byReason).filter(([, count]) => count > 0);
  return entries.length === 0 ? '0' : entries.map(([reason, count]) => `${count} ${reason}`).join(', ');
}

function formatPeer(peer: PeerStatus, now: number): string[] {
  const lines = [`peer: ${peer.name}`, `  public key: ${peer.publicKey}`];
  if (peer.connected) {
    lines.push(`  endpoint: ${peer.endpoint ?? '-'}`);
    lines.push(`  connected: since ${peer.connectedSince} (${formatAge(peer.connectedSince!, now)} ago)`);
    lines.push(`  last pong: ${peer.lastPongMs === null ? 'none yet' : `${peer.lastPongMs.toFixed(1)} ms rtt`}`);
  } else {
    lines.push('  connected: no');
  }
  lines.push(`  routes: ${peer.routes.length > 0 ? peer.routes.join(', ') : '(none announced)'}`);
  if (peer.allowedIPs) lines.push(`  allowed ips: ${peer.allowedIPs.join(', ')}`);
  lines.push(`  transfer: ${formatBytes(peer.rxBytes)} received (${peer.rxPackets} packets), ${formatBytes(peer.txBytes)} sent (${peer.txPackets} packets)`);
  lines.push(`  drops: ${formatDrops(peer.dropsByReason)}`);
  return lines;
}

/** A `wg show`-like text rendering of the status document. */
export function formatStatus(status: DaemonStatus, now = Date.now()): string {
  const connected = status.peers.filter((peer) => peer.connected).length;
  const lines = [
    `interface: ${status.tun}`,
    `  role: ${status.role}${status.name ? ` (${status.name})` : ''}`,
    `  tunnel addresses: ${status.tunnelAddresses.length > 0 ? status.tunnelAddresses.join(', ') : '(none)'}`,
  ];
  if (status.listen) lines.push(`  listening on: ${status.listen}`);
  lines.push(`  peers: ${connected} of ${status.peers.length} connected`);
  lines.push(`  drops: ${formatDrops(status.dropsByReason)}`);
  for (const peer of status.peers) {
    lines.push('', ...formatPeer(peer, now));
  }
  return lines.join('\n') + '\n';
}

import type { DaemonStatus, PathHealth, PeerStatus, RouteState } from './status.js';

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
  for (const [size, unit] of [
    [86400, 'd'],
    [3600, 'h'],
    [60, 'm'],
  ] as const) {
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

function formatRoutes(peer: PeerStatus): string {
  if (peer.routeStates && peer.routeStates.length > 0) {
    return peer.routeStates
      .map(
        (route: RouteState) =>
          `${route.route} (${route.state === 'missing' ? 'MISSING from the kernel' : route.state.replace('_', ' ')})`,
      )
      .join(', ');
  }
  return peer.routes.length > 0 ? peer.routes.join(', ') : '(none announced)';
}

function formatPath(path: PathHealth, now: number): string {
  const checked = path.checkedAt ? `, checked ${formatAge(path.checkedAt, now)} ago` : '';
  const counts = path.checks > 0 ? ` (${path.failures} of ${path.checks} checks failed)` : '';
  switch (path.state) {
    case 'ok':
      return `ok, ${path.target} answered through the tunnel in ${path.rttMs?.toFixed(1) ?? '?'} ms${checked}${path.failures > 0 ? counts : ''}`;
    case 'failing':
      return `FAILING, ${path.target}: ${path.error ?? 'no answer'}${checked}${path.lastOkAt ? `, last ok ${formatAge(path.lastOkAt, now)} ago` : ', never ok'}${counts}`;
    default:
      return path.error ? `unknown (${path.error})` : 'not checked yet';
  }
}

function formatPeer(peer: PeerStatus, now: number): string[] {
  const lines = [`peer: ${peer.name}`, `  public key: ${peer.publicKey}`];
  if (peer.connected) {
    lines.push(`  endpoint: ${peer.endpoint ?? '-'}`);
    const sessions =
      peer.handshakes !== undefined
        ? `, ${peer.handshakes} handshake${peer.handshakes === 1 ? '' : 's'}${peer.reconnects ? ` (${peer.reconnects} reconnect${peer.reconnects === 1 ? '' : 's'})` : ''}`
        : '';
    lines.push(`  connected: since ${peer.connectedSince} (${formatAge(peer.connectedSince!, now)} ago)${sessions}`);
    const pongAge = peer.lastPongAt ? `, ${formatAge(peer.lastPongAt, now)} ago` : '';
    lines.push(
      `  last pong: ${peer.lastPongMs === null ? 'none yet' : `${peer.lastPongMs.toFixed(1)} ms rtt${pongAge}`}`,
    );
  } else {
    lines.push(`  connected: no${peer.endpoint ? ` (dialing ${peer.endpoint})` : ''}`);
  }
  if (peer.path) lines.push(`  path: ${formatPath(peer.path, now)}`);
  lines.push(`  routes: ${formatRoutes(peer)}`);
  if (peer.allowedIPs) lines.push(`  allowed ips: ${peer.allowedIPs.join(', ')}`);
  lines.push(
    `  transfer: ${formatBytes(peer.rxBytes)} received (${peer.rxPackets} packets), ${formatBytes(peer.txBytes)} sent (${peer.txPackets} packets)`,
  );
  if (peer.connected) lines.push(`  queue: ${formatBytes(peer.queuedBytes)}`);
  lines.push(`  drops: ${formatDrops(peer.dropsByReason)}`);
  if (peer.replacements || peer.replacementsRefused)
    lines.push(
      `  replacements: ${peer.replacements ?? 0} sessions replaced by a new one with this key, ${peer.replacementsRefused ?? 0} refused (replace_limited)`,
    );
  if (peer.lastError && !peer.connected) lines.push(`  last error: ${peer.lastError}`);
  return lines;
}

/** One line that says whether all is well: peers, paths, traffic, drops, broken routes. */
export function formatSummary(status: DaemonStatus): string {
  const connected = status.peers.filter((peer) => peer.connected).length;
  const parts = [
    status.role === 'server'
      ? `${connected}/${status.peers.length} peers connected`
      : connected > 0
        ? 'connected to the server'
        : 'NOT connected to the server',
  ];
  const checked = status.peers.filter((peer) => peer.path && peer.path.state !== 'unknown');
  if (checked.length > 0) {
    const ok = checked.filter((peer) => peer.path!.state === 'ok').length;
    parts.push(`${ok}/${checked.length} paths ok`);
  }
  const missing = status.peers.reduce(
    (sum, peer) => sum + (peer.routeStates?.filter((route) => route.state === 'missing').length ?? 0),
    0,
  );
  if (missing > 0) parts.push(`${missing} route${missing === 1 ? '' : 's'} MISSING`);
  for (const endpoint of status.endpoints ?? [])
    if (endpoint.state === 'failed') parts.push(`${endpoint.name} endpoint FAILED`);
  const rx = status.peers.reduce((sum, peer) => sum + peer.rxBytes, 0);
  const tx = status.peers.reduce((sum, peer) => sum + peer.txBytes, 0);
  parts.push(`${formatBytes(rx)} received, ${formatBytes(tx)} sent`);
  const drops =
    status.peers.reduce((sum, peer) => sum + peer.drops, 0) +
    Object.values(status.dropsByReason).reduce((sum, count) => sum + count, 0);
  parts.push(`${drops} dropped`);
  return `nodelink ${status.role}${status.name ? ` ${status.name}` : ''} on ${status.tun}: ${parts.join(', ')}`;
}

/** A `wg show`-like text rendering of the status document, led by a summary line. */
export function formatStatus(status: DaemonStatus, now = Date.now()): string {
  const connected = status.peers.filter((peer) => peer.connected).length;
  const lines = [
    formatSummary(status),
    '',
    `interface: ${status.tun}`,
    `  role: ${status.role}${status.name ? ` (${status.name})` : ''}`,
    `  tunnel addresses: ${status.tunnelAddresses.length > 0 ? status.tunnelAddresses.join(', ') : '(none)'}`,
  ];
  if (status.publicKey) lines.push(`  public key: ${status.publicKey}`);
  if (status.server)
    lines.push(
      `  server: ${status.server}${status.serverTunnelAddresses?.length ? ` (tunnel address ${status.serverTunnelAddresses.join(', ')})` : ''}`,
    );
  if (status.listen) lines.push(`  listening on: ${status.listen}`);
  if (status.serverId) lines.push(`  server id: ${status.serverId}, one of ${status.serverCount ?? 1} replicas`);
  for (const entry of status.replicas ?? []) {
    if (entry.count <= 1 && entry.missing.length === 0) continue;
    const missing = [
      ...entry.missing.map((replica) => `${replica.id} (gone ${formatAge(replica.since, now)})`),
      ...(entry.unseen > 0 ? [`${entry.unseen} not reached yet`] : []),
    ];
    lines.push(
      `  replicas at ${entry.server}: ${entry.held.length} of ${entry.count} held${entry.held.length > 0 ? ` (${entry.held.join(', ')})` : ''}${missing.length > 0 ? `, MISSING ${missing.join(', ')}` : ''}`,
    );
  }
  if (status.flowFilter)
    lines.push(
      `  node-initiated flows: ${status.flowFilter.active ? `dropped (nft table ${status.flowFilter.table}, at most ${status.flowFilter.maxFlowsPerNode} tracked flows per node)` : 'ALLOWED (--allow-node-initiated)'}`,
    );
  if (status.metrics) lines.push(`  metrics: http://${status.metrics}/metrics`);
  for (const endpoint of status.endpoints ?? []) {
    if (endpoint.state === 'failed')
      lines.push(
        `  ${endpoint.name}: FAILED since ${endpoint.since} (${formatAge(endpoint.since, now)}), retrying: ${endpoint.error}`,
      );
  }
  lines.push(`  up since: ${status.startedAt} (${formatAge(status.startedAt, now)})`);
  lines.push(`  peers: ${connected} of ${status.peers.length} connected`);
  lines.push(`  drops: ${formatDrops(status.dropsByReason)}`);
  for (const peer of status.peers) {
    lines.push('', ...formatPeer(peer, now));
  }
  return lines.join('\n') + '\n';
}

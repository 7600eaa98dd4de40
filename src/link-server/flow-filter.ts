import { createHash } from 'node:crypto';
import type { DaemonStatus } from '../admin/index.js';
import { NodelinkError } from '../errors.js';
import type { Logger } from '../log.js';
import { Prefix, PrefixTable, parseAddress } from '../routing/index.js';
import { NFT_MISSING, TunError, nft, nftJson, type NftSetValue } from '../tun/index.js';

/**
 * Nodes answer, never initiate: a packet a node sends reaches the control plane only when it
 * belongs to a flow the control-plane side opened. The kernel's connection tracking decides,
 * through an nftables table the server owns (`inet nodelink_<tun>`), so the data path in
 * JavaScript stays as it was and the decision costs one conntrack lookup in the kernel:
 *
 *  - prerouting: a packet in the reply direction of a tracked flow (replies, and ICMP errors
 *    about the control plane's packets, which conntrack marks RELATED) is accepted; anything
 *    else from the TUN is counted for the node owning its source and dropped. A dropped
 *    packet never confirms a conntrack entry, so a node cannot create state. The same hook sees
 *    packets the control plane would forward (node to node), so those die here too.
 *  - postrouting, toward the TUN: a new flow to a node is refused once that node already holds
 *    `maxFlowsPerNode` tracked flows (`ct count`), so one node cannot take the whole table.
 *  - a small set remembers (node address, protocol, destination, port) of dropped packets for
 *    `recentTimeoutS`; the server polls it and logs a few new entries per interval.
 *
 * Conntrack entries outlive the server process: a stream the control plane opened (`kubectl
 * logs -f`) keeps flowing across a server restart. The node counters (named counters, one per
 * peer, found through an interval map from the peer's allowedIPs) are read with `nft -j` when
 * status or metrics ask, at most once per `cacheMs`.
 *
 * Every change is one `nft -f` transaction: the table is replaced whole at start, and the
 * per-peer parts are rewritten on a peers-file reload, so the kernel never sees half a table.
 */

export interface FilterPeer {
  readonly publicKeyText: string;
  readonly name: string;
  readonly allowedIPs: readonly Prefix[];
}

export interface FlowFilterLimits {
  /** Tracked flows toward one node before the control plane's next new flow to it is refused. */
  readonly maxFlowsPerNode: number;
  /** Entries of the dropped-packet set per family (the log's memory), and how long one stays. */
  readonly recentEntries: number;
  readonly recentTimeoutS: number;
  /** How often the dropped-packet set is read for the log, and how many new entries are logged. */
  readonly logIntervalMs: number;
  readonly logLinesPerInterval: number;
  /** How long a counter read is reused. */
  readonly cacheMs: number;
}

export const DEFAULT_FLOW_FILTER_LIMITS: FlowFilterLimits = Object.freeze({
  maxFlowsPerNode: 4096,
  recentEntries: 1024,
  recentTimeoutS: 30,
  logIntervalMs: 5000,
  logLinesPerInterval: 10,
  cacheMs: 1000,
});

/** Transport protocols whose header starts with source and destination ports. */
const PORTED = 'tcp, udp, udplite, sctp, dccp';
const FAMILIES = [
  { tag: 'v4', ip: 'ip', addr: 'ipv4_addr', nfproto: 'ipv4' },
  { tag: 'v6', ip: 'ip6', addr: 'ipv6_addr', nfproto: 'ipv6' },
] as const;

/**
 * The table's name: `nodelink_` and the TUN name, so servers on different TUNs never touch each
 * other's table. Characters nft does not take in a bare name are written as `_XX` (hex), and
 * `_` as `__`, so two TUN names never share a table.
 */
export function flowFilterTable(tun: string): string {
  return `nodelink_${tun.replace(/[^A-Za-z0-9]/g, (c) => (c === '_' ? '__' : `_${c.charCodeAt(0).toString(16)}`))}`;
}

/**
 * A short, stable id for a peer in nft object names, from its public key: names survive
 * reloads and reorderings of the peers file. 48 bits: a collision among even 10^5 peers has
 * odds of about 10^-5, and would only merge two peers' counters.
 */
export function peerFilterId(publicKeyText: string): string {
  return createHash('sha256').update(publicKeyText).digest('hex').slice(0, 12);
}

/** A peer's prefixes with any that another of its own prefixes contains left out: interval maps refuse overlaps. */
function outermost(prefixes: readonly Prefix[]): Prefix[] {
  return prefixes.filter((p, i) => !prefixes.some((q, j) => j !== i && q.contains(p) && (!p.equals(q) || j < i)));
}

/**
 * The full table, as one `nft -f` transaction that replaces any earlier one (a crashed server's
 * leftover included). `add table` first so that `delete table` cannot fail on a first start.
 */
export function renderFlowFilter(tun: string, peers: readonly FilterPeer[], limits: FlowFilterLimits): string {
  const table = flowFilterTable(tun);
  const quoted = JSON.stringify(tun);
  const perPeer = peerParts(table, peers, new Set(), limits);
  const lines = [`add table inet ${table}`, `delete table inet ${table}`, `table inet ${table} {`];
  // The peers' counters come before the maps that name them: in the transaction that creates a
  // map, nft 1.0.6 cannot add an element naming a counter created after the map.
  lines.push(...perPeer.declarations);
  lines.push(`  set node_flows { type ifname; size 65535; flags dynamic; }`);
  for (const f of FAMILIES) {
    lines.push(
      `  set recent_${f.tag} { type ${f.addr} . inet_proto . ${f.addr} . inet_service; size ${limits.recentEntries}; flags dynamic,timeout; timeout ${limits.recentTimeoutS}s; }`,
      `  map peer_counters_${f.tag} { type ${f.addr} : counter; flags interval; }`,
      `  map peer_caps_${f.tag} { type ${f.addr} : verdict; flags interval; }`,
    );
  }
  lines.push(
    `  chain prerouting {`,
    `    type filter hook prerouting priority filter; policy accept;`,
    // Replies, and ICMP errors quoting the control plane's packets, are in the reply direction
    // of a flow the control plane opened. ESTABLISHED in the original direction would be a flow
    // a node opened, which only --allow-node-initiated lets exist. Checked first and for every
    // interface: most packets from the TUN are such replies, and they leave after two reads of
    // their conntrack entry without the interface name being copied and compared; for packets
    // of other interfaces this accept changes nothing, the chain's policy accepts them anyway.
    `    ct direction reply ct state established,related accept`,
    `    iifname ${quoted} jump from_nodes`,
    `  }`,
    `  chain from_nodes {`,
  );
  for (const f of FAMILIES) {
    // Separate rules: an add to a full set ends its rule, and must not skip the drop below.
    lines.push(
      `    meta nfproto ${f.nfproto} meta l4proto { ${PORTED} } add @recent_${f.tag} { ${f.ip} saddr . meta l4proto . ${f.ip} daddr . th dport }`,
      `    meta nfproto ${f.nfproto} meta l4proto != { ${PORTED} } add @recent_${f.tag} { ${f.ip} saddr . meta l4proto . ${f.ip} daddr . 0 }`,
      `    counter name ${f.ip} saddr map @peer_counters_${f.tag}`,
    );
  }
  lines.push(
    `    counter drop`,
    `  }`,
    `  chain postrouting {`,
    `    type filter hook postrouting priority filter; policy accept;`,
    // The flow's state first: it is cheaper to read than the interface name and rules out
    // every packet but a flow's first.
    `    ct state new oifname ${quoted} jump to_nodes`,
    `  }`,
    `  chain to_nodes {`,
    ...FAMILIES.map((f) => `    ${f.ip} daddr vmap @peer_caps_${f.tag}`),
    `  }`,
    `}`,
  );
  return [...lines, ...perPeer.commands].join('\n') + '\n';
}

/**
 * The transaction that brings the per-peer part of an installed table to `peers`: counters of
 * peers that stay are kept; peers in `removed` (ids) lose theirs.
 */
export function renderPeerUpdate(
  tun: string,
  peers: readonly FilterPeer[],
  removed: ReadonlySet<string>,
  limits: FlowFilterLimits,
): string {
  const table = flowFilterTable(tun);
  const { declarations, commands } = peerParts(table, peers, removed, limits);
  return [`table inet ${table} {`, ...declarations, `}`, ...commands].join('\n') + '\n';
}

/**
 * The per-peer part: a counter and a cap chain per peer (declarations, for a table block), and
 * commands that fill the cap chains and rewrite the maps from allowedIPs to them whole (flushed
 * and refilled in the same transaction), then delete what `removed` peers had.
 */
function peerParts(
  table: string,
  peers: readonly FilterPeer[],
  removed: ReadonlySet<string>,
  limits: FlowFilterLimits,
): { declarations: string[]; commands: string[] } {
  const declarations: string[] = [];
  const commands: string[] = [];
  const counters: Record<'v4' | 'v6', string[]> = { v4: [], v6: [] };
  const caps: Record<'v4' | 'v6', string[]> = { v4: [], v6: [] };
  for (const peer of peers) {
    const id = peerFilterId(peer.publicKeyText);
    declarations.push(`  counter peer_${id} {}`, `  chain cap_${id} {}`);
    commands.push(
      `flush chain inet ${table} cap_${id}`,
      `add rule inet ${table} cap_${id} add @node_flows { "${id}" ct count over ${limits.maxFlowsPerNode} } counter drop`,
    );
    for (const prefix of outermost(peer.allowedIPs)) {
      const tag = prefix.family === 4 ? 'v4' : 'v6';
      counters[tag].push(`${prefix} : "peer_${id}"`);
      caps[tag].push(`${prefix} : jump cap_${id}`);
    }
  }
  for (const f of FAMILIES) {
    commands.push(`flush map inet ${table} peer_counters_${f.tag}`, `flush map inet ${table} peer_caps_${f.tag}`);
    if (counters[f.tag].length > 0)
      commands.push(`add element inet ${table} peer_counters_${f.tag} { ${counters[f.tag].join(', ')} }`);
    if (caps[f.tag].length > 0)
      commands.push(`add element inet ${table} peer_caps_${f.tag} { ${caps[f.tag].join(', ')} }`);
  }
  for (const id of removed)
    commands.push(
      `flush chain inet ${table} cap_${id}`,
      `delete chain inet ${table} cap_${id}`,
      `delete counter inet ${table} peer_${id}`,
    );
  return { declarations, commands };
}

/** What a dropped packet looked like, from the set of recent ones. */
export interface DroppedFlow {
  readonly source: string;
  readonly protocol: string;
  readonly destination: string;
  /** Destination port; null for protocols without ports (ICMP, …). */
  readonly port: number | null;
}

/** Reads one element of a recent_* set; undefined for anything of another shape. */
export function droppedFlow(value: NftSetValue): DroppedFlow | undefined {
  if (typeof value !== 'object' || !Array.isArray(value.concat) || value.concat.length !== 4) return undefined;
  const [source, protocol, destination, port] = value.concat;
  if (typeof source !== 'string' || typeof destination !== 'string') return undefined;
  const name = typeof protocol === 'number' ? `proto ${protocol}` : String(protocol);
  const ported = PORTED.split(', ').includes(name);
  return { source, protocol: name, destination, port: ported && typeof port === 'number' ? port : null };
}

/** Why the filter cannot be installed, as the one line a user reads. */
function installError(err: unknown, tun: string): NodelinkError {
  if (err instanceof TunError && err.code === NFT_MISSING)
    return new NodelinkError(
      'flow_filter',
      'nft is not installed, and the server needs it to drop connections nodes open toward the control plane: install the nftables package, or run with --allow-node-initiated to let nodes open them',
    );
  const detail = err instanceof Error ? err.message : String(err);
  return new NodelinkError(
    'flow_filter',
    `cannot install the nftables table ${flowFilterTable(tun)} that drops connections nodes open (${detail}): the server needs CAP_NET_ADMIN and a kernel with nf_tables and conntrack, or run with --allow-node-initiated`,
  );
}

export interface FlowFilterOptions {
  readonly tun: string;
  readonly peers: readonly FilterPeer[];
  readonly log: Logger;
  readonly limits?: Partial<FlowFilterLimits>;
}

/** The server's nftables table (see the top of this file), from install() to remove(). */
export class FlowFilter {
  readonly table: string;
  readonly limits: FlowFilterLimits;
  /** Peer id → public key and name, as last installed. */
  private peers = new Map<string, FilterPeer>();
  private owners = new PrefixTable<FilterPeer>();
  /** Packets dropped per peer id, as last read. */
  private counts = new Map<string, number>();
  private readAt = 0;
  private reading: Promise<void> | undefined;
  private readFailing = false;
  /** Entries of the recent sets seen at the last poll: only new ones are logged. */
  private seen = new Set<string>();
  private pollTimer: NodeJS.Timeout | undefined;
  private polling = false;
  /** Serializes peer updates: each is one transaction, in order. */
  private updating: Promise<void> = Promise.resolve();

  private constructor(private readonly options: FlowFilterOptions) {
    this.table = flowFilterTable(options.tun);
    this.limits = { ...DEFAULT_FLOW_FILTER_LIMITS, ...options.limits };
  }

  /** Creates (or replaces) the table, then polls the dropped-packet sets for the log. */
  static async install(options: FlowFilterOptions): Promise<FlowFilter> {
    const filter = new FlowFilter(options);
    try {
      await nft(['-f', '-'], renderFlowFilter(options.tun, options.peers, filter.limits));
    } catch (err) {
      throw installError(err, options.tun);
    }
    filter.remember(options.peers);
    filter.pollTimer = setInterval(() => void filter.poll(), filter.limits.logIntervalMs);
    filter.pollTimer.unref();
    return filter;
  }

  /** Removes the table of a server that is not running any more (a leftover), if there is one. */
  static removeLeftover(tun: string): Promise<void> {
    return nft(['delete', 'table', 'inet', flowFilterTable(tun)]).then(
      () => undefined,
      () => undefined,
    );
  }

  /** The peers file changed: counters of peers that stay are kept. */
  setPeers(peers: readonly FilterPeer[]): Promise<void> {
    const next = this.updating.then(async () => {
      const ids = new Set(peers.map((peer) => peerFilterId(peer.publicKeyText)));
      const removed = new Set([...this.peers.keys()].filter((id) => !ids.has(id)));
      await nft(['-f', '-'], renderPeerUpdate(this.options.tun, peers, removed, this.limits));
      this.remember(peers);
    });
    this.updating = next.catch(() => undefined);
    return next;
  }

  /** Reads the counters, unless they were read less than `cacheMs` ago. */
  refresh(): Promise<void> {
    if (Date.now() - this.readAt < this.limits.cacheMs) return Promise.resolve();
    this.reading ??= nftJson(['list', 'counters', 'table', 'inet', this.table])
      .then((items) => {
        const counts = new Map<string, number>();
        for (const item of items) {
          if (item.counter?.name.startsWith('peer_')) counts.set(item.counter.name.slice(5), item.counter.packets);
        }
        this.counts = counts;
        this.readAt = Date.now();
        this.readFailing = false;
      })
      .catch((err: unknown) => {
        // Once per failing stretch: scrapes would repeat it every few seconds.
        if (!this.readFailing) this.options.log.warn({ err: String(err) }, 'cannot read the node-initiated counters');
        this.readFailing = true;
      })
      .finally(() => {
        this.reading = undefined;
      });
    return this.reading;
  }

  /** Packets of flows this peer's side tried to open, as last read. */
  nodeInitiated(publicKeyText: string): number {
    return this.counts.get(peerFilterId(publicKeyText)) ?? 0;
  }

  /** Adds `node_initiated` to each peer's drops (status, metrics), from the last read. */
  annotate(status: DaemonStatus): DaemonStatus {
    for (const peer of status.peers) {
      const count = this.nodeInitiated(peer.publicKey);
      if (count === 0) continue;
      peer.dropsByReason = { ...peer.dropsByReason, node_initiated: count };
      peer.drops += count;
    }
    return status;
  }

  /** Deletes the table; the flows it let through stay tracked by the kernel. */
  async remove(): Promise<void> {
    if (this.pollTimer) clearInterval(this.pollTimer);
    this.pollTimer = undefined;
    await this.updating;
    await nft(['delete', 'table', 'inet', this.table]).catch((err: unknown) =>
      this.options.log.warn({ err: String(err) }, 'cannot delete the flow filter table'),
    );
  }

  private remember(peers: readonly FilterPeer[]): void {
    this.peers = new Map(peers.map((peer) => [peerFilterId(peer.publicKeyText), peer]));
    const owners = new PrefixTable<FilterPeer>();
    for (const peer of peers) for (const prefix of peer.allowedIPs) owners.insert(prefix, peer);
    this.owners = owners;
  }

  private owner(address: string): string | undefined {
    try {
      const { family, bytes } = parseAddress(address);
      return this.owners.lookup(family, bytes)?.name;
    } catch {
      return undefined;
    }
  }

  /** Logs what nodes tried to open since the last poll: a few lines, then how many more. */
  private async poll(): Promise<void> {
    if (this.polling) return;
    this.polling = true;
    try {
      const current = new Set<string>();
      const fresh: DroppedFlow[] = [];
      for (const f of FAMILIES) {
        const items = await nftJson(['list', 'set', 'inet', this.table, `recent_${f.tag}`]);
        for (const item of items) {
          for (const element of item.set?.elem ?? []) {
            const value = typeof element === 'object' && 'elem' in element ? element.elem.val : element;
            const key = JSON.stringify(value);
            current.add(key);
            if (this.seen.has(key)) continue;
            const flow = droppedFlow(value);
            if (flow) fresh.push(flow);
          }
        }
      }
      this.seen = current;
      const { log } = this.options;
      for (const flow of fresh.slice(0, this.limits.logLinesPerInterval)) {
        log.warn(
          { peer: this.owner(flow.source) ?? null, ...flow },
          'dropped a flow a node tried to open toward the control plane',
        );
      }
      if (fresh.length > this.limits.logLinesPerInterval)
        log.warn(
          { more: fresh.length - this.limits.logLinesPerInterval },
          'more flows nodes tried to open were dropped (see node_initiated in status)',
        );
    } catch (err) {
      this.options.log.debug({ err: String(err) }, 'cannot read the recently dropped flows');
    } finally {
      this.polling = false;
    }
  }
}

// Helpers for the fault suite: underlay faults made with nftables and tc in the harness's router
// namespace (never anywhere else), process probes read from /proc, and status reads.

import { readdirSync } from 'node:fs';
import { Harness, type HarnessOptions, type ManagedProcess } from '../../scripts/harness/index.js';
import { NodelinkCluster } from '../../scripts/cluster.js';
import { clusterRig, type ClusterRig } from '../support/cluster-rig.js';
import { fetchStatus, type DaemonStatus } from '../../src/admin/index.js';

/** The fault table lives beside the harness's own table, so removing it restores the harness. */
const TABLE = 'nodelink_faults';

/**
 * Underlay faults in the router namespace. Everything between the nodes and the control plane
 * crosses the router's forward path, so dropping there is a fault "in the network".
 */
export class Underlay {
  /** Rate limits set, as "ns dev": clear() lifts them too. */
  private readonly limited = new Map<string, { dev: string; ns: string }>();

  constructor(private readonly h: Harness) {}

  /** Drops `percent`% of everything forwarded between nodes and control plane, both ways. */
  async loss(percent: number): Promise<void> {
    await this.rules([`numgen random mod 100 < ${Math.round(percent)} counter drop`]);
  }

  /**
   * Node n becomes unreachable (silent): its packets vanish in the router, both ways. Matched
   * by address: routed traffic enters through the bridge (br0), not the node's port; replies are
   * already un-NATed to the node's address in the forward hook.
   */
  async blackhole(n: number): Promise<void> {
    const { h } = this;
    await this.rules([
      `ip saddr ${h.nodeIP(n)} counter drop`,
      `ip daddr ${h.nodeIP(n)} counter drop`,
      `ip6 saddr ${h.nodeIP6(n)} counter drop`,
      `ip6 daddr ${h.nodeIP6(n)} counter drop`,
    ]);
  }

  /** Removes every fault rule and rate limit (the harness's NAT and firewall stay). */
  async clear(): Promise<void> {
    for (const { dev, ns } of [...this.limited.values()]) await this.unlimit(dev, ns);
    await this.h.exec(this.h.ns.rt, ['nft', 'delete', 'table', 'inet', TABLE], { allowFail: true });
  }

  /** Takes the router's port to node n down (the cable is pulled), or back up. */
  async link(n: number, up: boolean): Promise<void> {
    await this.h.exec(this.h.ns.rt, ['ip', 'link', 'set', `n${n}`, up ? 'up' : 'down']);
  }

  /** Forgets every NAT binding and connection the router tracks (a NAT gateway reboot). */
  async flushConntrack(): Promise<string> {
    const r = await this.h.exec(this.h.ns.rt, ['conntrack', '-F'], { allowFail: true });
    if (r.code !== 0) throw new Error(`conntrack -F failed (apt-get install conntrack): ${r.stderr.trim()}`);
    return r.stderr.trim();
  }

  /** A token-bucket rate limit on egress of dev in ns (default: the router). */
  async limit(dev: string, mbit: number, ns = this.h.ns.rt): Promise<void> {
    await this.h.exec(ns, [
      'tc',
      'qdisc',
      'replace',
      'dev',
      dev,
      'root',
      'tbf',
      'rate',
      `${mbit}mbit`,
      'burst',
      '64kb',
      'latency',
      '200ms',
    ]);
    this.limited.set(`${ns} ${dev}`, { dev, ns });
  }

  async unlimit(dev: string, ns = this.h.ns.rt): Promise<void> {
    await this.h.exec(ns, ['tc', 'qdisc', 'del', 'dev', dev, 'root'], { allowFail: true });
    this.limited.delete(`${ns} ${dev}`);
  }

  private async rules(rules: string[]): Promise<void> {
    await this.clear();
    await this.h.exec(this.h.ns.rt, ['nft', '-f', '-'], {
      input: `table inet ${TABLE} {\n  chain forward {\n    type filter hook forward priority filter - 10; policy accept;\n${rules.map((r) => `    ${r}\n`).join('')}  }\n}\n`,
    });
  }
}

export { cpuSeconds, rssBytes } from '../../scripts/proc.js';

export function fdCount(pid: number): number {
  return readdirSync(`/proc/${pid}/fd`).length;
}

export const MiB = 1024 * 1024;

export function mbit(bytes: number, ms: number): number {
  return (bytes * 8) / (ms / 1000) / 1e6;
}

/**
 * Status straight from the admin socket, in-process: a few ms, where cluster.status() spawns the
 * CLI (hundreds of ms), too coarse to time a recovery.
 */
export function quickStatus(cluster: NodelinkCluster, socket = cluster.serverSocket): Promise<DaemonStatus> {
  return fetchStatus(socket);
}

export async function peer(cluster: NodelinkCluster, n: number): Promise<DaemonStatus['peers'][number] | undefined> {
  const status = await quickStatus(cluster);
  return status.peers.find((p) => p.name === cluster.h.nodeName(n));
}

export async function connected(cluster: NodelinkCluster, n: number): Promise<boolean> {
  return (await peer(cluster, n).catch(() => undefined))?.connected === true;
}

/** Pino lines of a process's log, parsed (non-JSON lines skipped). */
export function logLines(proc: ManagedProcess): Array<Record<string, unknown>> {
  const out: Array<Record<string, unknown>> = [];
  for (const line of proc.output().split('\n')) {
    if (!line.startsWith('{')) continue;
    try {
      out.push(JSON.parse(line) as Record<string, unknown>);
    } catch {
      // A line cut by a kill.
    }
  }
  return out;
}

/** Prints a measured figure in the mocha output, indented under the test. */
export function report(text: string): void {
  console.log(`      → ${text}`);
}

/** What a fault suite runs on: the harness, nodelink on it, and the router's fault controls. */
export interface FaultRig extends ClusterRig {
  readonly underlay: Underlay;
}

/**
 * clusterRig (every node connected, unless `start` is false) with the router's fault controls;
 * every fault is cleared before nodelink stops.
 */
export function faultRig(options: HarnessOptions, start = true): FaultRig {
  let underlay: Underlay | undefined;
  // Registered first, so it runs before clusterRig's after hook.
  after(async function () {
    await underlay?.clear().catch(() => undefined);
  });
  const rig = clusterRig(options, { start });
  return {
    get h() {
      return rig.h;
    },
    get cluster() {
      return rig.cluster;
    },
    get underlay() {
      return (underlay ??= new Underlay(rig.h));
    },
    get prefix() {
      return rig.prefix;
    },
  };
}

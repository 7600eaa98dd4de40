import { isIP } from 'node:net';
import { TunError } from './errors.js';
import { ip, ipBatch } from './iproute2.js';

/**
 * Which kernel routes are nodelink's, and how they fail closed.
 *
 * Every route and rule nodelink installs carries routing protocol 78 (`proto 78`, the letter N;
 * unassigned in the kernel's rtnetlink.h and in iproute2's rt_protos), so it can tell its own
 * routes from everyone else's. It adds, replaces and deletes only its own: a route is its own
 * when it goes into its TUN device, or when it is one of its unreachable backstops.
 *
 * The server (control plane) keeps its node routes in a routing table of its own, one per TUN
 * name, consulted before `main` by a rule:
 *
 *   priority 4877  ipproto tcp sport <listen port> lookup main   the server's own TLS stream
 *   priority 4878  lookup <table>                                 everything else
 *
 *   <table>  <allowedIP> dev nl0 proto 78 metric 64 src <tunnel address>   while the server runs
 *            unreachable <allowedIP> proto 78 metric 4096                    always
 *
 * The backstops stay when the TUN vanishes (SIGTERM, SIGKILL, crash): a dial to a node then fails
 * at once (EHOSTUNREACH) and no packet for a node leaves by the default route. The first rule
 * keeps the server's TLS replies out of its own tunnel when a node dials from an address inside
 * its allowedIPs (a flat network, no NAT), the way wg-quick keeps its encrypted traffic out of
 * its tunnel. Rules and backstops outlive the process on purpose; `ip route show table all
 * proto 78` and `ip rule show` list them.
 *
 * With several worker processes (`--workers`), each worker has its own TUN (nl0, nl0-1, …) and
 * all of them share the one table of the first name, behind the same rules: with a table per
 * worker, one table's backstop would end the lookup before another's route was found. Each node's
 * route goes into the TUN of the worker holding its session, so the kernel itself spreads the
 * data over the workers:
 *
 *   <table>  <allowedIP> dev nl0-1 proto 78 metric 64 src …      the worker holding the session
 *            <allowedIP> dev nl0 proto 78 metric 128 src …       every peer: the first worker
 *                                                                (drops, counts, ICMP) while offline
 *            unreachable <allowedIP> proto 78 metric 4096         always
 *
 * A worker claims a node's routes with `replace` (the newest session wins, atomically) and
 * releases them with a `del` naming its own device, which the kernel refuses when another worker
 * has claimed them since: a node that moved keeps its route. A worker that dies takes its TUN,
 * and with it its routes: its nodes' traffic falls to the first worker's routes, or to the
 * backstops, until they reconnect.
 *
 * The client (node) keeps its routes to the server's tunnel CIDRs in `main`, under the same
 * protocol, and refuses a tunnel CIDR that would take over the node's default route, its route
 * to the server or any route already on the host.
 */
export const ROUTE_PROTOCOL = 78;
export const TUN_ROUTE_METRIC = 64;
/** Workers: the first worker's route for every peer, under the session routes. */
export const HOME_ROUTE_METRIC = 128;
export const BACKSTOP_METRIC = 4096;
export const OWN_TRAFFIC_RULE_PRIORITY = 4877;
export const TABLE_RULE_PRIORITY = 4878;

const TABLE_MAIN = 254;
const TABLE_LOCAL = 255;
const TABLE_DEFAULT = 253;
const TABLE_NAMES = new Map([
  [TABLE_MAIN, 'main'],
  [TABLE_LOCAL, 'local'],
  [TABLE_DEFAULT, 'default'],
]);
/** rtnetlink route types (RTN_*), as `ip -N` prints them. */
const RTN_UNICAST = 1;
const RTN_UNREACHABLE = 7;
const TYPE_NAMES = ['unspec', 'unicast', 'local', 'broadcast', 'anycast', 'multicast', 'blackhole', 'unreachable'];
/** Routes that refuse traffic instead of carrying it somewhere: covering one takes nothing over. */
const REJECT_TYPES = new Set([6, 7, 8, 9]);
const PROTOCOL_NAMES = new Map([
  [2, 'kernel'],
  [3, 'boot'],
  [4, 'static'],
  [16, 'dhcp'],
  [ROUTE_PROTOCOL, String(ROUTE_PROTOCOL)],
]);

/** Runs `ip ARGS` and returns its stdout; injected so the planning is testable without root. */
export type IpRunner = (args: readonly string[]) => Promise<string>;
/** Runs lines of `ip -batch`. */
export type BatchRunner = (commands: readonly string[]) => Promise<void>;

/**
 * The server's routing table for a TUN name: 0x4e4c0000 ("NL") plus a 16-bit FNV-1a hash of
 * the name, so two servers with different TUN names in one network namespace keep apart.
 */
export function routeTableFor(tun: string): number {
  let hash = 0x811c9dc5;
  for (const byte of Buffer.from(tun, 'utf8')) hash = Math.imul(hash ^ byte, 0x01000193) >>> 0;
  return 0x4e4c0000 + ((hash ^ (hash >>> 16)) & 0xffff);
}

/** A network in text form, parsed once: `198.19.1.0/24` → family 4, network, length, bytes. */
export interface Cidr {
  readonly family: 4 | 6;
  readonly network: string;
  readonly length: number;
  readonly text: string;
  readonly bytes: Uint8Array;
}

export function parseCidr(text: string): Cidr {
  const slash = text.indexOf('/');
  const network = slash < 0 ? text : text.slice(0, slash);
  const family = isIP(network);
  if (family !== 4 && family !== 6) throw new TunError('iproute2', `"${text}" is not a CIDR`);
  const bits = family === 4 ? 32 : 128;
  const length = slash < 0 ? bits : Number(text.slice(slash + 1));
  if (!Number.isInteger(length) || length < 0 || length > bits)
    throw new TunError('iproute2', `"${text}" is not a CIDR`);
  return {
    family,
    network,
    length,
    text: slash < 0 ? `${network}/${bits}` : text,
    bytes: addressBytes(network, family),
  };
}

/** The bytes of an address `isIP` accepted: dotted quad, or IPv6 with `::` and an IPv4 tail. */
function addressBytes(address: string, family: 4 | 6): Uint8Array {
  if (family === 4) return Uint8Array.from(address.split('.').map(Number));
  let text = address;
  const quad = /(\d+)\.(\d+)\.(\d+)\.(\d+)$/.exec(text);
  if (quad) {
    const [a, b, c, d] = quad.slice(1).map(Number) as [number, number, number, number];
    text = `${text.slice(0, quad.index)}${((a << 8) | b).toString(16)}:${((c << 8) | d).toString(16)}`;
  }
  const [head, tail] = text.split('::') as [string, string | undefined];
  const left = head ? head.split(':') : [];
  const right = tail ? tail.split(':') : [];
  const groups =
    tail === undefined ? left : [...left, ...Array<string>(8 - left.length - right.length).fill('0'), ...right];
  const bytes = new Uint8Array(16);
  groups.forEach((group, i) => {
    const value = parseInt(group, 16);
    bytes[2 * i] = value >> 8;
    bytes[2 * i + 1] = value & 0xff;
  });
  return bytes;
}

/** True when the first `length` bits of `bytes` are those of `cidr`. */
function inPrefix(cidr: Cidr, bytes: Uint8Array): boolean {
  const whole = cidr.length >> 3;
  for (let i = 0; i < whole; i++) if (cidr.bytes[i] !== bytes[i]) return false;
  const rest = cidr.length & 7;
  if (rest === 0) return true;
  const mask = (0xff << (8 - rest)) & 0xff;
  return (cidr.bytes[whole]! & mask) === (bytes[whole]! & mask);
}

/** True when `outer` equals or contains all of `inner`. */
export function covers(outer: Cidr, inner: Cidr): boolean {
  return outer.family === inner.family && outer.length <= inner.length && inPrefix(outer, inner.bytes);
}

export function containsAddress(cidr: Cidr, address: string): boolean {
  const family = isIP(address);
  return family === cidr.family && inPrefix(cidr, addressBytes(address, family));
}

/** One route as `ip -N -j route show table all` reports it. */
export interface KernelRoute {
  readonly dst: Cidr;
  readonly table: number;
  /** RTN_* type: 1 unicast, 2 local, 3 broadcast, 5 multicast, 7 unreachable, … */
  readonly type: number;
  readonly dev: string | undefined;
  readonly gateway: string | undefined;
  readonly protocol: number;
  readonly metric: number;
}

interface RawRoute {
  dst?: string;
  table?: string;
  type?: string;
  dev?: string;
  gateway?: string;
  protocol?: string;
  metric?: number;
}

/** Parses `ip -N -j -4|-6 route show table all` (numbers, not names, for table, type and protocol). */
export function parseRoutes(json: string, family: 4 | 6): KernelRoute[] {
  const routes: KernelRoute[] = [];
  for (const raw of JSON.parse(json || '[]') as RawRoute[]) {
    if (!raw.dst) continue;
    const dst = raw.dst === 'default' ? (family === 4 ? '0.0.0.0/0' : '::/0') : raw.dst;
    let cidr: Cidr;
    try {
      cidr = parseCidr(dst);
    } catch {
      continue; // not an IP route (never expected from -4/-6)
    }
    routes.push({
      dst: cidr,
      table: raw.table === undefined ? TABLE_MAIN : Number(raw.table),
      type: raw.type === undefined ? RTN_UNICAST : Number(raw.type),
      dev: raw.dev,
      gateway: raw.gateway,
      // iproute2 leaves out "boot", the protocol of a plain `ip route add`.
      protocol: raw.protocol === undefined ? 3 : Number(raw.protocol),
      metric: raw.metric ?? 0,
    });
  }
  return routes;
}

/** A route as `ip route` would print it, with its table: `198.18.0.0/24 dev eth0 proto kernel table main`. */
export function describeRoute(route: KernelRoute): string {
  const type = route.type === RTN_UNICAST ? '' : `${TYPE_NAMES[route.type] ?? `type ${route.type}`} `;
  const via = route.gateway ? ` via ${route.gateway}` : '';
  const dev = route.dev && route.type !== RTN_UNREACHABLE ? ` dev ${route.dev}` : '';
  const proto = PROTOCOL_NAMES.get(route.protocol) ?? String(route.protocol);
  const table = TABLE_NAMES.get(route.table) ?? String(route.table);
  const dst = route.dst.length === 0 ? 'default' : route.dst.text;
  return `${type}${dst}${via}${dev} proto ${proto} table ${table}`;
}

/** Whose a route is, for the conflict check: the TUN device and routing table of this daemon. */
export interface RouteOwner {
  readonly tun: string;
  readonly table: number;
  /** Every TUN of this daemon, when it has several (--workers); default `[tun]`. */
  readonly devices?: readonly string[];
}

export interface RouteConflict {
  readonly cidr: string;
  /** The host's route the CIDR would take over; undefined for a default route (/0). */
  readonly route: KernelRoute | undefined;
}

function isOwn(route: KernelRoute, owner: RouteOwner): boolean {
  if (route.dev !== undefined && route.type !== RTN_UNREACHABLE && (owner.devices ?? [owner.tun]).includes(route.dev))
    return true;
  return route.table === owner.table && route.protocol === ROUTE_PROTOCOL && route.type === RTN_UNREACHABLE;
}

/**
 * CIDRs that would cover or equal a route already on the host: a default route (/0), or any route
 * in main, local or default that is not this daemon's (connected, local, default, another
 * device's), or another nodelink's route in its own table (another TUN name). Routes inside a
 * CIDR's range are fine: a node's /32 inside a connected subnet is the flat-network case.
 */
export function routeConflicts(
  cidrs: readonly string[],
  routes: readonly KernelRoute[],
  owner: RouteOwner,
): RouteConflict[] {
  // The routes that count, once: the daemon's own (thousands, with many peers) never do.
  const others = routes.filter(
    (route) =>
      !isOwn(route, owner) &&
      (route.protocol === ROUTE_PROTOCOL || (TABLE_NAMES.has(route.table) && !REJECT_TYPES.has(route.type))),
  );
  const conflicts: RouteConflict[] = [];
  for (const text of cidrs) {
    const cidr = parseCidr(text);
    if (cidr.length === 0) {
      conflicts.push({ cidr: text, route: undefined });
      continue;
    }
    const hit = others.find((route) => covers(cidr, route.dst));
    if (hit) conflicts.push({ cidr: text, route: hit });
  }
  return conflicts;
}

/** Reads every IPv4 and IPv6 route of every table. */
export async function readRoutes(run: IpRunner = ip, families: readonly (4 | 6)[] = [4, 6]): Promise<KernelRoute[]> {
  const lists = await Promise.all(
    families.map(async (family) =>
      parseRoutes(await run(['-N', '-j', `-${family}`, 'route', 'show', 'table', 'all']), family),
    ),
  );
  return lists.flat();
}

/** One policy routing rule as `ip -N -j rule show` reports it. */
interface RawRule {
  priority?: number;
  table?: string;
  sport?: number;
  ipproto?: string;
  protocol?: string;
}

/** A route-table conflict, one line naming both sides and the fix. */
export class RouteConflictError extends TunError {
  constructor(message: string) {
    super('route_conflict', message);
  }
}

export interface ServerRoutesOptions {
  readonly tun: string;
  /** The TCP port nodes dial: the server's own traffic from it stays out of the tunnel. */
  readonly listenPort: number;
  /** The server's tunnel address per family: the source of what it sends into the TUN. */
  readonly sources: { readonly 4?: string; readonly 6?: string };
  readonly run?: IpRunner;
  readonly batch?: BatchRunner;
  /** One worker of several (--workers): see the top of this file. */
  readonly worker?: WorkerRoutes;
}

/** A worker's place among the server's workers. */
export interface WorkerRoutes {
  /** The server's --tun, which names the table every worker shares. */
  readonly baseTun: string;
  /** Every worker's TUN, its own (`tun`) among them. */
  readonly devices: readonly string[];
  /** The first worker: it keeps the backstops and a route for every peer (HOME_ROUTE_METRIC). */
  readonly home: boolean;
}

/** What a fail-closed pass changed. */
export interface FailClosedSummary {
  readonly rulesAdded: number;
  readonly backstopsAdded: string[];
  readonly backstopsRemoved: string[];
}

/**
 * The server's routes (see the top of this file). `check` refuses, with one line naming both,
 * an allowedIP that would take over a route the host already has; `failClosed` installs the rules
 * and the unreachable backstops (the init step, and each start); `install` adds the TUN routes
 * over them; `remove` takes both away for peers that left. At shutdown the TUN routes leave with
 * the TUN device, and the backstops stay.
 */
export class ServerRoutes {
  readonly table: number;
  private readonly run: IpRunner;
  private readonly batch: BatchRunner;

  constructor(private readonly options: ServerRoutesOptions) {
    this.table = routeTableFor(options.worker?.baseTun ?? options.tun);
    this.run = options.run ?? ip;
    this.batch = options.batch ?? ((commands) => ipBatch(commands));
  }

  private get owner(): RouteOwner {
    return { tun: this.options.tun, table: this.table, devices: this.options.worker?.devices };
  }

  /** Whether this process keeps the backstops (a lone server, or the first of its workers). */
  private get keepsBackstops(): boolean {
    return this.options.worker?.home ?? true;
  }

  /**
   * Throws a RouteConflictError for the first allowedIP that would cover or equal a route the
   * host already has. `label` names where a CIDR came from (`peer "node-a" allowedIPs …`).
   */
  /** The CIDRs among `cidrs` that `check` would refuse (Kubernetes mode leaves their Nodes out). */
  async conflicting(cidrs: readonly string[]): Promise<Set<string>> {
    const families = [...new Set(cidrs.map((cidr) => parseCidr(cidr).family))];
    return new Set(routeConflicts(cidrs, await readRoutes(this.run, families), this.owner).map((c) => c.cidr));
  }

  async check(
    cidrs: readonly string[],
    label: (cidr: string) => string = (cidr) => `allowedIPs ${cidr}`,
  ): Promise<void> {
    const families = [...new Set(cidrs.map((cidr) => parseCidr(cidr).family))];
    const conflict = routeConflicts(cidrs, await readRoutes(this.run, families), this.owner)[0];
    if (!conflict) return;
    if (!conflict.route)
      throw new RouteConflictError(
        `${label(conflict.cidr)} would route every address into ${this.options.tun}: list the node's own addresses and pod CIDRs instead`,
      );
    const other =
      conflict.route.protocol === ROUTE_PROTOCOL
        ? `another nodelink's route ${describeRoute(conflict.route)}: stop that server, or give each server its own nodes`
        : `the host's route ${describeRoute(conflict.route)}: nodelink would take its traffic; remove or narrow the entry in the peers file`;
    throw new RouteConflictError(`${label(conflict.cidr)} covers ${other}`);
  }

  /**
   * Installs the two rules (when missing) and an unreachable backstop for every CIDR; with
   * `prune`, also removes this server's backstops for CIDRs no longer authorized.
   */
  async failClosed(cidrs: readonly string[], options: { prune: boolean }): Promise<FailClosedSummary> {
    const families = this.families(cidrs);
    const commands: string[] = [];
    let rulesAdded = 0;
    for (const family of families) {
      const rules = JSON.parse((await this.run(['-N', '-j', `-${family}`, 'rule', 'show'])) || '[]') as RawRule[];
      for (const wanted of this.rules()) {
        if (rules.some((rule) => sameRule(rule, wanted))) continue;
        await this.run([`-${family}`, 'rule', 'add', ...wanted.args]);
        rulesAdded++;
      }
    }
    const mine = (await readRoutes(this.run, families)).filter(
      (route) => route.table === this.table && route.protocol === ROUTE_PROTOCOL && route.type === RTN_UNREACHABLE,
    );
    const wanted = new Set(cidrs.map((cidr) => parseCidr(cidr).text));
    const present = new Set(mine.map((route) => route.dst.text));
    const backstopsAdded = [...wanted].filter((cidr) => !present.has(cidr));
    const stale = options.prune ? mine.filter((route) => !wanted.has(route.dst.text)) : [];
    for (const cidr of backstopsAdded) commands.push(this.backstopCommand('add', cidr));
    // By the metric it has: one an operator added by hand goes as well.
    for (const route of stale) commands.push(this.backstopCommand('del', route.dst.text, route.metric));
    const backstopsRemoved = stale.map((route) => route.dst.text);
    await this.batch(commands);
    return { rulesAdded, backstopsAdded, backstopsRemoved };
  }

  /**
   * Rules and backstops for these CIDRs, then their routes into the TUN (idempotent). A worker
   * other than the first only checks: the first keeps backstops and routes for every peer, and
   * each worker claims the routes of the nodes it holds (`claim`). `checked`: the caller has
   * just run `check` and `failClosed` for these very CIDRs (a start), so only the routes remain.
   */
  async install(cidrs: readonly string[], options: { checked?: boolean } = {}): Promise<void> {
    if (!options.checked) await this.check(cidrs);
    if (!this.keepsBackstops) return;
    if (!options.checked) await this.failClosed(cidrs, { prune: false });
    const metric = this.options.worker ? HOME_ROUTE_METRIC : TUN_ROUTE_METRIC;
    await this.batch(cidrs.map((cidr) => this.tunRouteCommand('replace', cidr, metric)));
  }

  /** Removes the TUN routes and backstops of CIDRs no peer claims any more; a route already gone is no error. */
  async remove(cidrs: readonly string[]): Promise<void> {
    const commands = cidrs.flatMap((cidr) => [
      this.tunRouteCommand('del', cidr),
      ...(this.options.worker?.home ? [this.tunRouteCommand('del', cidr, HOME_ROUTE_METRIC)] : []),
      ...(this.keepsBackstops ? [this.backstopCommand('del', cidr)] : []),
    ]);
    await this.batch(commands).catch(() => undefined);
  }

  /** Workers: routes these CIDRs into this worker's TUN, over any other worker's (its node is here now). */
  async claim(cidrs: readonly string[]): Promise<void> {
    await this.batch(cidrs.map((cidr) => this.tunRouteCommand('replace', cidr)));
  }

  /**
   * Workers: removes this worker's routes for these CIDRs. The kernel deletes a route only where
   * it still names this worker's TUN, so a node another worker has claimed since keeps its route.
   */
  async release(cidrs: readonly string[]): Promise<void> {
    await this.batch(cidrs.map((cidr) => this.tunRouteCommand('del', cidr))).catch(() => undefined);
  }

  private tunRouteCommand(verb: 'replace' | 'del', cidr: string, metric = TUN_ROUTE_METRIC): string {
    const source = this.options.sources[parseCidr(cidr).family];
    return serverRouteCommand(verb, cidr, this.options.tun, source, { table: this.table, metric });
  }

  private backstopCommand(verb: 'add' | 'del', cidr: string, metric = BACKSTOP_METRIC): string {
    return `route ${verb} unreachable ${cidr} proto ${ROUTE_PROTOCOL} metric ${metric} table ${this.table}`;
  }

  private rules(): Array<{ priority: number; table: string; sport?: number; args: string[] }> {
    const common = ['protocol', String(ROUTE_PROTOCOL)];
    const port = this.options.listenPort;
    return [
      {
        priority: OWN_TRAFFIC_RULE_PRIORITY,
        table: String(TABLE_MAIN),
        sport: port,
        args: [
          'priority',
          String(OWN_TRAFFIC_RULE_PRIORITY),
          'ipproto',
          'tcp',
          'sport',
          String(port),
          'lookup',
          'main',
          ...common,
        ],
      },
      {
        priority: TABLE_RULE_PRIORITY,
        table: String(this.table),
        args: ['priority', String(TABLE_RULE_PRIORITY), 'lookup', String(this.table), ...common],
      },
    ];
  }

  /** The families to set up: those of the CIDRs and of the tunnel addresses. */
  private families(cidrs: readonly string[]): Array<4 | 6> {
    const families = new Set<4 | 6>(cidrs.map((cidr) => parseCidr(cidr).family));
    if (this.options.sources[4]) families.add(4);
    if (this.options.sources[6]) families.add(6);
    return [...families].sort();
  }
}

/**
 * A line for `ip -batch` (or after `ip `): one of the server's routes into its TUN, in the TUN's
 * own table unless a worker's shared one is given.
 */
export function serverRouteCommand(
  verb: 'replace' | 'del',
  cidr: string,
  tun: string,
  src?: string,
  at: { table?: number; metric?: number } = {},
): string {
  const source = verb === 'replace' && src ? ` src ${src}` : '';
  const table = at.table ?? routeTableFor(tun);
  return `route ${verb} ${cidr} dev ${tun}${source} proto ${ROUTE_PROTOCOL} metric ${at.metric ?? TUN_ROUTE_METRIC} table ${table}`;
}

/** A line for `ip -batch` (or after `ip `): one of the node's routes to the server's tunnel CIDRs. */
export function nodeRouteCommand(verb: 'replace' | 'del', cidr: string, tun: string): string {
  return `route ${verb} ${cidr} dev ${tun} proto ${ROUTE_PROTOCOL}`;
}

function sameRule(rule: RawRule, wanted: { priority: number; table: string; sport?: number }): boolean {
  return (
    rule.priority === wanted.priority &&
    rule.table === wanted.table &&
    rule.sport === wanted.sport &&
    rule.protocol === String(ROUTE_PROTOCOL)
  );
}

export interface ClientRoutesOptions {
  readonly tun: string;
  readonly run?: IpRunner;
  readonly batch?: BatchRunner;
}

/**
 * The node's routes to the server's tunnel CIDRs, from the server's welcome. A CIDR that would
 * be a default route, hold the server's own address (the node would dial the server through the
 * tunnel to the server), or cover a route the node already has is refused with one line; the
 * client installs the rest with its protocol and removes only routes it installed.
 */
export class ClientRoutes {
  private installed = new Set<string>();
  private readonly run: IpRunner;
  private readonly batch: BatchRunner;

  constructor(private readonly options: ClientRoutesOptions) {
    this.run = options.run ?? ip;
    this.batch = options.batch ?? ((commands) => ipBatch(commands));
  }

  /** Routes `cidrs` into the TUN; `serverAddress` is the address this node dials the server at. */
  async install(cidrs: readonly string[], serverAddress: string | undefined): Promise<void> {
    const label = (cidr: string): string => `the server's tunnel CIDR ${cidr}`;
    for (const text of cidrs) {
      const cidr = parseCidr(text);
      if (cidr.length === 0)
        throw new RouteConflictError(
          `${label(text)} would be a default route on this node: refused; the server must announce only its own tunnel CIDR`,
        );
      if (serverAddress && containsAddress(cidr, serverAddress))
        throw new RouteConflictError(
          `${label(text)} holds the server's own address ${serverAddress}: this node would dial the server through the tunnel to it; give the server a --tunnel-cidr outside the addresses nodes dial it at`,
        );
    }
    const families = [...new Set(cidrs.map((cidr) => parseCidr(cidr).family))];
    const owner = { tun: this.options.tun, table: TABLE_MAIN };
    const conflict = routeConflicts(cidrs, await readRoutes(this.run, families), owner)[0];
    if (conflict?.route)
      throw new RouteConflictError(
        `${label(conflict.cidr)} covers this node's route ${describeRoute(conflict.route)}: refused; give the server a --tunnel-cidr the nodes do not use`,
      );
    const next = new Set(cidrs.map((cidr) => parseCidr(cidr).text));
    const stale = [...this.installed].filter((cidr) => !next.has(cidr));
    await this.batch([...next].map((cidr) => nodeRouteCommand('replace', cidr, this.options.tun)));
    await this.batch(stale.map((cidr) => nodeRouteCommand('del', cidr, this.options.tun))).catch(() => undefined);
    this.installed = next;
  }
}

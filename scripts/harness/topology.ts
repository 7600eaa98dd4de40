// The namespace harness: a managed-cluster topology built from network namespaces (the address
// plan and its picture are in addresses.ts), used by the namespace tests, the fault suite and the
// demo.
//
// Every veth is created inside its namespaces (`ip -n A link add X type veth peer name Y netns B`),
// so nothing ever appears in the root namespace. Interface names are reused across namespaces.
//
// Sysctls set in every namespace before any interface exists: IPv6 enabled, DAD off (addresses
// usable at once; v6 addresses are also added with `nodad`), rp_filter = opts.rpFilter (default 2,
// loose, as Ubuntu/AKS node images ship it). Router and nodes: IPv4 and IPv6 forwarding on.
//
// The harness stops only processes it spawned, by PID, and deletes only namespaces it created. It
// also removes them synchronously on process 'exit', SIGINT, SIGTERM and SIGHUP.

import { execFileSync, spawn as spawnChild } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { closeSync, existsSync, openSync, rmSync } from 'node:fs';
import { mkdtemp, rm } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { fileURLToPath } from 'node:url';
import * as plan from './addresses.js';
import { noteStrayProcesses, trackProcesses } from './leaks.js';
import {
  ManagedProcess,
  cleanUpOnExit,
  run,
  type ExecOptions,
  type ExecResult,
  type ExitInfo,
  type RawResult,
  type SpawnOptions,
} from './processes.js';
import { curl, ping, type CurlOptions, type CurlResult, type PingOptions } from './probes.js';
import { dialVia, type DialRequest, type DialResult } from '../apiserver-standin.js';

const STUB_READY_TIMEOUT_MS = 10_000;

export interface HarnessOptions {
  /** Number of nodes (default 2). */
  nodes?: number;
  /** Pods per node (default 1). */
  podsPerNode?: number;
  /** Namespace name prefix (default `nl` + 5 random hex digits). */
  prefix?: string;
  /** rp_filter for all/default in every namespace: 0 off, 1 strict, 2 loose (default 2). */
  rpFilter?: 0 | 1 | 2;
  /** Give cp a default route via the router (default false: cp has only its connected /24). */
  cpDefaultRoute?: boolean;
  /** Start the kubelet and pod stubs (default true). */
  stubs?: boolean;
  /**
   * Control-plane namespaces (default 1, at most MAX_CONTROL_PLANES). Control plane i > 1,
   * `${prefix}-cp${i}`, sits on its own network behind the same router, for several servers.
   */
  controlPlanes?: number;
  /**
   * Source-NAT the node network towards the control plane (default true). false makes a flat
   * network: the control plane sees a node's connections come from the node's own address and
   * routes the node network back through the router, which still drops connections it opens.
   */
  nat?: boolean;
}

/** The "apiserver" stand-in (scripts/apiserver-standin.ts) running in a namespace. */
export interface Apiserver {
  readonly process: ManagedProcess;
  /** Dials from the stand-in's namespace, timed there. */
  dial(target: DialRequest): Promise<DialResult>;
}

/** The kube-apiserver flags nodelink needs (docs/control-plane.md): the stand-in's by default. */
const APISERVER_FLAGS = [
  '--kubelet-preferred-address-types=InternalIP,ExternalIP,Hostname',
  '--enable-aggregator-routing=true',
];

export interface Namespaces {
  readonly cp: string;
  /** Control plane i (1-based): cp(1) is `cp`, cp(2) is `cp2`. */
  controlPlane(i: number): string;
  readonly rt: string;
  node(n: number): string;
  pod(n: number, p: number): string;
}

function stubScriptPath(): string {
  const here = path.dirname(fileURLToPath(import.meta.url));
  // Beside this folder when run from source; from dist/scripts/harness/, in the source tree.
  const candidates = [path.resolve(here, '../stub-server.mjs'), path.resolve(here, '../../../scripts/stub-server.mjs')];
  const found = candidates.find((c) => existsSync(c));
  if (!found) throw new Error(`stub-server.mjs not found (looked in ${candidates.join(', ')})`);
  return found;
}

export class Harness {
  readonly ns: Namespaces;
  readonly nodes: number;
  readonly podsPerNode: number;
  /** Processes this harness spawned (all of them, exited or not). */
  readonly processes: ManagedProcess[] = [];
  /** PEM files of the kubelet stubs' self-signed certificate (CN=kubelet, SANs: node IPs). */
  readonly kubeletCertPath: string;
  readonly kubeletKeyPath: string;

  /** Namespaces that this harness created, in creation order; only these are ever deleted. */
  private readonly created: string[] = [];
  /** PIDs of running exec() children. */
  private readonly execPids = new Set<number>();
  private destroyPromise: Promise<void> | undefined;
  private destroyed = false;
  private logSeq = 0;
  private cancelExitCleanup: () => void = () => undefined;

  private constructor(
    readonly prefix: string,
    readonly dir: string,
    private readonly opts: Required<Omit<HarnessOptions, 'prefix'>>,
  ) {
    this.nodes = opts.nodes;
    this.podsPerNode = opts.podsPerNode;
    this.ns = {
      cp: `${prefix}-cp`,
      controlPlane: (i: number) => (this.checkControlPlane(i) === 1 ? `${prefix}-cp` : `${prefix}-cp${i}`),
      rt: `${prefix}-rt`,
      node: (n: number) => `${prefix}-n${this.checkNode(n)}`,
      pod: (n: number, p: number) => `${prefix}-n${this.checkNode(n)}p${this.checkPod(p)}`,
    };
    this.kubeletCertPath = path.join(dir, 'kubelet.crt');
    this.kubeletKeyPath = path.join(dir, 'kubelet.key');
    trackProcesses(prefix, this.processes);
  }

  /** Builds the whole topology and starts the stubs; cleans up after itself if anything fails. */
  static async create(options: HarnessOptions = {}): Promise<Harness> {
    const nodes = options.nodes ?? 2;
    const podsPerNode = options.podsPerNode ?? 1;
    if (!Number.isInteger(nodes) || nodes < 1 || nodes > plan.MAX_NODES) {
      throw new Error(`nodes must be 1..${plan.MAX_NODES}`);
    }
    if (!Number.isInteger(podsPerNode) || podsPerNode < 1 || podsPerNode > plan.MAX_PODS) {
      throw new Error(`podsPerNode must be 1..${plan.MAX_PODS}`);
    }
    const controlPlanes = options.controlPlanes ?? 1;
    if (!Number.isInteger(controlPlanes) || controlPlanes < 1 || controlPlanes > plan.MAX_CONTROL_PLANES) {
      throw new Error(`controlPlanes must be 1..${plan.MAX_CONTROL_PLANES}`);
    }
    const prefix = options.prefix ?? `nl${randomBytes(3).toString('hex').slice(0, 5)}`;
    if (!/^[A-Za-z0-9][A-Za-z0-9_.-]{0,39}$/.test(prefix)) {
      throw new Error(`prefix ${JSON.stringify(prefix)} must be 1-40 letters, digits, '_', '.' or '-'`);
    }
    if (process.getuid?.() !== 0) throw new Error('the namespace harness needs root');
    const dir = await mkdtemp(path.join(os.tmpdir(), `nodelink-${prefix}-`));
    const h = new Harness(prefix, dir, {
      nodes,
      podsPerNode,
      rpFilter: options.rpFilter ?? 2,
      cpDefaultRoute: options.cpDefaultRoute ?? false,
      stubs: options.stubs ?? true,
      controlPlanes,
      nat: options.nat ?? true,
    });
    h.cancelExitCleanup = cleanUpOnExit(() => h.destroySync());
    try {
      await h.build();
    } catch (e) {
      await h.destroy().catch((cleanupError: unknown) => {
        process.stderr.write(`harness ${prefix}: cleanup after failed create: ${String(cleanupError)}\n`);
      });
      throw e;
    }
    return h;
  }

  // ---- addresses (see addresses.ts) ----------------------------------------------------------

  get cpAddress(): string {
    return plan.cpAddress(1);
  }
  get cpAddress6(): string {
    return plan.cpAddress6(1);
  }
  /** The address the cp sees node traffic come from (router's masquerade address). */
  get natAddress(): string {
    return plan.routerCpAddress(1);
  }
  get natAddress6(): string {
    return plan.routerCpAddress6(1);
  }
  get serverPort(): number {
    return plan.SERVER_PORT;
  }
  get serverEndpoint(): string {
    return this.serverEndpointOf(1);
  }
  get kubeletPort(): number {
    return plan.KUBELET_PORT;
  }
  get tunnelCIDR(): string {
    return plan.tunnelCidr(1);
  }
  get tunnelCIDR6(): string {
    return plan.tunnelCidr6(1);
  }
  /** HOST:PORT of the load-balanced address in front of the servers (see loadBalance). */
  get loadBalancerEndpoint(): string {
    return `${plan.LOAD_BALANCER_ADDRESS}:${plan.SERVER_PORT}`;
  }
  cpAddressOf(i: number): string {
    return plan.cpAddress(this.checkControlPlane(i));
  }
  cpAddress6Of(i: number): string {
    return plan.cpAddress6(this.checkControlPlane(i));
  }
  serverEndpointOf(i: number): string {
    return `${this.cpAddressOf(i)}:${plan.SERVER_PORT}`;
  }
  tunnelCIDROf(i: number): string {
    return plan.tunnelCidr(this.checkControlPlane(i));
  }
  tunnelCIDR6Of(i: number): string {
    return plan.tunnelCidr6(this.checkControlPlane(i));
  }
  nodeName(n: number): string {
    return `node-${this.checkNode(n)}`;
  }
  podName(n: number, p: number): string {
    return `${this.nodeName(n)}/pod-${this.checkPod(p)}`;
  }
  nodeIP(n: number): string {
    return plan.nodeAddress(this.checkNode(n));
  }
  nodeIP6(n: number): string {
    return plan.nodeAddress6(this.checkNode(n));
  }
  podIP(n: number, p: number): string {
    return plan.podAddress(this.checkNode(n), this.checkPod(p));
  }
  podIP6(n: number, p: number): string {
    return plan.podAddress6(this.checkNode(n), this.checkPod(p));
  }
  podCIDR(n: number): string {
    return plan.podCidr(this.checkNode(n));
  }
  podCIDR6(n: number): string {
    return plan.podCidr6(this.checkNode(n));
  }
  /** The node's gateway address for its pods (on cbr0). */
  podGateway(n: number): string {
    return plan.podGateway(this.checkNode(n));
  }
  podGateway6(n: number): string {
    return plan.podGateway6(this.checkNode(n));
  }
  /** What node n's client announces with --route: node IP /32 and /128, pod CIDRs. */
  nodeRoutes(n: number): string[] {
    return plan.nodeRoutes(this.checkNode(n));
  }
  kubeletURL(n: number, urlPath = '/healthz', v6 = false): string {
    return plan.url('https', v6 ? this.nodeIP6(n) : this.nodeIP(n), plan.KUBELET_PORT, urlPath);
  }
  podURL(n: number, p: number, urlPath = '/', v6 = false): string {
    return plan.url('http', v6 ? this.podIP6(n, p) : this.podIP(n, p), plan.POD_PORT, urlPath);
  }

  // ---- running things in namespaces ----------------------------------------------------------

  /** Runs argv inside ns (`ip netns exec`); throws with stderr on non-zero exit unless allowFail. */
  async exec(ns: string, argv: string[], opts: ExecOptions = {}): Promise<ExecResult> {
    const r = await this.execRaw(ns, argv, opts);
    return { code: r.code, stdout: r.stdout, stderr: r.stderr };
  }

  /** Starts a long-running process inside ns; stdout and stderr are appended to a log in dir. */
  spawn(ns: string, argv: string[], opts: SpawnOptions = {}): ManagedProcess {
    this.assertUsable();
    if (argv.length === 0) throw new Error('spawn: empty argv');
    const name = opts.name ?? path.basename(argv[0]!);
    const logPath = path.join(
      this.dir,
      `${String(++this.logSeq).padStart(3, '0')}-${name.replace(/[^A-Za-z0-9_.-]/g, '_')}.log`,
    );
    const fd = openSync(logPath, 'a');
    let child;
    try {
      child = spawnChild('ip', ['netns', 'exec', ns, ...argv], {
        stdio: ['ignore', fd, fd],
        env: { ...process.env, ...opts.env },
      });
    } finally {
      closeSync(fd);
    }
    const pid = child.pid;
    if (pid === undefined) throw new Error(`spawn ${name} in ${ns}: no pid (is iproute2 installed?)`);
    const exited = new Promise<ExitInfo>((resolve) => {
      child.once('error', () => resolve({ code: null, signal: null }));
      child.once('exit', (code, signal) => resolve({ code, signal }));
    });
    const proc = new ManagedProcess(pid, name, logPath, exited);
    this.processes.push(proc);
    return proc;
  }

  /** Starts a stub server (see stub-server.mjs) in ns and waits until it listens. */
  async startStub(
    ns: string,
    mode: 'kubelet' | 'pod',
    name: string,
    port: number,
    host = '::',
  ): Promise<ManagedProcess> {
    const args = [process.execPath, stubScriptPath(), mode, '--name', name, '--port', String(port), '--host', host];
    if (mode === 'kubelet') args.push('--cert', this.kubeletCertPath, '--key', this.kubeletKeyPath);
    const proc = this.spawn(ns, args, { name: `stub-${mode}-${name}` });
    await proc.waitForOutput('listening on', STUB_READY_TIMEOUT_MS);
    return proc;
  }

  /**
   * Starts the "apiserver" stand-in in ns (default: the control plane, where the server runs):
   * it dials kubelets and pods from there, as kube-apiserver does from the server's pod. Its
   * process is named kube-apiserver and carries `flags`, so `nodelink diagnose` finds and checks
   * it as it would the real one.
   */
  async startApiserver(ns = this.ns.cp, flags: readonly string[] = APISERVER_FLAGS): Promise<Apiserver> {
    const script = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../apiserver-standin.js');
    const socket = path.join(this.dir, `apiserver-${ns}.sock`);
    const argv = ['bash', '-c', 'exec -a kube-apiserver "$0" "$@"', process.execPath, script, '--socket', socket];
    const proc = this.spawn(ns, [...argv, ...flags], { name: `apiserver-${ns}` });
    await proc.waitForOutput('listening on', STUB_READY_TIMEOUT_MS);
    return { process: proc, dial: (target) => dialVia(socket, target) };
  }

  /** curl from inside ns; never throws for a failed transfer. */
  curl(ns: string, url: string, opts: CurlOptions = {}): Promise<CurlResult> {
    return curl((argv, execOpts) => this.execRaw(ns, argv, execOpts), url, opts);
  }

  /** ping from inside ns; true if at least one reply came back within timeoutS. */
  ping(ns: string, address: string, opts: PingOptions = {}): Promise<boolean> {
    return ping((argv, execOpts) => this.execRaw(ns, argv, execOpts), address, opts);
  }

  /**
   * Puts the servers of these control planes behind the load-balanced address: the router DNATs
   * each new connection to it to one of them, chosen at random, as a Service's IP does. Called
   * again, it replaces the set (scaling); an empty set removes the address.
   */
  async loadBalance(controlPlanes: readonly number[]): Promise<void> {
    const backends = controlPlanes.map((i, index) => `${index} : ${plan.cpAddress(this.checkControlPlane(i))}`);
    const rule =
      backends.length === 0
        ? ''
        : `ip daddr ${plan.LOAD_BALANCER_ADDRESS} tcp dport ${plan.SERVER_PORT} ` +
          `dnat to numgen random mod ${backends.length} map { ${backends.join(', ')} }`;
    await this.exec(this.ns.rt, ['nft', '-f', '-'], {
      input: `
table ip nodelink_load_balancer {}
delete table ip nodelink_load_balancer
table ip nodelink_load_balancer {
  chain prerouting {
    type nat hook prerouting priority dstnat; policy accept;
    ${rule}
  }
}
`,
    });
  }

  // ---- teardown ------------------------------------------------------------------------------

  /** Stops every process it started, deletes every namespace it made, removes dir. Idempotent. */
  destroy(): Promise<void> {
    this.destroyPromise ??= this.doDestroy();
    return this.destroyPromise;
  }

  /** Synchronous last-resort cleanup for exit hooks: SIGKILL by PID, delete namespaces, remove dir. */
  destroySync(): void {
    if (this.destroyed) return;
    this.destroyed = true;
    this.destroyPromise ??= Promise.resolve();
    for (const p of this.processes) p.kill('SIGKILL');
    this.killExecs();
    for (const ns of [...this.created].reverse()) {
      try {
        execFileSync('ip', ['netns', 'del', ns], { stdio: 'ignore', timeout: 5000 });
      } catch {
        /* best effort */
      }
    }
    this.created.length = 0;
    try {
      rmSync(this.dir, { recursive: true, force: true });
    } catch {
      /* best effort */
    }
    this.cancelExitCleanup();
  }

  private async doDestroy(): Promise<void> {
    this.destroyed = true;
    const problems: string[] = [];
    const stops = await Promise.allSettled(this.processes.map((p) => p.stop('SIGTERM', 3000)));
    for (const s of stops) if (s.status === 'rejected') problems.push(String(s.reason));
    this.killExecs();
    const stray = await noteStrayProcesses(this.prefix, this.created);
    if (stray.length > 0) {
      process.stderr.write(
        `harness ${this.prefix}: processes it did not start are still in its namespaces: ${stray.join(', ')}\n`,
      );
    }
    for (const ns of [...this.created].reverse()) {
      const r = await run('ip', ['netns', 'del', ns], { allowFail: true, timeoutMs: 10_000 });
      if (r.code !== 0) problems.push(`ip netns del ${ns}: ${r.stderr.trim()}`);
    }
    this.created.length = 0;
    await rm(this.dir, { recursive: true, force: true }).catch((e: unknown) =>
      problems.push(`rm ${this.dir}: ${String(e)}`),
    );
    this.cancelExitCleanup();
    if (problems.length > 0) throw new Error(`harness ${this.prefix} destroy: ${problems.join('; ')}`);
  }

  private killExecs(): void {
    for (const pid of this.execPids) {
      try {
        process.kill(pid, 'SIGKILL');
      } catch {
        /* gone */
      }
    }
  }

  // ---- building ------------------------------------------------------------------------------

  private async build(): Promise<void> {
    const { nodes, podsPerNode } = this.opts;
    const { cp, rt } = this.ns;
    const controlPlanes = Array.from({ length: this.opts.controlPlanes }, (_, i) => i + 1);

    // 1. Namespaces, sysctls (before any interface exists, so new interfaces inherit them), lo up.
    const all: string[] = [cp, rt];
    for (const i of controlPlanes.slice(1)) all.push(this.ns.controlPlane(i));
    for (let n = 1; n <= nodes; n++) {
      all.push(this.ns.node(n));
      for (let p = 1; p <= podsPerNode; p++) all.push(this.ns.pod(n, p));
    }
    for (const ns of all) {
      await run('ip', ['netns', 'add', ns]);
      this.created.push(ns);
    }
    const forwarders = new Set([rt, ...Array.from({ length: nodes }, (_, i) => this.ns.node(i + 1))]);
    await Promise.all(
      all.map(async (ns) => {
        const rp = String(this.opts.rpFilter);
        const sysctls = [
          'net.ipv6.conf.all.disable_ipv6=0',
          'net.ipv6.conf.default.disable_ipv6=0',
          'net.ipv6.conf.all.accept_dad=0',
          'net.ipv6.conf.default.accept_dad=0',
          `net.ipv4.conf.all.rp_filter=${rp}`,
          `net.ipv4.conf.default.rp_filter=${rp}`,
        ];
        if (forwarders.has(ns)) sysctls.push('net.ipv4.ip_forward=1', 'net.ipv6.conf.all.forwarding=1');
        await this.exec(ns, ['sysctl', '-q', '-w', ...sysctls]);
        await this.ip(ns, 'link', 'set', 'lo', 'up');
      }),
    );

    // 2. Links, all created inside namespaces, and all up before addresses and routes. Control
    // plane i hangs off the router's port cp(i-1).
    for (const i of controlPlanes) {
      const ns = this.ns.controlPlane(i);
      const port = `cp${i - 1}`;
      await this.ip(ns, 'link', 'add', 'eth0', 'type', 'veth', 'peer', 'name', port, 'netns', rt);
      await this.ip(ns, 'link', 'set', 'eth0', 'up');
      await this.ip(rt, 'link', 'set', port, 'up');
    }
    await this.ip(rt, 'link', 'add', 'br0', 'type', 'bridge', 'stp_state', '0', 'forward_delay', '0');
    await this.ip(rt, 'link', 'set', 'br0', 'up');
    await Promise.all(
      this.nodeNumbers().map(async (n) => {
        const node = this.ns.node(n);
        await this.ip(rt, 'link', 'add', `n${n}`, 'type', 'veth', 'peer', 'name', 'eth0', 'netns', node);
        await this.ip(rt, 'link', 'set', `n${n}`, 'master', 'br0', 'up');
        await this.ip(node, 'link', 'set', 'eth0', 'up');
        await this.ip(node, 'link', 'add', 'cbr0', 'type', 'bridge', 'stp_state', '0', 'forward_delay', '0');
        await this.ip(node, 'link', 'set', 'cbr0', 'up');
        for (let p = 1; p <= podsPerNode; p++) {
          const pod = this.ns.pod(n, p);
          await this.ip(node, 'link', 'add', `vp${p}`, 'type', 'veth', 'peer', 'name', 'eth0', 'netns', pod);
          await this.ip(node, 'link', 'set', `vp${p}`, 'master', 'cbr0', 'up');
          await this.ip(pod, 'link', 'set', 'eth0', 'up');
        }
      }),
    );

    // 3. Addresses.
    for (const i of controlPlanes) {
      await this.addr(this.ns.controlPlane(i), 'eth0', plan.cpAddress(i), plan.cpAddress6(i));
      await this.addr(rt, `cp${i - 1}`, plan.routerCpAddress(i), plan.routerCpAddress6(i));
    }
    await this.addr(rt, 'br0', plan.ROUTER_NODE_ADDRESS, plan.ROUTER_NODE_ADDRESS6);
    await Promise.all(
      this.nodeNumbers().map(async (n) => {
        const node = this.ns.node(n);
        await this.addr(node, 'eth0', this.nodeIP(n), this.nodeIP6(n));
        await this.addr(node, 'cbr0', this.podGateway(n), this.podGateway6(n));
        for (let p = 1; p <= podsPerNode; p++) {
          await this.addr(this.ns.pod(n, p), 'eth0', this.podIP(n, p), this.podIP6(n, p));
        }
      }),
    );

    // 4. Routes. cp: connected only (unless cpDefaultRoute, or a flat network, which routes the
    // node network back). Router: pod CIDRs via their node.
    if (this.opts.cpDefaultRoute) {
      await this.route(cp, 'default', plan.routerCpAddress(1));
      await this.route(cp, 'default', plan.routerCpAddress6(1));
    } else if (!this.opts.nat) {
      await this.route(cp, plan.NODE_NETWORK, plan.routerCpAddress(1));
      await this.route(cp, plan.NODE_NETWORK6, plan.routerCpAddress6(1));
    }
    await Promise.all(
      this.nodeNumbers().map(async (n) => {
        const node = this.ns.node(n);
        await this.route(rt, this.podCIDR(n), this.nodeIP(n));
        await this.route(rt, this.podCIDR6(n), this.nodeIP6(n));
        await this.route(node, 'default', plan.ROUTER_NODE_ADDRESS);
        await this.route(node, 'default', plan.ROUTER_NODE_ADDRESS6);
        for (let p = 1; p <= podsPerNode; p++) {
          await this.route(this.ns.pod(n, p), 'default', this.podGateway(n));
          await this.route(this.ns.pod(n, p), 'default', this.podGateway6(n));
        }
      }),
    );

    // 5. Router firewall: the node network is behind NAT (unless flat), the cp cannot open
    // connections into it.
    const cpPorts = Array.from({ length: plan.MAX_CONTROL_PLANES }, (_, i) => `"cp${i}"`).join(', ');
    const nat = `
  chain postrouting {
    type nat hook postrouting priority srcnat; policy accept;
    oifname { ${cpPorts} } ip saddr ${plan.NODE_NETWORK} counter masquerade
    oifname { ${cpPorts} } ip6 saddr ${plan.NODE_NETWORK6} counter masquerade
  }`;
    await this.exec(rt, ['nft', '-f', '-'], {
      input: `
table inet nodelink_harness {
  chain forward {
    type filter hook forward priority filter; policy accept;
    ct state established,related accept
    iifname { ${cpPorts} } counter drop comment "the control plane cannot open connections to nodes or pods"
  }${this.opts.nat ? nat : ''}
}
`,
    });

    // 6. Stubs: kubelet on every node (HTTPS, self-signed), an HTTP server in every pod.
    if (!this.opts.stubs) return;
    const sans = [
      'DNS:kubelet',
      ...this.nodeNumbers().flatMap((n) => [`IP:${this.nodeIP(n)}`, `IP:${this.nodeIP6(n)}`]),
    ];
    await run('openssl', [
      'req',
      '-x509',
      '-newkey',
      'ec',
      '-pkeyopt',
      'ec_paramgen_curve:prime256v1',
      '-nodes',
      '-days',
      '1',
      '-subj',
      '/CN=kubelet',
      '-addext',
      `subjectAltName=${sans.join(',')}`,
      '-keyout',
      this.kubeletKeyPath,
      '-out',
      this.kubeletCertPath,
    ]);
    const starts: Promise<ManagedProcess>[] = [];
    for (const n of this.nodeNumbers()) {
      starts.push(this.startStub(this.ns.node(n), 'kubelet', this.nodeName(n), plan.KUBELET_PORT));
      for (let p = 1; p <= podsPerNode; p++)
        starts.push(this.startStub(this.ns.pod(n, p), 'pod', this.podName(n, p), plan.POD_PORT));
    }
    const results = await Promise.allSettled(starts);
    const failed = results.filter((r): r is PromiseRejectedResult => r.status === 'rejected');
    if (failed.length > 0)
      throw new Error(`stub servers failed to start: ${failed.map((f) => String(f.reason)).join('\n')}`);
  }

  private nodeNumbers(): number[] {
    return Array.from({ length: this.opts.nodes }, (_, i) => i + 1);
  }

  private ip(ns: string, ...args: string[]): Promise<RawResult> {
    return run('ip', ['-n', ns, ...args], { track: this.trackExec });
  }

  /** Adds an IPv4 and an IPv6 address, each with its link network's prefix length. */
  private async addr(ns: string, dev: string, v4: string, v6: string): Promise<void> {
    await this.ip(ns, 'addr', 'add', plan.onLink(v4), 'dev', dev);
    await this.ip(ns, '-6', 'addr', 'add', plan.onLink(v6), 'dev', dev, 'nodad');
  }

  /** Adds a route; retries briefly because a fresh IPv6 prefix route can lag the address. */
  private async route(ns: string, dst: string, via: string): Promise<void> {
    const family = via.includes(':') ? '-6' : '-4';
    for (let attempt = 1; ; attempt++) {
      const r = await run('ip', ['-n', ns, family, 'route', 'add', dst, 'via', via], {
        allowFail: true,
        track: this.trackExec,
      });
      if (r.code === 0) return;
      if (attempt >= 20) throw new Error(`ip -n ${ns} ${family} route add ${dst} via ${via}: ${r.stderr.trim()}`);
      await sleep(50);
    }
  }

  private execRaw(ns: string, argv: string[], opts: ExecOptions): Promise<RawResult> {
    this.assertUsable();
    return run('ip', ['netns', 'exec', ns, ...argv], { ...opts, track: this.trackExec });
  }

  private readonly trackExec = (pid: number, running: boolean): void => {
    if (running) this.execPids.add(pid);
    else this.execPids.delete(pid);
  };

  private assertUsable(): void {
    if (this.destroyed) throw new Error(`harness ${this.prefix} has been destroyed`);
  }

  private checkControlPlane(i: number): number {
    if (!Number.isInteger(i) || i < 1 || i > this.opts.controlPlanes)
      throw new Error(`control plane ${i} out of range 1..${this.opts.controlPlanes}`);
    return i;
  }

  private checkNode(n: number): number {
    if (!Number.isInteger(n) || n < 1 || n > this.nodes) throw new Error(`node ${n} out of range 1..${this.nodes}`);
    return n;
  }

  private checkPod(p: number): number {
    if (!Number.isInteger(p) || p < 1 || p > this.podsPerNode)
      throw new Error(`pod ${p} out of range 1..${this.podsPerNode}`);
    return p;
  }
}

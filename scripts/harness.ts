// Namespace test harness: a managed-cluster topology built from network namespaces, used by the
// netns tests and the demo. See SPEC.md, "Test harness" and "Rules for every network test".
//
//   ${prefix}-cp  control plane    eth0 198.18.0.2/24  fd00:18::2/64      (no route to nodes)
//                                    │
//   ${prefix}-rt  router           cp0  198.18.0.1/24  fd00:18::1/64
//                                  br0  198.19.0.1/24  fd00:19::1/64      (bridge, node network)
//                                  nft: masquerade node network -> cp0; drop NEW cp0 -> anywhere
//                                  routes: 198.19.N.0/24 via node N, fd00:19:N::/64 via node N
//                                    │ nN (bridge port)
//   ${prefix}-nN  node N           eth0 198.19.0.(10+N)/24  fd00:19::hex(10+N)/64   (node 1: fd00:19::b)
//                                  cbr0 198.19.N.1/24  fd00:19:N::1/64    (bridge, like kubenet)
//                                  default via 198.19.0.1 / fd00:19::1, forwarding on
//                                  kubelet stub: HTTPS [::]:10250
//                                    │ vpP (cbr0 port)
//   ${prefix}-nNpP pod P of node N eth0 198.19.N.(1+P)/24  fd00:19:N::hex(1+P)/64
//                                  default via 198.19.N.1 / fd00:19:N::1
//                                  pod stub: HTTP [::]:8080
//
// In IPv6 addresses every number is written in hex: node N's pod CIDR is fd00:19:hex(N)::/64.
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
import { createCipheriv, createHash, randomBytes } from 'node:crypto';
import { closeSync, existsSync, openSync, readFileSync, rmSync } from 'node:fs';
import { mkdtemp, rm } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

// ---------------------------------------------------------------------------------------------
// Constants of the layout.

const CP_ADDRESS = '198.18.0.2';
const CP_ADDRESS6 = 'fd00:18::2';
const RT_CP_ADDRESS = '198.18.0.1';
const RT_CP_ADDRESS6 = 'fd00:18::1';
const RT_NODE_ADDRESS = '198.19.0.1';
const RT_NODE_ADDRESS6 = 'fd00:19::1';
const SERVER_PORT = 8443;
const KUBELET_PORT = 10250;
const POD_PORT = 8080;
const MAX_NODES = 200;
const MAX_PODS = 200;

const DEFAULT_EXEC_TIMEOUT_MS = 20_000;
const STUB_READY_TIMEOUT_MS = 10_000;
const POLL_MS = 100;

/** Key and IV of the deterministic byte stream served by the stubs at /bytes/N (see stub-server.mjs). */
const BYTES_KEY = createHash('sha256').update('nodelink stub bytes v1').digest().subarray(0, 16);
const BYTES_IV = Buffer.alloc(16);
const BYTES_CHUNK = 64 * 1024;

// ---------------------------------------------------------------------------------------------
// Public types.

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
   * Control-plane namespaces (default 1, at most 2). The second, `${prefix}-cp2`, sits on its
   * own network 198.18.1.0/24 (fd00:18:1::/64) behind the same router, for several servers.
   */
  controlPlanes?: 1 | 2;
}

export interface ExecOptions {
  timeoutMs?: number;
  input?: string;
  allowFail?: boolean;
}

export interface ExecResult {
  code: number;
  stdout: string;
  stderr: string;
}

export interface SpawnOptions {
  name?: string;
  env?: Record<string, string>;
}

export interface ExitInfo {
  code: number | null;
  signal: string | null;
}

export interface CurlOptions {
  timeoutS?: number;
  /** Pass -k for https URLs (default true: the kubelet stub's certificate is self-signed). */
  insecure?: boolean;
  /** curl --interface */
  interface?: string;
  /** Extra curl arguments, e.g. ['-X', 'POST', '--data-binary', '@file']. */
  args?: string[];
}

export interface CurlResult {
  /** Transfer succeeded and the HTTP status was below 400. */
  ok: boolean;
  body: string;
  /** HTTP status, 0 when no response arrived. */
  status: number;
  /** curl's exit code (28 = timeout, 7 = could not connect). */
  exitCode: number;
  /** curl's error line, if any. */
  error: string;
  bytes: number;
  /** hex sha256 of the raw body, for integrity checks against Harness.expectedSha256(n). */
  sha256: string;
}

export interface PingOptions {
  count?: number;
  timeoutS?: number;
  size?: number;
  dontFragment?: boolean;
}

export interface Namespaces {
  readonly cp: string;
  /** Control plane i (1-based): cp(1) is `cp`, cp(2) is `cp2`. */
  controlPlane(i: number): string;
  readonly rt: string;
  node(n: number): string;
  pod(n: number, p: number): string;
}

// ---------------------------------------------------------------------------------------------
// Low-level process helpers.

interface RunOptions extends ExecOptions {
  /** Called with the child's PID while it runs, and with undefined when it has exited. */
  track?: (pid: number, running: boolean) => void;
}

interface RawResult extends ExecResult {
  stdoutBuffer: Buffer;
}

function run(cmd: string, args: string[], opts: RunOptions = {}): Promise<RawResult> {
  const timeoutMs = opts.timeoutMs ?? DEFAULT_EXEC_TIMEOUT_MS;
  const what = [cmd, ...args].join(' ');
  return new Promise((resolve, reject) => {
    const child = spawnChild(cmd, args, { stdio: ['pipe', 'pipe', 'pipe'] });
    const out: Buffer[] = [];
    const err: Buffer[] = [];
    let timedOut = false;
    let settled = false;
    const pid = child.pid;
    if (pid !== undefined) opts.track?.(pid, true);
    const timer = setTimeout(() => {
      timedOut = true;
      if (pid !== undefined && child.exitCode === null && child.signalCode === null) {
        try {
          process.kill(pid, 'SIGKILL');
        } catch {
          /* already gone */
        }
      }
    }, timeoutMs);
    const finish = (result: RawResult | Error): void => {
      if (settled) return;
      settled = true;
      clearTimeout(timer);
      if (pid !== undefined) opts.track?.(pid, false);
      if (result instanceof Error) reject(result);
      else resolve(result);
    };
    child.stdout.on('data', (b: Buffer) => out.push(b));
    child.stderr.on('data', (b: Buffer) => err.push(b));
    child.stdin.on('error', () => {
      /* child exited before reading its input */
    });
    child.on('error', (e) => finish(new Error(`${what}: ${e.message}`)));
    child.on('close', (code, signal) => {
      const stdoutBuffer = Buffer.concat(out);
      let stderr = Buffer.concat(err).toString('utf8');
      if (timedOut) stderr += `${stderr && !stderr.endsWith('\n') ? '\n' : ''}timed out after ${timeoutMs} ms`;
      const exit = code ?? (timedOut ? 124 : 128 + (signal ? (os.constants.signals[signal] ?? 0) : 0));
      const result: RawResult = { code: exit, stdout: stdoutBuffer.toString('utf8'), stderr, stdoutBuffer };
      if (exit !== 0 && !opts.allowFail) {
        finish(
          new Error(`${what} failed (exit ${exit}${signal ? `, ${signal}` : ''}): ${stderr.trim() || '(no stderr)'}`),
        );
      } else {
        finish(result);
      }
    });
    child.stdin.end(opts.input ?? '');
  });
}

/** Resolves with the promise's value, or undefined after ms milliseconds; leaves no timer behind. */
async function within<T>(promise: Promise<T>, ms: number): Promise<T | undefined> {
  let timer: NodeJS.Timeout | undefined;
  const timeout = new Promise<undefined>((resolve) => {
    timer = setTimeout(() => resolve(undefined), ms);
  });
  try {
    return await Promise.race([promise, timeout]);
  } finally {
    clearTimeout(timer);
  }
}

const sleep = (ms: number): Promise<void> => new Promise((resolve) => setTimeout(resolve, ms));

function isAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (e) {
    return (e as NodeJS.ErrnoException).code === 'EPERM';
  }
}

function hex(n: number): string {
  return n.toString(16);
}

// ---------------------------------------------------------------------------------------------
// Spawned processes.

/** A long-running process started by the harness inside a namespace; output goes to logPath. */
export class ManagedProcess {
  readonly exited: Promise<ExitInfo>;
  private exitInfo: ExitInfo | undefined;

  constructor(
    readonly pid: number,
    readonly name: string,
    readonly logPath: string,
    exited: Promise<ExitInfo>,
  ) {
    this.exited = exited.then((info) => {
      this.exitInfo = info;
      return info;
    });
  }

  /** True until the process has exited and been reaped. */
  get running(): boolean {
    return this.exitInfo === undefined;
  }

  /** stdout and stderr so far. */
  output(): string {
    try {
      return readFileSync(this.logPath, 'utf8');
    } catch {
      return '';
    }
  }

  /** Sends `signal` by PID, waits up to graceMs, then SIGKILLs and waits up to 5 s more. */
  async stop(signal: NodeJS.Signals = 'SIGTERM', graceMs = 3000): Promise<ExitInfo> {
    if (this.exitInfo) return this.exitInfo;
    this.kill(signal);
    const first = await within(this.exited, graceMs);
    if (first) return first;
    this.kill('SIGKILL');
    const second = await within(this.exited, 5000);
    if (second) return second;
    throw new Error(`${this.name} (pid ${this.pid}) did not exit after SIGKILL`);
  }

  /** Sends a signal by PID if the process has not exited yet. */
  kill(signal: NodeJS.Signals): void {
    if (this.exitInfo) return;
    try {
      process.kill(this.pid, signal);
    } catch {
      /* exited meanwhile */
    }
  }
}

// ---------------------------------------------------------------------------------------------
// Process-wide registries: live harnesses (for exit hooks) and tracked processes (for leftovers).

const liveHarnesses = new Set<Harness>();
/** prefix -> processes spawned by that harness (leftovers() looks at the running ones). */
const trackedByPrefix = new Map<string, readonly ManagedProcess[]>();
/** prefix -> processes found inside its namespaces at destroy time that the harness did not start. */
const strayByPrefix = new Map<string, Map<number, string>>();

const HOOK_SIGNALS: NodeJS.Signals[] = ['SIGINT', 'SIGTERM', 'SIGHUP'];
let hooksInstalled = false;

function cleanupAllSync(): void {
  for (const h of [...liveHarnesses]) h.destroySync();
}

function onSignal(signal: NodeJS.Signals): void {
  cleanupAllSync();
  uninstallHooks();
  // Without another listener Node would have died of this signal: restore that behaviour.
  if (process.listenerCount(signal) === 0) process.kill(process.pid, signal);
}

function installHooks(): void {
  if (hooksInstalled) return;
  hooksInstalled = true;
  process.on('exit', cleanupAllSync);
  for (const s of HOOK_SIGNALS) process.on(s, onSignal);
}

function uninstallHooks(): void {
  if (!hooksInstalled) return;
  hooksInstalled = false;
  process.off('exit', cleanupAllSync);
  for (const s of HOOK_SIGNALS) process.off(s, onSignal);
}

function stubScriptPath(): string {
  const here = path.dirname(fileURLToPath(import.meta.url));
  // dist/scripts/harness.js -> scripts/stub-server.mjs; or next to harness.ts when run from source.
  const candidates = [path.join(here, 'stub-server.mjs'), path.resolve(here, '../../scripts/stub-server.mjs')];
  const found = candidates.find((c) => existsSync(c));
  if (!found) throw new Error(`stub-server.mjs not found (looked in ${candidates.join(', ')})`);
  return found;
}

// ---------------------------------------------------------------------------------------------

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
    trackedByPrefix.set(prefix, this.processes);
  }

  /** Builds the whole topology and starts the stubs; cleans up after itself if anything fails. */
  static async create(options: HarnessOptions = {}): Promise<Harness> {
    const nodes = options.nodes ?? 2;
    const podsPerNode = options.podsPerNode ?? 1;
    if (!Number.isInteger(nodes) || nodes < 1 || nodes > MAX_NODES) throw new Error(`nodes must be 1..${MAX_NODES}`);
    if (!Number.isInteger(podsPerNode) || podsPerNode < 1 || podsPerNode > MAX_PODS) {
      throw new Error(`podsPerNode must be 1..${MAX_PODS}`);
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
      controlPlanes: options.controlPlanes ?? 1,
    });
    liveHarnesses.add(h);
    installHooks();
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

  /**
   * What a leak check should see as empty: namespaces named `${prefix}-…`, processes the harness
   * with this prefix spawned that are still running, and processes it found inside its namespaces
   * at destroy time (started by someone else) that are still alive.
   */
  static async leftovers(prefix: string): Promise<string[]> {
    const found: string[] = [];
    for (const name of await Harness.listNamespaces()) {
      if (name.startsWith(`${prefix}-`)) found.push(`netns ${name}`);
    }
    for (const p of trackedByPrefix.get(prefix) ?? []) {
      if (p.running) found.push(`process ${p.pid} (${p.name})`);
    }
    for (const [pid, what] of strayByPrefix.get(prefix) ?? []) {
      if (isAlive(pid)) found.push(`process ${pid} (${what}, not started by the harness)`);
    }
    return found;
  }

  /** Routes and addresses of the test ranges in the ROOT namespace: must always be empty. */
  static async rootNamespaceViolations(): Promise<string[]> {
    const pattern = /\b(198\.1[89]\.|fd00:1[89]:)/i;
    const lines: string[] = [];
    for (const args of [
      ['-4', 'route', 'show', 'table', 'all'],
      ['-6', 'route', 'show', 'table', 'all'],
      ['-4', 'addr', 'show'],
      ['-6', 'addr', 'show'],
    ]) {
      const r = await run('ip', args, { allowFail: true, timeoutMs: 5000 });
      for (const line of r.stdout.split('\n'))
        if (pattern.test(line)) lines.push(`ip ${args.join(' ')}: ${line.trim()}`);
    }
    return lines;
  }

  static async listNamespaces(): Promise<string[]> {
    const r = await run('ip', ['netns', 'list'], { allowFail: true, timeoutMs: 5000 });
    return r.stdout
      .split('\n')
      .map((l) => l.trim().split(/\s+/)[0])
      .filter((s): s is string => !!s);
  }

  /** The deterministic bytes that a stub serves at /bytes/n. */
  static expectedBytes(n: number): Buffer {
    const cipher = createCipheriv('aes-128-ctr', BYTES_KEY, BYTES_IV);
    return cipher.update(Buffer.alloc(n));
  }

  /** hex sha256 of what a stub serves at /bytes/n (computed in chunks, fine for large n). */
  static expectedSha256(n: number): string {
    const cipher = createCipheriv('aes-128-ctr', BYTES_KEY, BYTES_IV);
    const hash = createHash('sha256');
    const zero = Buffer.alloc(BYTES_CHUNK);
    for (let left = n; left > 0; left -= BYTES_CHUNK) {
      const len = Math.min(left, BYTES_CHUNK);
      hash.update(cipher.update(len === BYTES_CHUNK ? zero : zero.subarray(0, len)));
    }
    return hash.digest('hex');
  }

  /** `http://198.19.1.2:8080/x` or `http://[fd00:19:1::2]:8080/x`. */
  static url(scheme: 'http' | 'https', host: string, port: number, urlPath = '/'): string {
    const h = host.includes(':') ? `[${host}]` : host;
    return `${scheme}://${h}:${port}${urlPath.startsWith('/') ? urlPath : `/${urlPath}`}`;
  }

  // ---- addresses -----------------------------------------------------------------------------

  get cpAddress(): string {
    return CP_ADDRESS;
  }
  get cpAddress6(): string {
    return CP_ADDRESS6;
  }
  /** The address the cp sees node traffic come from (router's masquerade address). */
  get natAddress(): string {
    return RT_CP_ADDRESS;
  }
  get natAddress6(): string {
    return RT_CP_ADDRESS6;
  }
  get serverPort(): number {
    return SERVER_PORT;
  }
  get serverEndpoint(): string {
    return `${CP_ADDRESS}:${SERVER_PORT}`;
  }
  get kubeletPort(): number {
    return KUBELET_PORT;
  }
  get tunnelCIDR(): string {
    return '198.18.255.0/24';
  }
  get tunnelCIDR6(): string {
    return 'fd00:18:ff::/64';
  }
  /** Control plane i: 198.18.(i-1).2; its server's tunnel CIDR 198.18.(256-i).0/24 (distinct per server). */
  cpAddressOf(i: number): string {
    return `198.18.${this.checkControlPlane(i) - 1}.2`;
  }
  cpAddress6Of(i: number): string {
    return this.checkControlPlane(i) === 1 ? CP_ADDRESS6 : `fd00:18:${i - 1}::2`;
  }
  serverEndpointOf(i: number): string {
    return `${this.cpAddressOf(i)}:${SERVER_PORT}`;
  }
  tunnelCIDROf(i: number): string {
    return `198.18.${256 - this.checkControlPlane(i)}.0/24`;
  }
  tunnelCIDR6Of(i: number): string {
    return `fd00:18:${(256 - this.checkControlPlane(i)).toString(16)}::/64`;
  }

  private checkControlPlane(i: number): number {
    if (!Number.isInteger(i) || i < 1 || i > this.opts.controlPlanes)
      throw new Error(`control plane ${i} out of range 1..${this.opts.controlPlanes}`);
    return i;
  }

  nodeName(n: number): string {
    return `node-${this.checkNode(n)}`;
  }
  podName(n: number, p: number): string {
    return `${this.nodeName(n)}/pod-${this.checkPod(p)}`;
  }
  /** 198.19.0.(10+n) */
  nodeIP(n: number): string {
    return `198.19.0.${10 + this.checkNode(n)}`;
  }
  /** fd00:19::hex(10+n): node 1 is fd00:19::b, node 6 is fd00:19::10. */
  nodeIP6(n: number): string {
    return `fd00:19::${hex(10 + this.checkNode(n))}`;
  }
  /** 198.19.n.(1+p) */
  podIP(n: number, p: number): string {
    return `198.19.${this.checkNode(n)}.${1 + this.checkPod(p)}`;
  }
  /** fd00:19:hex(n)::hex(1+p) */
  podIP6(n: number, p: number): string {
    return `fd00:19:${hex(this.checkNode(n))}::${hex(1 + this.checkPod(p))}`;
  }
  /** 198.19.n.0/24 */
  podCIDR(n: number): string {
    return `198.19.${this.checkNode(n)}.0/24`;
  }
  /** fd00:19:hex(n)::/64 */
  podCIDR6(n: number): string {
    return `fd00:19:${hex(this.checkNode(n))}::/64`;
  }
  /** The node's gateway address for its pods (on cbr0). */
  podGateway(n: number): string {
    return `198.19.${this.checkNode(n)}.1`;
  }
  podGateway6(n: number): string {
    return `fd00:19:${hex(this.checkNode(n))}::1`;
  }
  /** What node n's client announces with --route: node IP /32 and /128, pod CIDRs. */
  nodeRoutes(n: number): string[] {
    return [`${this.nodeIP(n)}/32`, this.podCIDR(n), `${this.nodeIP6(n)}/128`, this.podCIDR6(n)];
  }
  kubeletURL(n: number, urlPath = '/healthz', v6 = false): string {
    return Harness.url('https', v6 ? this.nodeIP6(n) : this.nodeIP(n), KUBELET_PORT, urlPath);
  }
  podURL(n: number, p: number, urlPath = '/', v6 = false): string {
    return Harness.url('http', v6 ? this.podIP6(n, p) : this.podIP(n, p), POD_PORT, urlPath);
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
    await this.waitForOutput(proc, 'listening on', STUB_READY_TIMEOUT_MS);
    return proc;
  }

  /** Waits until the process prints `text`; throws (with its output) if it exits first or times out. */
  async waitForOutput(proc: ManagedProcess, text: string, timeoutMs: number): Promise<void> {
    const deadline = Date.now() + timeoutMs;
    while (Date.now() < deadline) {
      if (proc.output().includes(text)) return;
      if (!proc.running) break;
      await sleep(50);
    }
    if (proc.output().includes(text)) return;
    const state = proc.running ? `not within ${timeoutMs} ms` : 'before it exited';
    throw new Error(
      `${proc.name} (pid ${proc.pid}) did not print ${JSON.stringify(text)} ${state}; output:\n${proc.output()}`,
    );
  }

  /** curl from inside ns; never throws for a failed transfer. */
  async curl(ns: string, url: string, opts: CurlOptions = {}): Promise<CurlResult> {
    const timeoutS = opts.timeoutS ?? 5;
    const args = ['curl', '-sS', '-g', '--max-time', String(timeoutS), '-w', '%{stderr}\nNLHTTPSTATUS=%{http_code}\n'];
    if (url.startsWith('https:') && opts.insecure !== false) args.push('-k');
    if (opts.interface) args.push('--interface', opts.interface);
    if (opts.args) args.push(...opts.args);
    args.push(url);
    const r = await this.execRaw(ns, args, { allowFail: true, timeoutMs: (timeoutS + 5) * 1000 });
    const m = /\nNLHTTPSTATUS=(\d+)\n?$/.exec(r.stderr);
    const status = m ? Number(m[1]) : 0;
    const error = (m ? r.stderr.slice(0, m.index) : r.stderr).trim();
    return {
      ok: r.code === 0 && status > 0 && status < 400,
      body: r.stdout,
      status,
      exitCode: r.code,
      error,
      bytes: r.stdoutBuffer.length,
      sha256: createHash('sha256').update(r.stdoutBuffer).digest('hex'),
    };
  }

  /** ping from inside ns; true if at least one reply came back within timeoutS. */
  async ping(ns: string, addr: string, opts: PingOptions = {}): Promise<boolean> {
    const count = opts.count ?? 1;
    const timeoutS = opts.timeoutS ?? 2;
    const args = ['ping', '-n', '-q', '-c', String(count), '-w', String(timeoutS)];
    if (addr.includes(':')) args.push('-6');
    if (count > 1) args.push('-i', '0.2');
    if (opts.size !== undefined) args.push('-s', String(opts.size));
    if (opts.dontFragment) args.push('-M', 'do');
    args.push(addr);
    const r = await this.exec(ns, args, { allowFail: true, timeoutMs: (timeoutS + 5) * 1000 });
    return r.code === 0;
  }

  /** Polls check every 100 ms until it returns true; throws naming `what` after timeoutMs. */
  async waitFor(check: () => Promise<boolean>, timeoutMs: number, what: string): Promise<void> {
    const deadline = Date.now() + timeoutMs;
    let lastError: unknown;
    for (;;) {
      try {
        if (await check()) return;
        lastError = undefined;
      } catch (e) {
        lastError = e;
      }
      if (Date.now() + POLL_MS > deadline) break;
      await sleep(POLL_MS);
    }
    const detail = lastError instanceof Error ? ` (last error: ${lastError.message})` : '';
    throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}${detail}`);
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
    for (const pid of this.execPids) {
      try {
        process.kill(pid, 'SIGKILL');
      } catch {
        /* gone */
      }
    }
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
    this.unregister();
  }

  private async doDestroy(): Promise<void> {
    this.destroyed = true;
    const problems: string[] = [];
    const stops = await Promise.allSettled(this.processes.map((p) => p.stop('SIGTERM', 3000)));
    for (const s of stops) if (s.status === 'rejected') problems.push(String(s.reason));
    for (const pid of this.execPids) {
      try {
        process.kill(pid, 'SIGKILL');
      } catch {
        /* gone */
      }
    }
    // Note processes still inside our namespaces that someone else started (leftovers reports them).
    const stray = new Map<number, string>();
    for (const ns of this.created) {
      const r = await run('ip', ['netns', 'pids', ns], { allowFail: true, timeoutMs: 5000 });
      for (const pid of r.stdout.split(/\s+/).filter(Boolean).map(Number)) {
        let cmd = '?';
        try {
          cmd = readFileSync(`/proc/${pid}/cmdline`, 'utf8').replace(/\0/g, ' ').trim();
        } catch {
          /* gone */
        }
        stray.set(pid, `${cmd} in ${ns}`);
      }
    }
    if (stray.size > 0) {
      strayByPrefix.set(this.prefix, stray);
      process.stderr.write(
        `harness ${this.prefix}: processes it did not start are still in its namespaces: ` +
          `${[...stray].map(([pid, what]) => `${pid} (${what})`).join(', ')}\n`,
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
    this.unregister();
    if (problems.length > 0) throw new Error(`harness ${this.prefix} destroy: ${problems.join('; ')}`);
  }

  private unregister(): void {
    liveHarnesses.delete(this);
    if (liveHarnesses.size === 0) uninstallHooks();
  }

  // ---- building ------------------------------------------------------------------------------

  private async build(): Promise<void> {
    const { nodes, podsPerNode } = this.opts;
    const { cp, rt } = this.ns;

    // 1. Namespaces, sysctls (before any interface exists, so new interfaces inherit them), lo up.
    const all: string[] = [cp, rt];
    if (this.opts.controlPlanes === 2) all.push(this.ns.controlPlane(2));
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

    // 2. Links, all created inside namespaces, and all up before addresses and routes.
    await this.ip(cp, 'link', 'add', 'eth0', 'type', 'veth', 'peer', 'name', 'cp0', 'netns', rt);
    await this.ip(rt, 'link', 'add', 'br0', 'type', 'bridge', 'stp_state', '0', 'forward_delay', '0');
    await this.ip(cp, 'link', 'set', 'eth0', 'up');
    await this.ip(rt, 'link', 'set', 'cp0', 'up');
    if (this.opts.controlPlanes === 2) {
      const cp2 = this.ns.controlPlane(2);
      await this.ip(cp2, 'link', 'add', 'eth0', 'type', 'veth', 'peer', 'name', 'cp1', 'netns', rt);
      await this.ip(cp2, 'link', 'set', 'eth0', 'up');
      await this.ip(rt, 'link', 'set', 'cp1', 'up');
      await this.addr(cp2, 'eth0', `${this.cpAddressOf(2)}/24`, `${this.cpAddress6Of(2)}/64`);
      await this.addr(rt, 'cp1', '198.18.1.1/24', 'fd00:18:1::1/64');
    }
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
    await this.addr(cp, 'eth0', `${CP_ADDRESS}/24`, `${CP_ADDRESS6}/64`);
    await this.addr(rt, 'cp0', `${RT_CP_ADDRESS}/24`, `${RT_CP_ADDRESS6}/64`);
    await this.addr(rt, 'br0', `${RT_NODE_ADDRESS}/24`, `${RT_NODE_ADDRESS6}/64`);
    await Promise.all(
      this.nodeNumbers().map(async (n) => {
        const node = this.ns.node(n);
        await this.addr(node, 'eth0', `${this.nodeIP(n)}/24`, `${this.nodeIP6(n)}/64`);
        await this.addr(node, 'cbr0', `${this.podGateway(n)}/24`, `${this.podGateway6(n)}/64`);
        for (let p = 1; p <= podsPerNode; p++) {
          await this.addr(this.ns.pod(n, p), 'eth0', `${this.podIP(n, p)}/24`, `${this.podIP6(n, p)}/64`);
        }
      }),
    );

    // 4. Routes. cp: connected only (unless cpDefaultRoute). Router: pod CIDRs via their node.
    if (this.opts.cpDefaultRoute) {
      await this.route(cp, 'default', RT_CP_ADDRESS);
      await this.route(cp, 'default', RT_CP_ADDRESS6);
    }
    await Promise.all(
      this.nodeNumbers().map(async (n) => {
        const node = this.ns.node(n);
        await this.route(rt, this.podCIDR(n), this.nodeIP(n));
        await this.route(rt, this.podCIDR6(n), this.nodeIP6(n));
        await this.route(node, 'default', RT_NODE_ADDRESS);
        await this.route(node, 'default', RT_NODE_ADDRESS6);
        for (let p = 1; p <= podsPerNode; p++) {
          await this.route(this.ns.pod(n, p), 'default', this.podGateway(n));
          await this.route(this.ns.pod(n, p), 'default', this.podGateway6(n));
        }
      }),
    );

    // 5. Router firewall: the node network is behind NAT, the cp cannot open connections into it.
    await this.exec(rt, ['nft', '-f', '-'], {
      input: `
table inet nodelink_harness {
  chain forward {
    type filter hook forward priority filter; policy accept;
    ct state established,related accept
    iifname { "cp0", "cp1" } counter drop comment "the control plane cannot open connections to nodes or pods"
  }
  chain postrouting {
    type nat hook postrouting priority srcnat; policy accept;
    oifname { "cp0", "cp1" } ip saddr 198.19.0.0/16 counter masquerade
    oifname { "cp0", "cp1" } ip6 saddr fd00:19::/48 counter masquerade
  }
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
      starts.push(this.startStub(this.ns.node(n), 'kubelet', this.nodeName(n), KUBELET_PORT));
      for (let p = 1; p <= podsPerNode; p++)
        starts.push(this.startStub(this.ns.pod(n, p), 'pod', this.podName(n, p), POD_PORT));
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

  private async addr(ns: string, dev: string, v4: string, v6: string): Promise<void> {
    await this.ip(ns, 'addr', 'add', v4, 'dev', dev);
    await this.ip(ns, '-6', 'addr', 'add', v6, 'dev', dev, 'nodad');
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

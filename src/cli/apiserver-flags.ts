import { readFileSync, readdirSync, readlinkSync } from 'node:fs';
import { basename, join } from 'node:path';
import { parse as parseYaml } from 'yaml';

/**
 * What kube-apiserver needs for nodelink to carry what it promises (docs/control-plane.md):
 *
 *   --kubelet-preferred-address-types  InternalIP first: nodelink routes a node's InternalIPs, and
 *                                      the default list starts with Hostname, which the
 *                                      apiserver resolves through its own DNS, not the link;
 *   --enable-aggregator-routing=true   aggregated APIs (metrics-server: kubectl top) and webhooks
 *                                      dialed at endpoint (pod) IPs, which nodelink routes, not at
 *                                      Service ClusterIPs, which it never does;
 *   no --egress-selector-config-file   with a "cluster" egress selection, the apiserver hands node
 *   sending "cluster" traffic to a     traffic to that proxy (Konnectivity) instead of its own
 *   proxy                              routes, so nothing reaches nl0.
 */

export interface FlagCheck {
  readonly flag: string;
  readonly ok: boolean;
  /** What the process has, in a few words. */
  readonly detail: string;
  /** What to change, when not ok. */
  readonly fix?: string;
}

/** kube-apiserver's default when the flag is absent (pkg/kubelet/client: DefaultKubeletClientConfig). */
const DEFAULT_ADDRESS_TYPES = ['Hostname', 'InternalDNS', 'InternalIP', 'ExternalDNS', 'ExternalIP'];
const RECOMMENDED_ADDRESS_TYPES = 'InternalIP,ExternalIP,Hostname';

/**
 * kube-apiserver's flags from its argv, as pflag reads them: `--name=value` or `--name value`,
 * a bare boolean flag meaning true; the last occurrence wins.
 */
export function parseFlags(argv: readonly string[]): Map<string, string> {
  const flags = new Map<string, string>();
  for (let i = 0; i < argv.length; i++) {
    const arg = argv[i]!;
    if (!arg.startsWith('--')) continue;
    const eq = arg.indexOf('=');
    if (eq > 0) {
      flags.set(arg.slice(2, eq), arg.slice(eq + 1));
    } else {
      const next = argv[i + 1];
      const takesNext = next !== undefined && !next.startsWith('--') && !BOOLEAN_FLAGS.has(arg.slice(2));
      flags.set(arg.slice(2), takesNext ? next : 'true');
      if (takesNext) i++;
    }
  }
  return flags;
}

/** Boolean flags checked here: pflag never lets them take the next argument as their value. */
const BOOLEAN_FLAGS = new Set(['enable-aggregator-routing']);

/** How an egress selector configuration file sends the "cluster" traffic. */
export type ClusterEgress = 'direct' | 'proxied' | 'unknown';

/**
 * Reads an EgressSelectorConfiguration (YAML or JSON): "direct" when it selects "cluster" with
 * proxyProtocol Direct or has no "cluster" entry, "proxied" when another protocol carries it.
 */
export function clusterEgress(text: string): ClusterEgress {
  let parsed: unknown;
  try {
    parsed = parseYaml(text);
  } catch {
    return 'unknown';
  }
  const selections = (parsed as { egressSelections?: unknown } | null)?.egressSelections;
  if (!Array.isArray(selections)) return 'unknown';
  const cluster = selections.find(
    (entry): entry is { connection?: { proxyProtocol?: string } } =>
      typeof entry === 'object' && entry !== null && (entry as { name?: unknown }).name === 'cluster',
  );
  if (!cluster) return 'direct';
  return cluster.connection?.proxyProtocol === 'Direct' ? 'direct' : 'proxied';
}

/**
 * The three checks for one kube-apiserver command line. `readFile` reads a path the apiserver
 * names (its egress selector file), as seen from the apiserver; undefined when it cannot.
 */
export function checkApiserverFlags(
  argv: readonly string[],
  readFile: (path: string) => string | undefined = () => undefined,
): FlagCheck[] {
  const flags = parseFlags(argv);
  const checks: FlagCheck[] = [];

  const typesText = flags.get('kubelet-preferred-address-types');
  const types = typesText === undefined ? DEFAULT_ADDRESS_TYPES : typesText.split(',').map((type) => type.trim());
  const shown = typesText === undefined ? `unset (default ${DEFAULT_ADDRESS_TYPES.join(',')})` : typesText;
  checks.push(
    types[0] === 'InternalIP'
      ? { flag: 'kubelet-preferred-address-types', ok: true, detail: shown }
      : {
          flag: 'kubelet-preferred-address-types',
          ok: false,
          detail: `${shown}: the apiserver dials kubelets at ${types[0] ?? 'nothing'} first, which nodelink does not route`,
          fix: `set --kubelet-preferred-address-types=${RECOMMENDED_ADDRESS_TYPES} on kube-apiserver`,
        },
  );

  const aggregator = flags.get('enable-aggregator-routing');
  checks.push(
    aggregator === 'true'
      ? { flag: 'enable-aggregator-routing', ok: true, detail: 'true' }
      : {
          flag: 'enable-aggregator-routing',
          ok: false,
          detail: `${aggregator ?? 'unset (default false)'}: aggregated APIs (kubectl top) and webhooks are dialed at Service ClusterIPs, which nodelink never routes`,
          fix: 'set --enable-aggregator-routing=true on kube-apiserver',
        },
  );

  const egress = flags.get('egress-selector-config-file');
  if (!egress) {
    checks.push({ flag: 'egress-selector-config-file', ok: true, detail: 'unset: node traffic follows the routes' });
  } else {
    const text = readFile(egress);
    const mode = text === undefined ? 'unknown' : clusterEgress(text);
    checks.push(
      mode === 'direct'
        ? { flag: 'egress-selector-config-file', ok: true, detail: `${egress}: "cluster" traffic is Direct` }
        : {
            flag: 'egress-selector-config-file',
            ok: false,
            detail:
              mode === 'proxied'
                ? `${egress} sends "cluster" traffic to a proxy (Konnectivity), not through nodelink`
                : `${egress} is set and could not be read: it may send node traffic to a proxy instead of nodelink`,
            fix: 'remove --egress-selector-config-file from kube-apiserver (or make its "cluster" selection proxyProtocol: Direct)',
          },
    );
  }
  return checks;
}

export interface ApiserverProcess {
  readonly pid: number;
  readonly argv: string[];
}

/**
 * kube-apiserver processes this process can see in `procRoot` (its own pod with a shared
 * process namespace, or the host's) whose command is named kube-apiserver, and that share its
 * network namespace: only that apiserver dials through this server's routes. A process whose
 * namespace cannot be read (no ptrace access to it) counts: nothing says it is elsewhere.
 */
export function findApiserverProcesses(procRoot = '/proc'): ApiserverProcess[] {
  const found: ApiserverProcess[] = [];
  let entries: string[];
  try {
    entries = readdirSync(procRoot);
  } catch {
    return found;
  }
  const netns = (pid: string): string | undefined => {
    try {
      return readlinkSync(join(procRoot, pid, 'ns', 'net'));
    } catch {
      return undefined;
    }
  };
  const own = netns('self');
  for (const entry of entries) {
    if (!/^\d+$/.test(entry)) continue;
    let argv: string[];
    try {
      argv = readFileSync(join(procRoot, entry, 'cmdline'), 'utf8').split('\0');
    } catch {
      continue; // exited meanwhile, or not ours to read
    }
    if (argv.at(-1) === '') argv.pop();
    if (argv.length === 0 || basename(argv[0]!) !== 'kube-apiserver') continue;
    const theirs = netns(entry);
    if (own !== undefined && theirs !== undefined && own !== theirs) continue;
    found.push({ pid: Number(entry), argv });
  }
  return found.sort((a, b) => a.pid - b.pid);
}

/** A file as a process sees it (through /proc/PID/root, so a container's own paths work). */
export function readAsProcess(pid: number, path: string, procRoot = '/proc'): string | undefined {
  try {
    return readFileSync(join(procRoot, String(pid), 'root', path), 'utf8');
  } catch {
    return undefined;
  }
}

// Checks that the command-line tools the demo and the namespace tests call are installed, before
// anything is built: a missing tool otherwise surfaces deep inside as `exec of "nft" failed`.
import { accessSync, constants } from 'node:fs';
import path from 'node:path';

/** Each tool the harness and the tests call, and the Debian/Ubuntu package that provides it. */
export const TOOL_PACKAGES: Readonly<Record<string, string>> = Object.freeze({
  ip: 'iproute2',
  tc: 'iproute2',
  sysctl: 'procps',
  nft: 'nftables',
  openssl: 'openssl',
  curl: 'curl',
  ping: 'iputils-ping',
  conntrack: 'conntrack',
});

/** What `npm run demo` calls: namespaces and links, sysctls, the NAT router, the kubelet certificate, curl. */
export const DEMO_TOOLS: readonly string[] = ['ip', 'sysctl', 'nft', 'openssl', 'curl'];

/** What the namespace and quick fault suites of `npm test` call, on top of the demo's tools. */
export const TEST_TOOLS: readonly string[] = [...DEMO_TOOLS, 'ping', 'tc', 'conntrack'];

/** The tools among `tools` that no directory of `searchPath` (a PATH value) holds as an executable. */
export function findMissingTools(tools: readonly string[], searchPath = process.env['PATH'] ?? ''): string[] {
  const dirs = searchPath.split(path.delimiter).filter((dir) => dir.length > 0);
  return tools.filter((tool) => !dirs.some((dir) => isExecutable(path.join(dir, tool))));
}

function isExecutable(file: string): boolean {
  try {
    accessSync(file, constants.X_OK);
    return true;
  } catch {
    return false;
  }
}

/**
 * The one line a user sees when tools are missing: every missing tool and the command that
 * installs them all. Undefined when nothing is missing.
 */
export function missingToolsMessage(what: string, missing: readonly string[]): string | undefined {
  if (missing.length === 0) return undefined;
  const tools = [...new Set(missing)];
  const packages = [...new Set(tools.map((tool) => TOOL_PACKAGES[tool] ?? tool))];
  const [noun, them] = tools.length === 1 ? ['tool', 'it'] : ['tools', 'them'];
  return `${what}: missing ${noun} ${tools.join(', ')}; install ${them} with: apt-get update && apt-get install -y ${packages.join(' ')}`;
}

/** Throws the one-line message when any of `tools` is missing. */
export function preflight(what: string, tools: readonly string[]): void {
  const message = missingToolsMessage(what, findMissingTools(tools));
  if (message) throw new Error(message);
}

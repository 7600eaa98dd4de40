// What a leak check looks at: namespaces a harness created, processes it spawned or found in its
// namespaces, and the root namespace, which must never carry an address or route of the test
// ranges.

import { readFileSync } from 'node:fs';
import { TEST_RANGE_PATTERN } from './addresses.js';
import { isAlive, run, type ManagedProcess } from './processes.js';

/** prefix -> processes spawned by that harness (leftovers() looks at the running ones). */
const trackedByPrefix = new Map<string, readonly ManagedProcess[]>();
/** prefix -> processes found inside its namespaces at destroy time that the harness did not start. */
const strayByPrefix = new Map<string, Map<number, string>>();

/** Remembers the processes a harness spawns (the array it keeps adding to) for leftovers(). */
export function trackProcesses(prefix: string, processes: readonly ManagedProcess[]): void {
  trackedByPrefix.set(prefix, processes);
}

/**
 * Notes every process still inside `namespaces` (started by someone else, since the harness has
 * stopped its own) for leftovers(), and returns them as "pid (command in namespace)".
 */
export async function noteStrayProcesses(prefix: string, namespaces: readonly string[]): Promise<string[]> {
  const stray = new Map<number, string>();
  for (const ns of namespaces) {
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
  if (stray.size > 0) strayByPrefix.set(prefix, stray);
  return [...stray].map(([pid, what]) => `${pid} (${what})`);
}

/**
 * What a leak check should see as empty: namespaces named `${prefix}-…`, processes the harness
 * with this prefix spawned that are still running, and processes it found inside its namespaces
 * at destroy time (started by someone else) that are still alive.
 */
export async function leftovers(prefix: string): Promise<string[]> {
  const found: string[] = [];
  for (const name of await listNamespaces()) {
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
export async function rootNamespaceViolations(): Promise<string[]> {
  const lines: string[] = [];
  for (const args of [
    ['-4', 'route', 'show', 'table', 'all'],
    ['-6', 'route', 'show', 'table', 'all'],
    ['-4', 'addr', 'show'],
    ['-6', 'addr', 'show'],
  ]) {
    const r = await run('ip', args, { allowFail: true, timeoutMs: 5000 });
    for (const line of r.stdout.split('\n'))
      if (TEST_RANGE_PATTERN.test(line)) lines.push(`ip ${args.join(' ')}: ${line.trim()}`);
  }
  return lines;
}

/** Names of every network namespace on the machine. */
export async function listNamespaces(): Promise<string[]> {
  const r = await run('ip', ['netns', 'list'], { allowFail: true, timeoutMs: 5000 });
  return r.stdout
    .split('\n')
    .map((l) => l.trim().split(/\s+/)[0])
    .filter((s): s is string => !!s);
}

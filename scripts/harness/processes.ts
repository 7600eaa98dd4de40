// Processes the harness runs: short commands with a timeout (`run`), long-running ones it
// supervises by PID (`ManagedProcess`), and the process-wide hooks that clean up after every live
// harness when this process exits or is killed by a signal.

import { spawn as spawnChild } from 'node:child_process';
import { readFileSync } from 'node:fs';
import os from 'node:os';
import { setTimeout as sleep } from 'node:timers/promises';

const DEFAULT_EXEC_TIMEOUT_MS = 20_000;

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

export interface RawResult extends ExecResult {
  stdoutBuffer: Buffer;
}

export interface RunOptions extends ExecOptions {
  /** Called with the child's PID when it starts (running true) and when it has exited (false). */
  track?: (pid: number, running: boolean) => void;
}

export interface SpawnOptions {
  name?: string;
  env?: Record<string, string>;
}

export interface ExitInfo {
  code: number | null;
  signal: string | null;
}

/**
 * Runs cmd to completion; SIGKILLs it after timeoutMs. Rejects with its stderr on a non-zero
 * exit unless allowFail.
 */
export function run(cmd: string, args: string[], opts: RunOptions = {}): Promise<RawResult> {
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

/** True while a process with this PID exists (EPERM: it exists but is not ours to signal). */
export function isAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (e) {
    return (e as NodeJS.ErrnoException).code === 'EPERM';
  }
}

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

  /** Waits until the process prints `text`; throws (with its output) if it exits first or times out. */
  async waitForOutput(text: string, timeoutMs: number): Promise<void> {
    const deadline = Date.now() + timeoutMs;
    while (Date.now() < deadline) {
      if (this.output().includes(text)) return;
      if (!this.running) break;
      await sleep(50);
    }
    if (this.output().includes(text)) return;
    const state = this.running ? `not within ${timeoutMs} ms` : 'before it exited';
    throw new Error(
      `${this.name} (pid ${this.pid}) did not print ${JSON.stringify(text)} ${state}; output:\n${this.output()}`,
    );
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
// Last-resort cleanup: while any harness is alive, 'exit', SIGINT, SIGTERM and SIGHUP run the
// synchronous cleanup of each.

const cleanups = new Set<() => void>();
const HOOK_SIGNALS: NodeJS.Signals[] = ['SIGINT', 'SIGTERM', 'SIGHUP'];
let hooksInstalled = false;

function cleanupAllSync(): void {
  for (const cleanup of [...cleanups]) cleanup();
}

function onSignal(signal: NodeJS.Signals): void {
  cleanupAllSync();
  uninstallHooks();
  // Without another listener Node would have died of this signal: restore that behaviour.
  if (process.listenerCount(signal) === 0) process.kill(process.pid, signal);
}

function uninstallHooks(): void {
  if (!hooksInstalled) return;
  hooksInstalled = false;
  process.off('exit', cleanupAllSync);
  for (const s of HOOK_SIGNALS) process.off(s, onSignal);
}

/**
 * Runs `cleanup` (synchronous, best effort) if this process exits or gets a hook signal before
 * the returned function is called to cancel it.
 */
export function cleanUpOnExit(cleanup: () => void): () => void {
  cleanups.add(cleanup);
  if (!hooksInstalled) {
    hooksInstalled = true;
    process.on('exit', cleanupAllSync);
    for (const s of HOOK_SIGNALS) process.on(s, onSignal);
  }
  return () => {
    cleanups.delete(cleanup);
    if (cleanups.size === 0) uninstallHooks();
  };
}

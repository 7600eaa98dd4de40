import { execFile } from 'node:child_process';
import { TunError } from './errors.js';

/** How one run of a system tool (`ip`, `nft`) is made and how its failure is named. */
export interface ToolRun {
  /** The TunError code a failure carries. */
  code: string;
  /** How the failure message names the command; `tool args…` when absent. */
  label?: string;
  timeoutMs: number;
  maxBuffer?: number;
  /** Written to stdin, which is then closed; stdin is left alone when absent. */
  input?: string;
  /** Raised instead of the one-line failure when the tool is not installed. */
  missing?: () => TunError;
}

/**
 * Runs a tool and resolves with its stdout. A failure rejects with one line, `LABEL failed: `
 * and the first line of stderr (or of the error when stderr is empty), so what the tool said
 * reaches the user without its usage text.
 */
export function runTool(tool: string, args: readonly string[], run: ToolRun): Promise<string> {
  return new Promise((resolve, reject) => {
    const child = execFile(
      tool,
      args,
      { timeout: run.timeoutMs, ...(run.maxBuffer === undefined ? {} : { maxBuffer: run.maxBuffer }) },
      (err: (Error & { code?: unknown }) | null, stdout, stderr) => {
        if (!err) {
          resolve(stdout);
        } else if (err.code === 'ENOENT' && run.missing) {
          reject(run.missing());
        } else {
          const detail = (stderr || err.message).trim().split('\n')[0];
          reject(new TunError(run.code, `${run.label ?? `${tool} ${args.join(' ')}`} failed: ${detail}`));
        }
      },
    );
    if (run.input !== undefined) {
      child.stdin?.on('error', () => undefined); // the tool may exit before reading all of it
      child.stdin?.end(run.input);
    }
  });
}

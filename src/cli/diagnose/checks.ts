import type { DaemonStatus } from '../../admin/index.js';
import { userMessage } from '../../errors.js';

/**
 * The runner behind `nodelink diagnose`: each side is a table of checks, in the order they run
 * and print, each naming the checks it comes `after`. A check runs only when every one of those
 * passed. Otherwise it is skipped, saying which dependency failed ("skipped: server port answers
 * failed"), or, when a dependency was itself skipped, passing on that reason, so the first ✗ is
 * the cause and no check fails again, or is excused wrongly, because of it.
 */

export type CheckStatus = 'pass' | 'fail' | 'skip';

export type Outcome =
  | { readonly status: 'pass'; readonly detail: string }
  | { readonly status: 'fail'; readonly detail: string; readonly fix: string }
  | { readonly status: 'skip'; readonly detail: string };

export const pass = (detail: string): Outcome => ({ status: 'pass', detail });
export const fail = (detail: string, fix: string): Outcome => ({ status: 'fail', detail, fix });
/** Nothing to check here (not configured, not applicable); `why` completes "skipped: …". */
export const skip = (why: string): Outcome => ({ status: 'skip', detail: `skipped: ${why}` });

export interface CheckDefinition<Context> {
  /** Stable: scripts read it from --json. */
  readonly id: string;
  readonly title: string;
  /** Checks that must pass first; each must come earlier in the table. */
  readonly after?: readonly string[];
  run(ctx: Context): Outcome | Promise<Outcome>;
}

/** One line of the report, as printed and as in --json. */
export interface Check {
  id: string;
  title: string;
  status: CheckStatus;
  detail: string;
  fix?: string;
}

export type Side = 'node' | 'control-plane';

/** What the daemon on the admin socket said about itself, or why it said nothing. */
export interface LocalDaemon {
  readonly socket: string;
  readonly status?: DaemonStatus;
  readonly error?: string;
}

export interface DiagnoseReport {
  side: Side;
  ok: boolean;
  failed: number;
  checks: Check[];
}

/** Refuses a table whose ids repeat or whose `after` names a check that does not run before it. */
export function assertTable(table: readonly CheckDefinition<never>[]): void {
  const seen = new Set<string>();
  for (const check of table) {
    if (seen.has(check.id)) throw new Error(`diagnose: check "${check.id}" is defined twice`);
    for (const dependency of check.after ?? []) {
      if (!seen.has(dependency))
        throw new Error(`diagnose: check "${check.id}" comes after "${dependency}", which does not run before it`);
    }
    seen.add(check.id);
  }
}

/** Runs the table in order, one check at a time (their probes must not disturb one another). */
export async function runChecks<Context>(
  side: Side,
  table: readonly CheckDefinition<Context>[],
  ctx: Context,
): Promise<DiagnoseReport> {
  assertTable(table);
  const done = new Map<string, Check>();
  const checks: Check[] = [];
  for (const definition of table) {
    const outcome = blockedBy(definition, done) ?? (await runOne(definition, ctx));
    const check: Check = { id: definition.id, title: definition.title, ...outcome };
    done.set(check.id, check);
    checks.push(check);
  }
  const failed = checks.filter((check) => check.status === 'fail').length;
  return { side, ok: failed === 0, failed, checks };
}

function blockedBy(definition: CheckDefinition<unknown>, done: ReadonlyMap<string, Check>): Outcome | undefined {
  for (const id of definition.after ?? []) {
    const dependency = done.get(id)!;
    if (dependency.status === 'fail') return skip(`${dependency.title} failed`);
    if (dependency.status === 'skip') return { status: 'skip', detail: dependency.detail };
  }
  return undefined;
}

async function runOne<Context>(definition: CheckDefinition<Context>, ctx: Context): Promise<Outcome> {
  try {
    return await definition.run(ctx);
  } catch (err) {
    return fail(
      `the check itself failed: ${userMessage(err)}`,
      'this is a bug in nodelink diagnose: please report this line',
    );
  }
}

const MARK: Record<CheckStatus, string> = { pass: '✓', fail: '✗', skip: '-' };

/** The report as people read it: one line per check, the fix under each ✗, the first failure last. */
export function formatReport(report: DiagnoseReport, heading: string): string {
  const width = Math.min(42, Math.max(...report.checks.map((check) => check.title.length)));
  const lines = [heading, ''];
  for (const check of report.checks) {
    lines.push(`  ${MARK[check.status]} ${check.title.padEnd(width)}  ${check.detail}`);
    if (check.fix) lines.push(`      fix: ${check.fix}`);
  }
  lines.push('');
  const failed = report.checks.filter((check) => check.status === 'fail');
  const passed = report.checks.filter((check) => check.status === 'pass').length;
  lines.push(
    failed.length === 0
      ? `all ${passed} checks passed`
      : `${failed.length} check${failed.length === 1 ? '' : 's'} failed; first: ${failed[0]!.title} — ${failed[0]!.detail}`,
  );
  return `${lines.join('\n')}\n`;
}

/**
 * The base of every error nodelink raises on purpose. `code` is stable: it names the failure
 * on the wire (close/reject reasons), in metrics and in tests; `message` is the one line a user
 * reads, saying what failed and how to fix it.
 */
export class NodelinkError extends Error {
  constructor(
    readonly code: string,
    message: string,
  ) {
    super(message);
    this.name = new.target.name;
  }
}

/** The one line a user sees for any error: ours verbatim, anything else marked as unexpected. */
export function userMessage(err: unknown): string {
  if (err instanceof NodelinkError) return err.message;
  if (err instanceof Error) return `unexpected error: ${err.message}`;
  return `unexpected error: ${String(err)}`;
}

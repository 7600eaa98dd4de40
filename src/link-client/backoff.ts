/**
 * Exponential backoff with jitter (AWS architecture blog): the n-th wait is uniform in
 * [floor * c, c] with c = min(cap, base * 2^n), so a fleet of nodes that lost the server at the
 * same instant comes back spread out instead of in one burst. `floor` 0 is full jitter; 0.5 is
 * "equal jitter", which bounds how many dials fit in a span of time.
 */
export class Backoff {
  private attempt = 0;

  constructor(
    private readonly baseMs: number,
    private readonly capMs: number,
    private readonly random = Math.random,
    private readonly floor = 0,
  ) {}

  next(): number {
    const ceiling = Math.min(this.capMs, this.baseMs * 2 ** Math.min(this.attempt, 30));
    this.attempt++;
    return Math.floor((this.floor + (1 - this.floor) * this.random()) * ceiling);
  }

  reset(): void {
    this.attempt = 0;
  }
}

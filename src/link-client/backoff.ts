/**
 * Exponential backoff with full jitter (AWS architecture blog): the n-th wait is uniform in
 * [0, min(cap, base * 2^n)], so a fleet of nodes that lost the server at the same instant
 * comes back spread out instead of in one burst.
 */
export class Backoff {
  private attempt = 0;

  constructor(
    private readonly baseMs: number,
    private readonly capMs: number,
    private readonly random = Math.random,
  ) {}

  next(): number {
    const ceiling = Math.min(this.capMs, this.baseMs * 2 ** Math.min(this.attempt, 30));
    this.attempt++;
    return Math.floor(this.random() * ceiling);
  }

  reset(): void {
    this.attempt = 0;
  }
}

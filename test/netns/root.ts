/** Namespace tests need root; without it they say so loudly and skip, never pass silently. */
export function skipUnlessRoot(ctx: Mocha.Context): void {
  if (process.getuid?.() !== 0) {
    console.log('\n    *** SKIPPED: namespace tests need root (run npm test as root) ***\n');
    ctx.skip();
  }
}

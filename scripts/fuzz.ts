// npm run fuzz: runs every target of fuzz-targets.ts over random and mutated inputs, at least
// 1,000,000 in total by default, and prints the count and every crash (with the input that
// caused it, shrunk by fast-check). Exit code 1 when anything crashed. Not part of npm test.
//
//   npm run fuzz                      1,000,000 inputs, a fresh seed
//   npm run fuzz -- --total 5000000   more
//   npm run fuzz -- --seed 42         reproduce a run
//   npm run fuzz -- --only decoder    targets whose name contains "decoder"

import fc from 'fast-check';
import { targets } from './fuzz-targets.js';

function flag(name: string): string | undefined {
  const i = process.argv.indexOf(`--${name}`);
  return i >= 0 ? process.argv[i + 1] : undefined;
}

const total = Number(flag('total') ?? 1_000_000);
const seed = Number(flag('seed') ?? Date.now() % 2 ** 31);
const only = flag('only');
if (!Number.isInteger(total) || total < 1) throw new Error(`--total must be a positive integer, got ${flag('total')}`);

const chosen = targets.filter((t) => !only || t.name.includes(only));
const weights = chosen.reduce((sum, t) => sum + t.weight, 0);
console.log(`nodelink fuzz: ${total.toLocaleString('en-US')} inputs over ${chosen.length} targets, seed ${seed}`);

let runs = 0;
let crashes = 0;
const started = Date.now();
for (const [i, target] of chosen.entries()) {
  const numRuns = Math.ceil((total * target.weight) / weights);
  const t0 = Date.now();
  const details = fc.check(target.property, { numRuns, seed: seed + i, endOnFailure: false });
  runs += details.numRuns;
  const seconds = (Date.now() - t0) / 1000;
  if (details.failed) {
    crashes++;
    console.log(`  CRASH  ${target.name}: after ${details.numRuns} inputs`);
    console.log(`         counterexample: ${fc.stringify(details.counterexample)}`);
    console.log(
      `         error: ${String(
        details.errorInstance instanceof Error ? details.errorInstance.stack : details.errorInstance,
      )
        .split('\n')
        .slice(0, 6)
        .join('\n         ')}`,
    );
    console.log(`         reproduce: npm run fuzz -- --seed ${seed} --only "${target.name}"`);
  } else {
    console.log(
      `  ok     ${details.numRuns.toLocaleString('en-US').padStart(9)} inputs  ${seconds.toFixed(1).padStart(5)} s  ${target.name}`,
    );
  }
}
console.log(
  `${runs.toLocaleString('en-US')} inputs in ${((Date.now() - started) / 1000).toFixed(1)} s, ${crashes} crash${crashes === 1 ? '' : 'es'}`,
);
process.exitCode = crashes > 0 ? 1 : 0;

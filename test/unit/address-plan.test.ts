// The namespace harness's address plan (scripts/harness/addresses.ts) is the one the
// development docs show: every concrete address, prefix and port in the table is the plan's,
// and the formulas for nodes and pods give the plan's addresses.

import { expect } from 'chai';
import { readFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import * as plan from '../../scripts/harness/addresses.js';

const DOC = fileURLToPath(new URL('../../../docs/development.md', import.meta.url));

/** The code block under "## The namespace harness". */
function harnessTable(): string {
  const text = readFileSync(DOC, 'utf8');
  const section = text.slice(text.indexOf('## The namespace harness'));
  const block = /```\n([\s\S]*?)```/.exec(section);
  if (!block) throw new Error(`${DOC}: no code block under "## The namespace harness"`);
  return block[1]!;
}

/** Fills a documented formula such as `198.19.N.(1+P)` or `fd00:19:N::hex(1+P)` in for n and p. */
function instantiate(formula: string, n: number, p: number): string {
  const v6 = formula.includes(':');
  const value = (expression: string): number =>
    expression
      .split('+')
      .map((term) => (term === 'N' ? n : term === 'P' ? p : Number(term)))
      .reduce((sum, term) => sum + term, 0);
  return formula
    .replace(/hex\(([^)]*)\)/g, (_, e: string) => value(e).toString(16))
    .replace(/\(([^)]*)\)/g, (_, e: string) => String(value(e)))
    .replace(/\b[NP]\b/g, (letter) => {
      const number = letter === 'N' ? n : p;
      return v6 ? number.toString(16) : String(number);
    });
}

/** The two addresses (IPv4, IPv6) a table row gives right after `label`. */
function formulas(table: string, label: string): [string, string] {
  const at = table.indexOf(label);
  expect(at, `"${label}" in the harness table`).to.be.at.least(0);
  const [v4, v6] = table
    .slice(at + label.length)
    .trim()
    .split(/\s+/)
    .map((word) => word.replace(/[;,]$/, ''));
  return [v4!, v6!];
}

describe('harness address plan', function () {
  it('docs/development.md shows the concrete addresses, prefixes and ports of the plan', function () {
    const table = harnessTable();
    for (const value of [
      plan.onLink(plan.cpAddress(1)),
      plan.onLink(plan.cpAddress6(1)),
      plan.routerCpAddress(1),
      plan.onLink(plan.ROUTER_NODE_ADDRESS),
      plan.onLink(plan.ROUTER_NODE_ADDRESS6),
      plan.tunnelCidr(1),
      plan.tunnelCidr6(1),
      `:${plan.KUBELET_PORT}`,
      `:${plan.POD_PORT}`,
    ]) {
      expect(table, value).to.include(value);
    }
  });

  it("the documented formulas give the plan's node, pod and bridge addresses", function () {
    const table = harnessTable();
    const node = formulas(table, 'node N');
    const bridge = formulas(table, 'bridge cbr0');
    const pod = formulas(table, 'pod P of N');
    for (const n of [1, 9, 10, 17, 200]) {
      expect(node.map((f) => instantiate(f, n, 0))).to.deep.equal([plan.nodeAddress(n), plan.nodeAddress6(n)]);
      expect(bridge.map((f) => instantiate(f, n, 0))).to.deep.equal([
        plan.onLink(plan.podGateway(n)),
        plan.onLink(plan.podGateway6(n)),
      ]);
      for (const p of [1, 9, 15, 200]) {
        expect(pod.map((f) => instantiate(f, n, p))).to.deep.equal([plan.podAddress(n, p), plan.podAddress6(n, p)]);
      }
    }
  });

  it('every address of the plan lies in the ranges the tests may use', function () {
    const addresses = [
      plan.cpAddress(1),
      plan.cpAddress(2),
      plan.cpAddress6(2),
      plan.routerCpAddress6(2),
      plan.nodeAddress(plan.MAX_NODES),
      plan.nodeAddress6(plan.MAX_NODES),
      plan.podAddress(plan.MAX_NODES, plan.MAX_PODS),
      plan.podAddress6(plan.MAX_NODES, plan.MAX_PODS),
      plan.tunnelCidr(2),
      plan.tunnelCidr6(2),
    ];
    for (const address of addresses) expect(address, address).to.match(plan.TEST_RANGE_PATTERN);
    expect(plan.nodeAddress(plan.MAX_NODES)).to.equal('198.19.0.210');
    expect(plan.podAddress(plan.MAX_NODES, plan.MAX_PODS)).to.equal('198.19.200.201');
  });
});

// npm run demo: builds the namespace topology, runs nodelink's server and two nodes, shows the
// control plane reaching kubelets and pods through the link, prints `nodelink status`, and
// removes everything again (also on Ctrl-C or failure).

import { Harness } from './harness/index.js';
import { NodelinkCluster, runCli } from './cluster.js';
import { DEMO_TOOLS, findMissingTools, missingToolsMessage } from './preflight.js';

const say = (line: string): void => {
  process.stdout.write(`${line}\n`);
};

async function check(h: Harness, label: string, url: string): Promise<boolean> {
  const result = await h.curl(h.ns.cp, url, { timeoutS: 3 });
  const body = result.ok ? result.body.trim().split('\n')[0] : `FAILED (${result.error ?? `exit ${result.exitCode}`})`;
  say(`  ${result.ok ? '✓' : '✗'} ${label.padEnd(34)} ${url.padEnd(44)} → ${body}`);
  return result.ok;
}

async function reachAll(h: Harness): Promise<boolean> {
  let ok = true;
  for (let n = 1; n <= h.nodes; n++) {
    ok =
      (await check(h, `kubelet of ${h.nodeName(n)} (IPv4)`, h.kubeletURL(n, '/containerLogs/default/web/app'))) && ok;
    ok = (await check(h, `kubelet of ${h.nodeName(n)} (IPv6)`, h.kubeletURL(n, '/healthz', true))) && ok;
    ok = (await check(h, `pod ${h.podName(n, 1)} (IPv4)`, h.podURL(n, 1, '/metrics'))) && ok;
    ok = (await check(h, `pod ${h.podName(n, 1)} (IPv6)`, h.podURL(n, 1, '/metrics', true))) && ok;
  }
  return ok;
}

async function main(): Promise<number> {
  if (process.getuid?.() !== 0) {
    say('nodelink demo: needs root (it creates network namespaces): run it as root, e.g. sudo npm run demo');
    return 1;
  }
  // Before anything is built: a missing tool would otherwise fail deep inside the harness.
  const missing = missingToolsMessage('nodelink demo', findMissingTools(DEMO_TOOLS));
  if (missing) {
    say(missing);
    return 1;
  }
  say('== building the topology: control plane, NAT router, 2 nodes with a kubelet and a pod each');
  const h = await Harness.create({ nodes: 2, podsPerNode: 1 });
  try {
    say(
      `   namespaces: ${h.ns.cp}, ${h.ns.rt}, ${h.ns.node(1)}, ${h.ns.pod(1, 1)}, ${h.ns.node(2)}, ${h.ns.pod(2, 1)}`,
    );
    say('\n== without the link, the control plane cannot dial the nodes ("error dialing backend"):');
    for (const url of [h.kubeletURL(1), h.podURL(1, 1)]) {
      const before = await h.curl(h.ns.cp, url, { timeoutS: 2 });
      if (before.ok) throw new Error(`the control plane reached ${url} without the link: the harness is not isolating`);
      say(`  ✓ unreachable, as expected: ${url.padEnd(36)} → ${before.error ?? `exit ${before.exitCode}`}`);
    }

    say('\n== starting nodelink: server in the control plane, one client per node (dialing out through NAT)');
    const cluster = new NodelinkCluster(h);
    await cluster.up();
    say(`   server ${h.serverEndpoint}, tunnel ${h.tunnelCIDR} + ${h.tunnelCIDR6}; both nodes connected`);

    say('\n== with the link, the control plane reaches kubelets (:10250) and pods directly:');
    const ok = await reachAll(h);

    say('\n== nodelink status (on the control plane):\n');
    const status = await runCli(['status', '--admin-socket', cluster.serverSocket]);
    process.stdout.write(status.stdout.replace(/^/gm, '   '));

    await cluster.stop();
    say(ok ? '\n== demo passed: every kubelet and pod answered through the link' : '\n== demo FAILED: see ✗ above');
    return ok ? 0 : 1;
  } finally {
    await h.destroy();
    say('== cleaned up: namespaces, devices and processes removed');
  }
}

main().then(
  (code) => process.exit(code),
  (err: unknown) => {
    process.stderr.write(`nodelink demo: ${err instanceof Error ? err.message : String(err)}\n`);
    process.exit(1);
  },
);

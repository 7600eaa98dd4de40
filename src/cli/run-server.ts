import { defaultServerId } from '../link-server/replica-id.js';
import { PeerRegistry, readKeyFile, readPeersFile } from '../auth/index.js';
import { processDebug, type DaemonStatus } from '../admin/index.js';
import { FlowFilter, LinkServer, SessionRoutes, loadServerCertificate } from '../link-server/index.js';
import { LinuxTun, ServerRoutes } from '../tun/index.js';
import { createLogger } from '../log.js';
import { userMessage } from '../errors.js';
import type { Logger } from '../log.js';
import { tunnelSource, type ServerConfig } from './config.js';
import { connectionOptions, onShutdownSignal } from './daemon.js';
import { serverObservability } from './observe.js';
import { kubernetesNodeAuth, nodeRouteCheck } from './kubernetes.js';
import { onReload, reloadServerSettingsOnSighup, type StartSettings } from './reload.js';
import { perWorker, runWorkers, slotOf, workerObservability, workerSlot, type WorkerSlot } from './workers.js';

/** Every allowedIP of the peers, and where each came from, for the route checks. */
function allowedIPs(registry: PeerRegistry): { cidrs: string[]; label: (cidr: string) => string } {
  const owners = new Map<string, string>();
  for (const peer of registry.peers) for (const cidr of peer.allowedIPs) owners.set(String(cidr), peer.name);
  return { cidrs: [...owners.keys()], label: (cidr) => `peer "${owners.get(cidr) ?? '?'}" allowedIPs ${cidr}` };
}

/**
 * Kubernetes mode: a Node whose addresses would take over a route of this host (a CNI route on
 * a control-plane host, say) is left out, named in the log, and every other Node joins. A peers
 * file is the operator's own list, refused whole instead (routes.check).
 */
async function withoutClashes(registry: PeerRegistry, routes: ServerRoutes, log: Logger): Promise<PeerRegistry> {
  const clashing = await routes.conflicting(allowedIPs(registry).cidrs);
  if (clashing.size === 0) return registry;
  const kept = registry.peers.filter((peer) => !peer.allowedIPs.some((cidr) => clashing.has(String(cidr))));
  for (const peer of registry.peers) {
    if (kept.includes(peer)) continue;
    const cidrs = peer.allowedIPs.map(String).filter((cidr) => clashing.has(cidr));
    log.warn({ node: peer.name, cidrs }, "a Node cannot join the link: its addresses cover a route of this host's");
  }
  return new PeerRegistry(kept);
}

function serverRoutes(config: ServerConfig, slot?: WorkerSlot): ServerRoutes {
  return new ServerRoutes({
    tun: slot?.tun ?? config.tun,
    listenPort: config.listen.port,
    sources: { 4: tunnelSource(config.tunnelAddresses, 4), 6: tunnelSource(config.tunnelAddresses, 6) },
    worker: slot && { baseTun: config.tun, devices: slot.devices, home: slot.index === 0 },
  });
}

/** --init-routes: the fail-closed rules and routes for every authorized peer, then exit. */
async function initRoutes(config: ServerConfig, log: Logger): Promise<void> {
  const kubernetes = config.nodeAuth === 'kubernetes' ? await kubernetesNodeAuth(config, log) : undefined;
  try {
    const routes = serverRoutes(config);
    const allowed = allowedIPs(
      kubernetes
        ? await withoutClashes(kubernetes.registry, routes, log)
        : readPeersFile(config.peersFile, config.tunnelCidrs),
    );
    await routes.check(allowed.cidrs, allowed.label);
    const summary = await routes.failClosed(allowed.cidrs, { prune: true });
    log.info({ tun: config.tun, table: routes.table, ...summary }, 'fail-closed routes in place');
  } finally {
    kubernetes?.stop();
  }
}

/** How long a stopping server waits for nodes to close their end after its goodbye. */
const GOODBYE_GRACE_MS = 250;

export async function runServer(config: ServerConfig, start: StartSettings): Promise<void> {
  const log = createLogger(config.logLevel, { role: 'server' }, config.logFormat);
  if (config.initRoutes) return initRoutes(config, log);
  const slot = workerSlot(config);
  // Everything that can be wrong with the input is checked before any device is created.
  const keyPair = readKeyFile(config.keyFile);
  if (config.workers > 1 && !slot) {
    // The primary: a bad peers file or a route conflict is one line, here, not one per worker.
    if (config.nodeAuth !== 'kubernetes') {
      const allowed = allowedIPs(readPeersFile(config.peersFile, config.tunnelCidrs));
      await serverRoutes(config, slotOf(config, 0)).check(allowed.cidrs, allowed.label);
    }
    return runWorkers(config, start, log, config.serverId || defaultServerId());
  }
  const tunName = slot?.tun ?? config.tun;
  const kubernetes = config.nodeAuth === 'kubernetes' ? await kubernetesNodeAuth(config, log) : undefined;
  const routes = serverRoutes(config, slot);
  const registry = kubernetes
    ? await withoutClashes(kubernetes.registry, routes, log)
    : readPeersFile(config.peersFile, config.tunnelCidrs);
  const allowed = allowedIPs(registry);
  await routes.check(allowed.cidrs, allowed.label);
  const loadCertificate = () =>
    config.certFile ? loadServerCertificate(config.certFile, config.certKeyFile || undefined, keyPair) : undefined;
  const certificate = loadCertificate();
  const checkRoutes = config.authorizeFromNodes
    ? await nodeRouteCheck(config.kubeconfig, registry.peers[0]?.name, log)
    : undefined;
  const tun = await LinuxTun.open({
    name: tunName,
    mtu: config.mtu,
    addresses: config.tunnelCidrs.map((cidr) => `${cidr.firstHost()}/${cidr.length}`),
  });
  const worker = slot && workerObservability(slot);
  const observe = worker ?? serverObservability(config, log);
  const share = (limit: number): number => (slot ? perWorker(limit, slot.count) : limit);
  let started = false;
  const server = new LinkServer({
    host: config.listen.host,
    port: config.listen.port,
    keyPair,
    registry,
    tun,
    tunnelCidrs: config.tunnelCidrs,
    tunnelAddresses: config.tunnelAddresses,
    connection: connectionOptions(config),
    handshakeTimeoutMs: config.handshakeTimeoutMs,
    // The first call is the start's, for the CIDRs checked and backstopped below.
    installRoutes: (cidrs) => routes.install(cidrs.map(String), { checked: !started }),
    log,
    observer: observe.metrics,
    checkRoutes,
    authorizeHello: kubernetes?.authorize,
    claimRoutes: worker?.claimRoutes,
    certificate,
    limits: {
      maxUnauthenticated: share(config.maxUnauthenticated),
      maxNewPerSourcePerSecond: share(config.maxNewConnsPerSource),
      maxQueued: share(config.maxQueuedHandshakes),
    },
    removeRoutes: (cidrs) => routes.remove(cidrs.map(String)),
    serverId: slot?.serverId || config.serverId || defaultServerId(),
    serverCount: config.serverCount,
  });
  if (kubernetes) worker?.shareVerdicts(kubernetes.verifier);
  worker?.follow(
    new SessionRoutes({
      peers: () => server.peerSessions(),
      claim: (cidrs) => routes.claim(cidrs),
      release: (cidrs) => routes.release(cidrs),
      log,
    }),
  );
  let filter: FlowFilter | undefined;
  const flowFilter = () =>
    filter
      ? { active: true, table: `inet ${filter.table}`, maxFlowsPerNode: filter.limits.maxFlowsPerNode }
      : { active: false, table: null, maxFlowsPerNode: null };
  // Status with the kernel's node_initiated counts (as last read) and the filter's state.
  const withFilter = (status: DaemonStatus): DaemonStatus => ({
    ...(filter ? filter.annotate(status) : status),
    flowFilter: flowFilter(),
  });
  try {
    // Listening before the backstops and the flow filter are set up: a node dialing meanwhile (a
    // fleet coming back from a restart) waits in line, unread, until start() lets it in.
    await server.listen();
    // From here on a node's packets go into the TUN or nowhere, never by another route. Of
    // several workers, the first keeps the backstops. Once the TUN name is ours (a live server
    // holding it makes open() fail), so is its filter table. Both run to their end before a
    // failure of either is thrown, so the cleanup below sees everything that was set up.
    const setup = await Promise.allSettled([
      !slot || slot.index === 0 ? routes.failClosed(allowed.cidrs, { prune: true }) : undefined,
      config.allowNodeInitiated
        ? FlowFilter.removeLeftover(tunName)
        : FlowFilter.install({ tun: tunName, peers: registry.peers, log }).then((installed) => (filter = installed)),
    ]);
    for (const step of setup) if (step.status === 'rejected') throw step.reason;
    await server.start();
    started = true;
    await observe.start(
      {
        status: () => withFilter(server.status()),
        routeStates: (kernel) => server.routeStates(kernel),
        pathTargets: () => server.pathTargets(),
        refresh: () => filter?.refresh() ?? Promise.resolve(),
      },
      () => ({ ...withFilter(server.status()), debug: { ...processDebug(), ...server.connectionCounts() } }),
    );
  } catch (err) {
    kubernetes?.stop();
    observe.close();
    await server.stop();
    await tun.close();
    await filter?.remove();
    throw err;
  }
  // Kubernetes mode: Nodes that come, go or change move the peers and their kernel routes.
  // A Node whose addresses would take over a route of the host's is left out, named.
  // One change at a time, in the order the watch saw them.
  let applying: Promise<unknown> = Promise.resolve();
  kubernetes?.follow((nodes) => {
    applying = applying
      .then(() => withoutClashes(nodes, routes, log))
      .then(async (usable) => {
        await filter?.setPeers(usable.peers);
        await server.reload(usable, 'nodes');
      })
      .catch((err: unknown) => log.error({ err: userMessage(err) }, 'cannot apply Node changes'));
  });
  // SIGHUP: bad settings, a bad peers file or a bad certificate are refused with one line and the
  // old ones stay.
  reloadServerSettingsOnSighup({ configFile: config.configFile, start, log }, observe.pathChecker);
  if (!kubernetes) {
    onReload(
      'peers',
      async () => {
        const next = readPeersFile(config.peersFile, config.tunnelCidrs);
        const nextAllowed = allowedIPs(next);
        await routes.check(nextAllowed.cidrs, nextAllowed.label);
        // The filter learns new peers' addresses first, so their counts are never lost.
        await filter?.setPeers(next.peers);
        await server.reload(next);
      },
      log,
    );
  }
  if (config.certFile) {
    onReload(
      'certificate',
      () => {
        server.setCertificate(loadCertificate()!);
        log.info({ cert: config.certFile }, 'certificate reloaded');
      },
      log,
    );
  }
  if (filter)
    log.info(
      { table: `inet ${filter.table}`, maxFlowsPerNode: filter.limits.maxFlowsPerNode },
      'dropping packets from nodes that do not belong to a flow the control plane opened',
    );
  else if (!slot || slot.index === 0)
    log.warn({ tun: config.tun }, '--allow-node-initiated: nodes may open flows toward the control plane');
  log.info(
    {
      tun: tunName,
      routeTable: routes.table,
      tunnelCidrs: config.tunnelCidrs.map(String),
      ...(slot ? { worker: slot.index } : { adminSocket: config.adminSocket }),
    },
    // The primary says 'server ready' once every worker is.
    slot ? 'worker serving' : 'server ready',
  );
  onShutdownSignal(log, 2000, async () => {
    kubernetes?.stop();
    observe.close();
    // Deleting the TUN takes its routes with it; the backstops stay: until a server runs again,
    // a dial to a node fails at once. No packet passes in either direction once it is gone.
    await tun.close();
    // Conntrack keeps the flows the control plane opened: they go on after a restart.
    await filter?.remove();
    // The goodbyes last: nodes redial from theirs on, so every moment from here to the exit is
    // one a restarting fleet finds nothing listening. A node slow to close its end gets
    // GOODBYE_GRACE_MS.
    await Promise.race([server.stop(), new Promise((resolve) => setTimeout(resolve, GOODBYE_GRACE_MS))]);
  });
  if (slot) {
    // The primary stops its workers (SIGTERM): a Ctrl-C that reaches the whole process group
    // must not make the primary's SIGTERM a second signal, which would cut the shutdown short.
    process.removeAllListeners('SIGINT');
    process.on('SIGINT', () => undefined);
  }
}

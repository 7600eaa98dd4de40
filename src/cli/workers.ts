/**
 * `nodelink server --workers K`: one server in K processes, so handshakes and data use K cores.
 *
 * The primary process forks K workers (node:cluster). Each worker is a whole LinkServer with a
 * TUN of its own (nl0, nl0-1, …, all with the tunnel address) and the same listen port: cluster
 * hands each accepted connection to the next worker in turn, so handshakes spread over the
 * processes; each worker routes the nodes it holds into its own TUN (src/tun/routes.ts), before
 * it welcomes them (SessionRoutes.claimBeforeWelcome), so the kernel hands each node's packets to
 * the process holding its session and the data spreads as well, with nothing steering packets.
 * Node 20 cannot move a listening socket or a TLS session between worker threads, hence
 * processes; a multi-queue TUN would spread packets by flow hash, not by node. In Kubernetes mode
 * every worker keeps its own Node watch and TokenReview cache, and the primary passes each
 * worker's TokenReview verdicts on to the others.
 *
 * The primary holds no TUN and no session. It is the server's single face: the admin socket and
 * metrics (the workers' status merged, their events forwarded to it), the path checks, and the
 * signals: SIGHUP and SIGTERM go on to every worker. A worker that dies is started again; its
 * nodes fall meanwhile to the first worker's routes (or the backstops) and reconnect to any
 * worker. All workers carry one server ID: to a node they are one replica.
 */
import cluster, { type Worker } from 'node:cluster';
import {
  mergeWorkerStatuses,
  processDebug,
  kernelRouteSet,
  type DaemonStatus,
  type RouteState,
  type WorkerStatus,
} from '../admin/index.js';
import type { LinkObserver } from '../link/observer.js';
import type { NodeIdentity, NodeIdentityVerifier } from '../k8s/identity.js';
import { pathTargets, type PathTarget } from '../link-server/path-check.js';
import type { SessionRoutes } from '../link-server/session-routes.js';
import { Prefix } from '../routing/index.js';
import { kernelRoutes } from '../tun/index.js';
import type { Logger } from '../log.js';
import { NodelinkError } from '../errors.js';
import { workerTun, type ServerConfig } from './config.js';
import { onShutdownSignal } from './daemon.js';
import { serverObservability, type ServerSide } from './observe.js';
import { onReload, reloadServerSettingsOnSighup, type StartSettings } from './reload.js';

/** The environment a worker learns its place from; not NODELINK_*, which would read as a flag. */
const SLOT_ENV = '__NODELINK_WORKER';
const SERVER_ID_ENV = '__NODELINK_SERVER_ID';
/** A worker that does not answer a status request in this long is shown as unresponsive. */
const STATUS_TIMEOUT_MS = 2000;
/** A worker that died sooner than this after its start is started again after a growing pause. */
const STABLE_AFTER_MS = 10_000;
const RESTART_PAUSE_MS = 200;
const RESTART_PAUSE_CAP_MS = 10_000;

/** A worker's place among the server's workers. */
export interface WorkerSlot {
  readonly index: number;
  readonly count: number;
  readonly tun: string;
  /** Every worker's TUN. */
  readonly devices: readonly string[];
  readonly serverId: string;
}

/** This process's slot when it is a worker of `nodelink server --workers`, else undefined. */
export function workerSlot(config: ServerConfig): WorkerSlot | undefined {
  if (config.workers <= 1 || !cluster.isWorker) return undefined;
  const index = Number(process.env[SLOT_ENV]);
  if (!Number.isInteger(index) || index < 0 || index >= config.workers)
    throw new NodelinkError('workers', `worker started without a valid ${SLOT_ENV}: start nodelink server itself`);
  return slotOf(config, index, process.env[SERVER_ID_ENV] ?? '');
}

/** Worker `index`'s slot (the primary checks routes as the first worker would). */
export function slotOf(config: ServerConfig, index: number, serverId = ''): WorkerSlot {
  return {
    index,
    count: config.workers,
    tun: workerTun(config.tun, index),
    devices: Array.from({ length: config.workers }, (_, i) => workerTun(config.tun, i)),
    serverId,
  };
}

/** The share of a server-wide limit each worker applies (connections reach them in turn). */
export function perWorker(limit: number, workers: number): number {
  return limit === 0 ? 0 : Math.ceil(limit / workers);
}

type ObserverEvent = keyof Required<LinkObserver>;
type ToPrimary =
  | { kind: 'ready' }
  | { kind: 'event'; event: ObserverEvent; args: unknown[] }
  | { kind: 'status'; id: number; status: DaemonStatus }
  | Verdict;
type ToWorker = { kind: 'status'; id: number; full: boolean } | Verdict;
/** Kubernetes mode: a TokenReview verdict one worker got, for the others (by the token's hash). */
type Verdict = { kind: 'verdict'; key: string; identity: NodeIdentity };

function send(message: ToPrimary): void {
  // Gone while shutting down: the primary is not waiting for anything then.
  if (process.connected) process.send?.(message, undefined, undefined, () => undefined);
}

/**
 * A worker's side of the primary: its link events go to the primary's metrics and event log,
 * its sessions move their nodes' routes into its TUN, and it answers the primary's status
 * requests. Shaped like serverObservability, which a lone server uses instead.
 */
export function workerObservability(slot: WorkerSlot) {
  let sessions: SessionRoutes | undefined;
  let verifier: NodeIdentityVerifier | undefined;
  const forward =
    (event: ObserverEvent) =>
    (...args: unknown[]): void =>
      send({ kind: 'event', event, args });
  const metrics: LinkObserver = {
    connected: (peer) => {
      sessions?.changed(peer);
      forward('connected')(peer);
    },
    disconnected: (peer, reason) => {
      sessions?.changed(peer);
      forward('disconnected')(peer, reason);
    },
    handshakeFailed: forward('handshakeFailed'),
    pong: forward('pong'),
  };
  let listener: ((message: ToWorker) => void) | undefined;
  return {
    metrics,
    pathChecker: undefined,
    /** Sessions opening and closing here move their nodes' routes (set before start). */
    follow(routes: SessionRoutes): void {
      sessions = routes;
    },
    /**
     * Kubernetes mode: this worker's TokenReview verdicts go to the others and theirs come here,
     * so a node redialing through any worker is admitted while kube-apiserver is away.
     */
    shareVerdicts(shared: NodeIdentityVerifier): void {
      verifier = shared;
      shared.onReviewed((key, identity) => send({ kind: 'verdict', key, identity }));
    },
    /** The handshake's hook: a node's routes reach this worker's TUN before its Welcome. */
    claimRoutes: (peer: string): Promise<() => void> => {
      if (!sessions) return Promise.reject(new NodelinkError('workers', 'this worker is not ready to route nodes yet'));
      return sessions.claimBeforeWelcome(peer);
    },
    async start(side: ServerSide, base: () => DaemonStatus): Promise<void> {
      const answer = async (id: number, full: boolean): Promise<void> => {
        if (full) await side.refresh?.();
        const status = base();
        if (full) {
          const states = side.routeStates(kernelRouteSet(await kernelRoutes(slot.tun)));
          for (const peer of status.peers) peer.routeStates = states.get(peer.name) ?? [];
        }
        send({ kind: 'status', id, status });
      };
      listener = (message) => {
        if (message?.kind === 'status') void answer(message.id, message.full).catch(() => undefined);
        else if (message?.kind === 'verdict') verifier?.adopt(message.key, message.identity);
      };
      process.on('message', listener);
      send({ kind: 'ready' });
    },
    close(): void {
      if (listener) process.off('message', listener);
    },
  };
}

interface Slot {
  readonly index: number;
  readonly tun: string;
  worker: Worker | undefined;
  ready: boolean;
  restarts: number;
  startedAt: number;
  /** The pause before the next restart after a quick death. */
  pauseMs: number;
  sessions: number;
}

/**
 * The primary of `nodelink server --workers K`: validates nothing more than runServer did before
 * calling it, starts the workers, serves the merged status, and keeps the workers running.
 */
export async function runWorkers(
  config: ServerConfig,
  start: StartSettings,
  log: Logger,
  serverId: string,
): Promise<void> {
  const startedAt = new Date().toISOString();
  const slots: Slot[] = Array.from({ length: config.workers }, (_, index) => ({
    index,
    tun: workerTun(config.tun, index),
    worker: undefined,
    ready: false,
    restarts: 0,
    startedAt: 0,
    pauseMs: RESTART_PAUSE_MS,
    sessions: 0,
  }));
  const observe = serverObservability(config, log);
  let stopping = false;
  let nextRequest = 0;
  const pending = new Map<number, (status: DaemonStatus) => void>();
  let firstFailure: ((err: Error) => void) | undefined;

  const onMessage = (slot: Slot, message: ToPrimary): void => {
    if (message.kind === 'ready') {
      slot.ready = true;
      log.info({ worker: slot.index, pid: slot.worker?.process.pid, tun: slot.tun }, 'worker ready');
    } else if (message.kind === 'event') {
      const method = observe.metrics[message.event] as (...args: unknown[]) => void;
      method.apply(observe.metrics, message.args);
    } else if (message.kind === 'status') {
      pending.get(message.id)?.(message.status);
      pending.delete(message.id);
    } else if (message.kind === 'verdict') {
      for (const other of slots) {
        if (other !== slot && other.ready && other.worker?.isConnected())
          other.worker.send(message satisfies ToWorker, undefined, () => undefined);
      }
    }
  };

  const fork = (slot: Slot): void => {
    const worker = cluster.fork({ [SLOT_ENV]: String(slot.index), [SERVER_ID_ENV]: serverId });
    slot.worker = worker;
    slot.ready = false;
    slot.startedAt = Date.now();
    worker.on('message', (message: ToPrimary) => onMessage(slot, message));
    worker.on('exit', (code, signal) => {
      if (slot.worker !== worker) return;
      slot.worker = undefined;
      const wasReady = slot.ready;
      slot.ready = false;
      slot.sessions = 0;
      if (stopping) return;
      if (!wasReady && firstFailure) {
        firstFailure(new NodelinkError('workers', `worker ${slot.index} exited at start (see its error above)`));
        return;
      }
      const ranMs = Date.now() - slot.startedAt;
      slot.pauseMs = ranMs >= STABLE_AFTER_MS ? RESTART_PAUSE_MS : Math.min(slot.pauseMs * 2, RESTART_PAUSE_CAP_MS);
      log.warn(
        { worker: slot.index, tun: slot.tun, code, signal, restartInMs: slot.pauseMs },
        'worker exited: its nodes reconnect to the other workers while it starts again',
      );
      setTimeout(() => {
        if (stopping) return;
        slot.restarts++;
        fork(slot);
      }, slot.pauseMs).unref();
    });
  };

  /** One worker's status, or undefined if it is not running or does not answer in time. */
  const ask = (slot: Slot, full: boolean): Promise<DaemonStatus | undefined> => {
    const worker = slot.worker;
    if (!worker || !slot.ready || !worker.isConnected()) return Promise.resolve(undefined);
    const id = nextRequest++;
    return new Promise((resolve) => {
      const timer = setTimeout(() => {
        pending.delete(id);
        resolve(undefined);
      }, STATUS_TIMEOUT_MS);
      pending.set(id, (status) => {
        clearTimeout(timer);
        resolve(status);
      });
      worker.send({ kind: 'status', id, full } satisfies ToWorker, undefined, () => undefined);
    });
  };

  let merged: DaemonStatus = mergeWorkerStatuses([], { tun: config.tun, startedAt });
  let workerList: WorkerStatus[] = [];
  let sums = { sessions: 0, handshaking: 0, queued: 0 };
  const refresh = async (full: boolean): Promise<void> => {
    const statuses = await Promise.all(slots.map((slot) => ask(slot, full)));
    merged = mergeWorkerStatuses(
      slots.map((slot, i) => ({ index: slot.index, status: statuses[i] })),
      { tun: config.tun, startedAt },
    );
    sums = { sessions: 0, handshaking: 0, queued: 0 };
    workerList = slots.map((slot, i): WorkerStatus => {
      const debug = statuses[i]?.debug;
      slot.sessions = debug?.sessions ?? (statuses[i] ? slot.sessions : 0);
      sums.sessions += debug?.sessions ?? 0;
      sums.handshaking += debug?.handshaking ?? 0;
      sums.queued += debug?.queued ?? 0;
      return {
        index: slot.index,
        pid: slot.worker?.process.pid ?? null,
        tun: slot.tun,
        state: statuses[i] ? 'running' : slot.ready ? 'unresponsive' : 'starting',
        sessions: slot.sessions,
        restarts: slot.restarts,
      };
    });
  };
  const withWorkers = (): DaemonStatus => ({ ...merged, workers: workerList });
  const side: ServerSide = {
    status: withWorkers,
    refresh: () => refresh(true),
    routeStates: () => {
      const states = new Map<string, RouteState[]>();
      for (const peer of merged.peers) states.set(peer.name, peer.routeStates ?? []);
      return states;
    },
    pathTargets: (): PathTarget[] =>
      pathTargets(
        merged.peers
          .filter((peer) => peer.connected)
          .map((peer) => ({ name: peer.name, routes: peer.routes.map((route) => Prefix.parse(route)) })),
      ),
  };

  // Every worker ready, or the first one that fails at start stops them all.
  await new Promise<void>((resolve, reject) => {
    firstFailure = reject;
    const check = setInterval(() => {
      if (slots.every((slot) => slot.ready)) {
        clearInterval(check);
        firstFailure = undefined;
        resolve();
      }
    }, 20);
    for (const slot of slots) fork(slot);
  }).catch(async (err: unknown) => {
    stopping = true;
    await stopWorkers(slots, 2000);
    throw err;
  });

  await refresh(true);
  await observe.start(side, () => ({
    ...withWorkers(),
    debug: { ...processDebug(), ...sums },
  }));
  // Path checks read the nodes each worker holds: refreshed as often as they run.
  const pathRefresh = setInterval(
    () => void refresh(false).catch(() => undefined),
    Math.max(1000, Math.min(config.pathCheckIntervalMs || 10_000, 10_000)),
  );
  pathRefresh.unref();

  reloadServerSettingsOnSighup({ configFile: config.configFile, start, log }, observe.pathChecker);
  // Each worker reloads its peers file (or certificate) itself, as a lone server does.
  onReload(
    'workers',
    () => {
      for (const slot of slots) slot.worker?.process.kill('SIGHUP');
    },
    log,
  );
  log.info(
    { tun: config.tun, workers: slots.map((slot) => slot.tun), adminSocket: config.adminSocket },
    'server ready',
  );
  onShutdownSignal(log, 3000, async () => {
    stopping = true;
    clearInterval(pathRefresh);
    observe.close();
    // Each worker closes its TUN, which takes its routes with it; the backstops stay.
    await stopWorkers(slots, 2500);
  });
}

/** SIGTERM to every running worker, and until all have exited (or `graceMs` passed). */
async function stopWorkers(slots: readonly Slot[], graceMs: number): Promise<void> {
  const exits = slots.flatMap((slot) => {
    const worker = slot.worker;
    if (!worker || worker.isDead()) return [];
    const exited = new Promise<void>((resolve) => worker.once('exit', () => resolve()));
    worker.process.kill('SIGTERM');
    return [exited];
  });
  await Promise.race([Promise.all(exits), new Promise((resolve) => setTimeout(resolve, graceMs))]);
}

import { LOG_FORMATS, LOG_LEVELS, type LogFormat, type LogLevel } from '../log.js';
import { Prefix } from '../routing/index.js';
import { DEFAULT_ADMISSION_LIMITS } from '../link-server/admission.js';
import { MAX_SERVER_COUNT, SERVER_ID_PATTERN } from '../protocol/index.js';
import { ConfigError, numberOrNaN, toBoolean, toList, toText, type SettingsSpec } from './settings.js';

export { ConfigError };

export interface Endpoint {
  readonly host: string;
  readonly port: number;
}

/** Tunables shared by both ends, each with a bounded default. */
export interface LinkTunables {
  readonly tun: string;
  readonly mtu: number;
  readonly adminSocket: string;
  readonly logLevel: LogLevel;
  readonly keepaliveIntervalMs: number;
  readonly deadAfterMs: number;
  readonly handshakeTimeoutMs: number;
  readonly maxQueueBytes: number;
  /** --metrics HOST:PORT: /metrics, /healthz and /readyz; null when off. */
  readonly metrics: Endpoint | null;
  readonly logFormat: LogFormat;
  /** --config: the file some values came from; SIGHUP re-reads it. */
  readonly configFile: string | null;
}

export interface ServerConfig extends LinkTunables {
  readonly listen: Endpoint;
  readonly keyFile: string;
  readonly peersFile: string;
  readonly tunnelCidrs: readonly Prefix[];
  /** The server's own address in each tunnel CIDR (its first host), with the CIDR's length. */
  readonly tunnelAddresses: readonly Prefix[];
  /** End-to-end data path checks to each node (0 = off), see link-server/path-check.ts. */
  readonly pathCheckIntervalMs: number;
  readonly pathCheckTimeoutMs: number;
  readonly pathCheckPort: number;
  /** --authorize-from-nodes: also check announced routes against each peer's Node object. */
  readonly authorizeFromNodes: boolean;
  /**
   * --node-auth: how nodes prove who they are. 'peers': a key listed in --peers. 'kubernetes': a
   * projected service-account token checked by TokenReview; peers are the Node objects.
   */
  readonly nodeAuth: NodeAuth;
  /** Kubernetes mode: the service account ("namespace:name") client pods run as. */
  readonly serviceAccount: string;
  /** Kubernetes mode: the audience client tokens must carry. */
  readonly tokenAudience: string;
  /** --allow-node-initiated: no flow filter; nodes may open flows toward the control plane. */
  readonly allowNodeInitiated: boolean;
  /** --kubeconfig; '' means in-cluster, then $KUBECONFIG or ~/.kube/config. */
  readonly kubeconfig: string;
  /** --cert / --cert-key: a CA-signed certificate chain instead of the self-signed one ('' = none). */
  readonly certFile: string;
  readonly certKeyFile: string;
  /** Handshake admission limits (docs/security.md). */
  readonly maxUnauthenticated: number;
  readonly maxNewConnsPerSource: number;
  readonly maxQueuedHandshakes: number;
  /** --server-id: this replica's name in every welcome; '' = derived at start (hostname + random). */
  readonly serverId: string;
  /** --server-count: how many replicas serve behind the nodes' --server address. */
  readonly serverCount: number;
  /** --init-routes: install the fail-closed rules and routes for the peers file, then exit. */
  readonly initRoutes: boolean;
  /** --workers: server processes, each with its own TUN (1 = one process, no primary). */
  readonly workers: number;
}

export interface ClientConfig extends LinkTunables {
  readonly server: Endpoint;
  /**
   * Every --server: the client keeps one session to each (several control-plane servers). A DNS
   * name that resolves to several addresses also means one session per address.
   */
  readonly servers: readonly Endpoint[];
  /** Pinned server key ('' when only --ca is used). */
  readonly serverKey: string;
  /** --ca: PEM CA certificates to verify the server's chain against ('' = pinning only). */
  readonly caFile: string;
  /** --server-name: the name to find in the server's certificate (and SNI); '' = the --server host. */
  readonly serverName: string;
  readonly keyFile: string;
  readonly name: string;
  readonly routes: readonly Prefix[];
  readonly backoffBaseMs: number;
  readonly backoffCapMs: number;
  readonly enableForwarding: boolean;
  /** --routes-from-node: announce the Node object's InternalIPs and pod CIDRs (plus any --route). */
  readonly routesFromNode: boolean;
  readonly nodePollMs: number;
  readonly kubeconfig: string;
  /** Largest wait between dials that look for the replicas a node does not hold yet. */
  readonly replicaSearchCapMs: number;
  /** A replica whose session ended this long ago is forgotten. */
  readonly replicaForgetMs: number;
  /**
   * --token-file: Kubernetes mode. The projected service-account token, re-read at every dial
   * (the kubelet rotates it); the key pair is then made fresh at start unless --key is given, and
   * the routes come from the server (the Node object) unless --route is given. '' = off.
   */
  readonly tokenFile: string;
}

export const NODE_AUTH_MODES = ['peers', 'kubernetes'] as const;
export type NodeAuth = (typeof NODE_AUTH_MODES)[number];

export const DEFAULTS = {
  tun: 'nl0',
  // A TLS stream carries any packet size, unlike a UDP tunnel: a large MTU means far fewer
  // packets per byte (see README "Performance"). TCP inside still negotiates MSS per path.
  mtu: 65000,
  serverAdminSocket: '/run/nodelink/server.sock',
  clientAdminSocket: '/run/nodelink/client.sock',
  logLevel: 'info' as LogLevel,
  keepaliveIntervalMs: 2000,
  deadAfterMs: 10_000,
  handshakeTimeoutMs: 5000,
  maxQueueBytes: 4 * 1024 * 1024,
  backoffBaseMs: 500,
  backoffCapMs: 15_000,
  logFormat: 'auto' as LogFormat,
  pathCheckIntervalMs: 10_000,
  pathCheckTimeoutMs: 3000,
  pathCheckPort: 10250,
  nodePollMs: 30_000,
  serviceAccount: 'kube-system:nodelink-client',
  tokenAudience: 'nodelink',
  statusIntervalS: 2,
  maxUnauthenticated: DEFAULT_ADMISSION_LIMITS.maxUnauthenticated,
  maxNewConnsPerSource: DEFAULT_ADMISSION_LIMITS.maxNewPerSourcePerSecond,
  maxQueuedHandshakes: DEFAULT_ADMISSION_LIMITS.maxQueued,
  serverCount: 1,
  workers: 1,
  replicaSearchCapMs: 10_000,
  replicaForgetMs: 60_000,
} as const;

// ---- the settings of each daemon: type, default and --help text, stated once -------------------

/** --config: the file itself comes from the command line or NODELINK_CONFIG only. */
export const CONFIG_SETTING: SettingsSpec = {
  config: {
    type: 'string',
    inFile: false,
    describe: 'config file (JSON or YAML) with any of these flags as keys; flags and NODELINK_* env win over it',
  },
};

/** Settings both daemons share; `adminSocket` is the role's default socket. */
function linkSettings(adminSocket: string): SettingsSpec {
  return {
    tun: { type: 'string', default: DEFAULTS.tun, describe: 'TUN interface name' },
    mtu: { type: 'number', default: DEFAULTS.mtu, describe: 'TUN MTU' },
    'admin-socket': { type: 'string', default: adminSocket, describe: 'unix socket for `nodelink status`' },
    'log-level': { type: 'string', default: DEFAULTS.logLevel, describe: LOG_LEVELS.join('|') },
    'keepalive-ms': { type: 'number', default: DEFAULTS.keepaliveIntervalMs, describe: 'ping interval' },
    'dead-after-ms': {
      type: 'number',
      default: DEFAULTS.deadAfterMs,
      describe: 'drop a silent peer after this long',
    },
    'handshake-timeout-ms': {
      type: 'number',
      default: DEFAULTS.handshakeTimeoutMs,
      describe: 'TLS + hello deadline',
    },
    'max-queue-bytes': {
      type: 'number',
      default: DEFAULTS.maxQueueBytes,
      describe: 'per-peer send queue before drops',
    },
    metrics: {
      type: 'string',
      defaultText: 'off',
      describe: 'HOST:PORT serving /metrics (Prometheus), /healthz and /readyz',
    },
    'log-format': {
      type: 'string',
      default: DEFAULTS.logFormat,
      describe: `${LOG_FORMATS.join('|')}; auto is readable on a terminal, JSON lines otherwise`,
    },
    'print-config': {
      type: 'boolean',
      default: false,
      describe: 'print every setting with its source, and the effective config (secrets redacted), and exit',
    },
    ...CONFIG_SETTING,
  };
}

const KUBECONFIG_DEFAULT = 'in-cluster, then $KUBECONFIG, ~/.kube/config';

export const SERVER_SETTINGS: SettingsSpec = {
  listen: { type: 'string', describe: 'HOST:PORT to accept nodes on' },
  key: { type: 'string', describe: 'private key file (mode 0600)' },
  peers: { type: 'string', describe: 'peers JSON file: authorized nodes and their allowedIPs' },
  'tunnel-cidr': {
    type: 'list',
    describe: 'tunnel CIDR; a second one of the other family makes it dual-stack',
  },
  'authorize-from-nodes': {
    type: 'boolean',
    default: false,
    describe: "also require a node's routes to be its Node object's InternalIPs and pod CIDRs",
  },
  'allow-node-initiated': {
    type: 'boolean',
    default: false,
    describe:
      'let nodes open connections to the control plane and, through it, to other nodes (default: only flows the control plane opened pass; that needs nft)',
  },
  kubeconfig: {
    type: 'string',
    defaultText: KUBECONFIG_DEFAULT,
    describe: 'kubeconfig for --node-auth kubernetes and --authorize-from-nodes',
  },
  'node-auth': {
    type: 'string',
    default: 'peers',
    describe:
      "how nodes prove who they are: 'peers' (a key in --peers) or 'kubernetes' (a projected service-account token, checked by TokenReview; nodes join as their Node objects appear)",
  },
  'service-account': {
    type: 'string',
    default: DEFAULTS.serviceAccount,
    describe: "--node-auth kubernetes: the client pods' service account, namespace:name",
  },
  'token-audience': {
    type: 'string',
    default: DEFAULTS.tokenAudience,
    describe: '--node-auth kubernetes: the audience client tokens must carry',
  },
  cert: {
    type: 'string',
    defaultText: 'self-signed for --key',
    describe: 'PEM certificate chain signed by your CA, for clients using --ca',
  },
  'cert-key': {
    type: 'string',
    defaultText: '--key, which the certificate must then certify',
    describe: 'PEM private key of --cert, mode 0600',
  },
  'max-unauthenticated': {
    type: 'number',
    default: DEFAULTS.maxUnauthenticated,
    describe: 'connections allowed at once between TCP accept and a verified hello',
  },
  'max-queued-handshakes': {
    type: 'number',
    default: DEFAULTS.maxQueuedHandshakes,
    describe:
      'connections held unread, first come first served, while all --max-unauthenticated slots are busy; 0 = refuse at once',
  },
  'max-new-conns-per-source': {
    type: 'number',
    default: DEFAULTS.maxNewConnsPerSource,
    describe: 'new connections per second from one source IP (IPv6: per /64) before refusing',
  },
  'server-id': {
    type: 'string',
    defaultText: 'hostname-RANDOM, new at each start',
    describe: "this replica's name, told to every node: set it only if the default is not unique per replica",
  },
  'server-count': {
    type: 'number',
    default: DEFAULTS.serverCount,
    describe:
      'replicas behind the address nodes dial: each node holds a session to this many (the same on every replica)',
  },
  workers: {
    type: 'number',
    default: DEFAULTS.workers,
    describe:
      'server processes sharing the listen port, each with its own TUN (--tun, then --tun-1, …) and a share of the nodes: set it to the CPU cores the server may use',
  },
  'init-routes': {
    type: 'boolean',
    default: false,
    describe:
      "install the fail-closed routes (an unreachable route per allowedIP, and the rules) and exit: an init container's step before the server's first start",
  },
  'path-check-interval-ms': {
    type: 'number',
    default: DEFAULTS.pathCheckIntervalMs,
    describe: "check each node's data path through the TUN this often; 0 = off",
  },
  'path-check-port': {
    type: 'number',
    default: DEFAULTS.pathCheckPort,
    describe: "TCP port on the node IP the path check connects to (the kubelet's)",
  },
  'path-check-timeout-ms': {
    type: 'number',
    default: DEFAULTS.pathCheckTimeoutMs,
    describe: 'a path check without an answer this long fails',
  },
  ...linkSettings(DEFAULTS.serverAdminSocket),
};

export const CLIENT_SETTINGS: SettingsSpec = {
  server: {
    type: 'list',
    describe:
      'HOST:PORT of the nodelink server; repeat it (or use a DNS name with several addresses) to keep a session to each of several servers',
  },
  'server-key': { type: 'string', describe: "the server's public key (nodelink pubkey < server.key)" },
  ca: {
    type: 'string',
    describe:
      "PEM CA certificate(s): verify the server's certificate chain and name against them (with or instead of --server-key)",
  },
  'server-name': {
    type: 'string',
    defaultText: 'the --server host',
    describe: "with --ca: the DNS name the server's certificate must carry",
  },
  key: {
    type: 'string',
    describe: 'private key file (mode 0600); with --token-file, optional (a fresh key per start)',
  },
  'token-file': {
    type: 'string',
    describe:
      'Kubernetes mode: the projected service-account token (audience nodelink), re-read at every dial; no key file or --route needed',
  },
  name: {
    type: 'string',
    fallbackEnv: 'NODE_NAME',
    defaultText: '$NODE_NAME',
    describe: "this node's name, as in the server's peers file",
  },
  route: { type: 'list', describe: 'CIDR to announce: node IP /32 and pod CIDRs' },
  forwarding: { type: 'boolean', default: true, describe: 'enable ip_forward for the announced families' },
  'backoff-base-ms': {
    type: 'number',
    default: DEFAULTS.backoffBaseMs,
    describe: 'first redial wait ceiling; waits are uniform in [0, min(cap, base*2^n)]',
  },
  'backoff-cap-ms': { type: 'number', default: DEFAULTS.backoffCapMs, describe: 'largest redial wait ceiling' },
  'routes-from-node': {
    type: 'boolean',
    default: false,
    describe:
      "announce this Node object's InternalIPs and pod CIDRs (name from --name or NODE_NAME), and re-announce when they change",
  },
  'node-poll-ms': {
    type: 'number',
    default: DEFAULTS.nodePollMs,
    describe: 'with --routes-from-node, re-read the Node this often',
  },
  kubeconfig: { type: 'string', defaultText: KUBECONFIG_DEFAULT, describe: 'kubeconfig for --routes-from-node' },
  'replica-search-cap-ms': {
    type: 'number',
    default: DEFAULTS.replicaSearchCapMs,
    describe: 'largest wait between dials looking for server replicas this node does not hold yet',
  },
  'replica-forget-ms': {
    type: 'number',
    default: DEFAULTS.replicaForgetMs,
    describe: 'forget a server replica whose session ended this long ago',
  },
  ...linkSettings(DEFAULTS.clientAdminSocket),
};

// ---- parseConfig: the one validating step -------------------------------------------------------

export type RawOptions = Record<string, unknown>;

function isUnset(value: unknown): boolean {
  return value === undefined || value === null || value === '';
}

function str(raw: RawOptions, flag: string, required = true): string {
  const value = raw[flag];
  if (isUnset(value)) {
    if (required) throw new ConfigError(`--${flag} is required`);
    return '';
  }
  return toText(value, `--${flag}`);
}

function bool(raw: RawOptions, flag: string, fallback: boolean): boolean {
  const value = raw[flag];
  return isUnset(value) ? fallback : toBoolean(value, `--${flag}`);
}

export function list(raw: RawOptions, flag: string): string[] {
  const value = raw[flag];
  return isUnset(value) ? [] : toList(value, `--${flag}`);
}

export function int(raw: RawOptions, flag: string, fallback: number, min: number, max: number): number {
  const value = raw[flag];
  if (isUnset(value)) return fallback;
  const n = numberOrNaN(value);
  if (!Number.isInteger(n) || n < min || n > max)
    throw new ConfigError(`--${flag} must be a whole number from ${min} to ${max}, got "${String(value)}"`);
  return n;
}

export function cidr(text: string, flag: string): Prefix {
  try {
    return Prefix.parse(text);
  } catch (err) {
    throw new ConfigError(`--${flag}: ${(err as Error).message}`);
  }
}

/** The server's own address of that family inside the tunnel: the source of what it sends into it. */
export function tunnelSource(addresses: readonly Prefix[], family: 4 | 6): string | undefined {
  return addresses.find((address) => address.family === family)?.address;
}

/** HOST:PORT, [IPV6]:PORT. */
export function parseEndpoint(text: string, flag: string): Endpoint {
  const match = /^\[([^\]]+)\]:(\d+)$/.exec(text) ?? /^([^:]+):(\d+)$/.exec(text);
  const port = match ? Number(match[2]) : NaN;
  if (!match || port < 1 || port > 65535) {
    throw new ConfigError(`--${flag} must be HOST:PORT (or [IPV6]:PORT), got "${text}"`);
  }
  return { host: match[1]!, port };
}

function interfaceName(raw: RawOptions): string {
  const name = str(raw, 'tun', false) || DEFAULTS.tun;
  if (!/^[A-Za-z0-9_.-]{1,15}$/.test(name))
    throw new ConfigError(`--tun must be an interface name of at most 15 letters, digits, . _ -, got "${name}"`);
  return name;
}

/** --log-level, checked; start-up and a config-file reload both read it through here. */
export function logLevelSetting(raw: RawOptions): LogLevel {
  const logLevel = (str(raw, 'log-level', false) || DEFAULTS.logLevel) as LogLevel;
  if (!LOG_LEVELS.includes(logLevel))
    throw new ConfigError(`--log-level must be one of ${LOG_LEVELS.join(', ')}, got "${logLevel}"`);
  return logLevel;
}

function tunables(raw: RawOptions, defaultSocket: string): LinkTunables {
  const logLevel = logLevelSetting(raw);
  const keepaliveIntervalMs = int(raw, 'keepalive-ms', DEFAULTS.keepaliveIntervalMs, 100, 600_000);
  const deadAfterMs = int(raw, 'dead-after-ms', DEFAULTS.deadAfterMs, 300, 3_600_000);
  if (deadAfterMs <= keepaliveIntervalMs) throw new ConfigError('--dead-after-ms must be longer than --keepalive-ms');
  return {
    tun: interfaceName(raw),
    mtu: int(raw, 'mtu', DEFAULTS.mtu, 1280, 65535),
    adminSocket: str(raw, 'admin-socket', false) || defaultSocket,
    logLevel,
    keepaliveIntervalMs,
    deadAfterMs,
    handshakeTimeoutMs: int(raw, 'handshake-timeout-ms', DEFAULTS.handshakeTimeoutMs, 100, 120_000),
    maxQueueBytes: int(raw, 'max-queue-bytes', DEFAULTS.maxQueueBytes, 65_536, 1 << 30),
    ...observability(raw),
  };
}

function observability(raw: RawOptions): Pick<LinkTunables, 'metrics' | 'logFormat' | 'configFile'> {
  const logFormat = (str(raw, 'log-format', false) || DEFAULTS.logFormat) as LogFormat;
  if (!LOG_FORMATS.includes(logFormat))
    throw new ConfigError(`--log-format must be one of ${LOG_FORMATS.join(', ')}, got "${logFormat}"`);
  const metrics = str(raw, 'metrics', false);
  return {
    metrics: metrics ? parseEndpoint(metrics, 'metrics') : null,
    logFormat,
    configFile: str(raw, 'config', false) || null,
  };
}

/** The path-check settings, also used by the SIGHUP reload. */
export function pathCheckSettings(
  raw: RawOptions,
): Pick<ServerConfig, 'pathCheckIntervalMs' | 'pathCheckTimeoutMs' | 'pathCheckPort'> {
  const pathCheckIntervalMs = int(raw, 'path-check-interval-ms', DEFAULTS.pathCheckIntervalMs, 0, 3_600_000);
  if (pathCheckIntervalMs > 0 && pathCheckIntervalMs < 200)
    throw new ConfigError('--path-check-interval-ms must be 0 (off) or at least 200');
  return {
    pathCheckIntervalMs,
    pathCheckTimeoutMs: int(raw, 'path-check-timeout-ms', DEFAULTS.pathCheckTimeoutMs, 100, 60_000),
    pathCheckPort: int(raw, 'path-check-port', DEFAULTS.pathCheckPort, 1, 65535),
  };
}

export function parseServerConfig(raw: RawOptions): ServerConfig {
  const tunnelCidrs = list(raw, 'tunnel-cidr').map((text) => cidr(text, 'tunnel-cidr'));
  if (tunnelCidrs.length === 0) throw new ConfigError('--tunnel-cidr is required, e.g. --tunnel-cidr 198.18.255.0/24');
  if (tunnelCidrs.length > 2 || (tunnelCidrs.length === 2 && tunnelCidrs[0]!.family === tunnelCidrs[1]!.family)) {
    throw new ConfigError('--tunnel-cidr takes at most one IPv4 and one IPv6 CIDR');
  }
  const tunnelAddresses = tunnelCidrs.map((prefix) => {
    if (prefix.length > prefix.bits - 2)
      throw new ConfigError(`--tunnel-cidr ${prefix} is too small: use at least a /30 (IPv4) or /126 (IPv6)`);
    return Prefix.fromAddress(prefix.firstHost());
  });
  const nodeAuth = str(raw, 'node-auth', false) || 'peers';
  if (!(NODE_AUTH_MODES as readonly string[]).includes(nodeAuth))
    throw new ConfigError(`--node-auth must be ${NODE_AUTH_MODES.join(' or ')}, got "${nodeAuth}"`);
  const kubernetes = nodeAuth === 'kubernetes';
  const peersFile = str(raw, 'peers', !kubernetes);
  if (kubernetes && peersFile)
    throw new ConfigError(
      '--peers and --node-auth kubernetes exclude each other: in Kubernetes mode the peers are the Node objects',
    );
  const serviceAccount = str(raw, 'service-account', false) || DEFAULTS.serviceAccount;
  if (!/^[a-z0-9]([-a-z0-9]*[a-z0-9])?:[a-z0-9]([-.a-z0-9]*[a-z0-9])?$/.test(serviceAccount))
    throw new ConfigError(`--service-account must be namespace:name, got "${serviceAccount}"`);
  return Object.freeze({
    ...tunables(raw, DEFAULTS.serverAdminSocket),
    listen: parseEndpoint(str(raw, 'listen'), 'listen'),
    keyFile: str(raw, 'key'),
    peersFile,
    nodeAuth: nodeAuth as NodeAuth,
    serviceAccount,
    tokenAudience: str(raw, 'token-audience', false) || DEFAULTS.tokenAudience,
    tunnelCidrs,
    tunnelAddresses,
    ...pathCheckSettings(raw),
    authorizeFromNodes: bool(raw, 'authorize-from-nodes', false),
    allowNodeInitiated: bool(raw, 'allow-node-initiated', false),
    kubeconfig: str(raw, 'kubeconfig', false),
    ...serverSecurity(raw),
    ...replicaIdentity(raw),
    initRoutes: bool(raw, 'init-routes', false),
    workers: workerCount(raw),
  });
}

/** Most worker processes a server may run. */
export const MAX_WORKERS = 64;

/** The TUN of worker `index`: the first has --tun itself, so one worker is exactly a lone server. */
export function workerTun(tun: string, index: number): string {
  return index === 0 ? tun : `${tun}-${index}`;
}

function workerCount(raw: RawOptions): number {
  const workers = int(raw, 'workers', DEFAULTS.workers, 1, MAX_WORKERS);
  const last = workerTun(interfaceName(raw), workers - 1);
  if (last.length > 15)
    throw new ConfigError(
      `--workers ${workers} needs TUN names up to "${last}", over the 15 characters of an interface name: shorten --tun`,
    );
  return workers;
}

function replicaIdentity(raw: RawOptions): Pick<ServerConfig, 'serverId' | 'serverCount'> {
  const serverId = str(raw, 'server-id', false);
  if (serverId && !SERVER_ID_PATTERN.test(serverId))
    throw new ConfigError(`--server-id must be 1-63 letters, digits, . _ -, got "${serverId}"`);
  return { serverId, serverCount: int(raw, 'server-count', DEFAULTS.serverCount, 1, MAX_SERVER_COUNT) };
}

function serverSecurity(
  raw: RawOptions,
): Pick<
  ServerConfig,
  'certFile' | 'certKeyFile' | 'maxUnauthenticated' | 'maxNewConnsPerSource' | 'maxQueuedHandshakes'
> {
  const certFile = str(raw, 'cert', false);
  const certKeyFile = str(raw, 'cert-key', false);
  if (certKeyFile && !certFile) throw new ConfigError('--cert-key needs --cert: the certificate that key belongs to');
  return {
    certFile,
    certKeyFile,
    maxUnauthenticated: int(raw, 'max-unauthenticated', DEFAULTS.maxUnauthenticated, 1, 65_536),
    maxNewConnsPerSource: int(raw, 'max-new-conns-per-source', DEFAULTS.maxNewConnsPerSource, 1, 100_000),
    maxQueuedHandshakes: int(raw, 'max-queued-handshakes', DEFAULTS.maxQueuedHandshakes, 0, 65_536),
  };
}

function serverTrust(raw: RawOptions): Pick<ClientConfig, 'serverKey' | 'caFile' | 'serverName'> {
  const serverKey = str(raw, 'server-key', false);
  const caFile = str(raw, 'ca', false);
  if (!serverKey && !caFile)
    throw new ConfigError(
      "--server-key is required (the server's public key, from 'nodelink pubkey'), or --ca FILE to verify the server's certificate against your CA",
    );
  const serverName = str(raw, 'server-name', false);
  if (serverName && !/^[A-Za-z0-9]([A-Za-z0-9-]{0,62})(\.[A-Za-z0-9]([A-Za-z0-9-]{0,62}))*\.?$/.test(serverName)) {
    throw new ConfigError(`--server-name must be a DNS name, got "${serverName}"`);
  }
  return { serverKey, caFile, serverName };
}

/** `env` supplies NODE_NAME (the downward API's spec.nodeName), the default of --name. */
export function parseClientConfig(raw: RawOptions, env: Readonly<Record<string, string | undefined>>): ClientConfig {
  const routesFromNode = bool(raw, 'routes-from-node', false);
  const routes = list(raw, 'route').map((text) => cidr(text, 'route'));
  const tokenFile = str(raw, 'token-file', false);
  if (routes.length === 0 && !routesFromNode && !tokenFile)
    throw new ConfigError(
      '--route is required: the node IP /32 and its pod CIDR, e.g. --route 198.19.0.11/32 --route 198.19.1.0/24 (or --routes-from-node, or --token-file in Kubernetes mode)',
    );
  const name = str(raw, 'name', false) || env['NODE_NAME'] || '';
  if (!name) throw new ConfigError("--name is required: this node's name in the peers file (or set NODE_NAME)");
  if (!/^[A-Za-z0-9][A-Za-z0-9._-]{0,252}$/.test(name))
    throw new ConfigError(`--name must be a node name (letters, digits, . _ -), got "${name}"`);
  const backoffBaseMs = int(raw, 'backoff-base-ms', DEFAULTS.backoffBaseMs, 10, 60_000);
  const backoffCapMs = int(raw, 'backoff-cap-ms', DEFAULTS.backoffCapMs, backoffBaseMs, 600_000);
  const common = tunables(raw, DEFAULTS.clientAdminSocket);
  const servers = list(raw, 'server').map((text) => parseEndpoint(text, 'server'));
  if (servers.length === 0)
    throw new ConfigError('--server is required: HOST:PORT of the nodelink server (repeat it for several servers)');
  return Object.freeze({
    ...common,
    server: servers[0]!,
    servers,
    ...serverTrust(raw),
    keyFile: str(raw, 'key', !tokenFile),
    tokenFile,
    name,
    routes,
    backoffBaseMs,
    backoffCapMs,
    enableForwarding: bool(raw, 'forwarding', true),
    routesFromNode,
    nodePollMs: int(raw, 'node-poll-ms', DEFAULTS.nodePollMs, 1000, 3_600_000),
    kubeconfig: str(raw, 'kubeconfig', false),
    replicaSearchCapMs: int(raw, 'replica-search-cap-ms', DEFAULTS.replicaSearchCapMs, backoffBaseMs, 600_000),
    replicaForgetMs: int(raw, 'replica-forget-ms', DEFAULTS.replicaForgetMs, 1000, 86_400_000),
  });
}

#!/usr/bin/env node
import { readFileSync } from 'node:fs';
import yargs from 'yargs';
import { hideBin } from 'yargs/helpers';
import { decodeKey, encodeKey, generateSeed, keyPairFromSeed } from '../auth/index.js';
import { NodelinkError, userMessage } from '../errors.js';
import { DEFAULTS, parseClientConfig, parseServerConfig, type RawOptions } from './config.js';
import { runServer } from './run-server.js';
import { runClient } from './run-client.js';
import { envName, printOrRun, withConfigFile, type Spec } from './config-file.js';
import { statusCommand } from './status-command.js';
import { diagnoseCommand } from './diagnose.js';

class UsageError extends NodelinkError {
  constructor(message: string) {
    super('usage', `${message} (see nodelink --help)`);
  }
}

/** Every error a user can cause ends here as one line and a non-zero exit, never a stack trace. */
function fail(err: unknown): never {
  process.stderr.write(`nodelink: ${userMessage(err)}\n`);
  if (process.env['NODELINK_DEBUG'] && err instanceof Error) process.stderr.write(`${err.stack}\n`);
  process.exit(1);
}

const tunables: Record<string, Spec> = {
  tun: { type: 'string', describe: `TUN interface name (default ${DEFAULTS.tun})` },
  mtu: { type: 'number', describe: `TUN MTU (default ${DEFAULTS.mtu})` },
  'admin-socket': { type: 'string', describe: 'unix socket for `nodelink status`' },
  'log-level': { type: 'string', describe: `trace|debug|info|warn|error|silent (default ${DEFAULTS.logLevel})` },
  'keepalive-ms': { type: 'number', describe: `ping interval (default ${DEFAULTS.keepaliveIntervalMs})` },
  'dead-after-ms': { type: 'number', describe: `drop a silent peer after this long (default ${DEFAULTS.deadAfterMs})` },
  'handshake-timeout-ms': { type: 'number', describe: `TLS + hello deadline (default ${DEFAULTS.handshakeTimeoutMs})` },
  'max-queue-bytes': {
    type: 'number',
    describe: `per-peer send queue before drops (default ${DEFAULTS.maxQueueBytes})`,
  },
  metrics: { type: 'string', describe: 'HOST:PORT serving /metrics (Prometheus), /healthz and /readyz (default: off)' },
  'log-format': {
    type: 'string',
    describe: 'auto|json|pretty; auto is readable on a terminal, JSON lines otherwise (default auto)',
  },
  'print-config': {
    type: 'boolean',
    default: false,
    describe: 'print the effective config (secrets redacted) and exit',
  },
};

/**
 * Every flag may also come from the environment as NODELINK_<FLAG> (a DaemonSet sets env, not
 * args). Only the command's own flags are read, so unrelated NODELINK_* variables are no error;
 * a flag on the command line wins over the environment.
 */
function withEnv<T extends Record<string, Spec>>(options: T): T {
  const out: Record<string, Spec> = {};
  for (const [flag, spec] of Object.entries(options)) {
    const value = process.env[envName(flag)];
    if (value === undefined || value === '') {
      out[flag] = spec;
    } else if (spec.array) {
      out[flag] = { ...spec, default: value.split(/[\s,]+/).filter((item) => item.length > 0) };
    } else if (spec.type === 'boolean') {
      out[flag] = { ...spec, default: !/^(0|false|no|off)$/i.test(value) };
    } else {
      out[flag] = { ...spec, default: value };
    }
  }
  return out as T;
}

function pubkeyCommand(): void {
  const text = readFileSync(0, 'utf8');
  const seed = decodeKey(text, 'the private key on stdin');
  process.stdout.write(`${encodeKey(keyPairFromSeed(seed).publicKey)}\n`);
}

await yargs(hideBin(process.argv))
  .scriptName('nodelink')
  .strict()
  .command('keygen', 'print a new private key (base64 Ed25519 seed)', {}, async () => {
    process.stdout.write(`${encodeKey(generateSeed())}\n`);
  })
  .command('pubkey', 'read a private key on stdin, print its public key', {}, async () => pubkeyCommand())
  .command(
    'server',
    'run the control-plane side',
    withEnv(
      withConfigFile('server', {
        listen: { type: 'string', describe: 'HOST:PORT to accept nodes on' },
        key: { type: 'string', describe: 'private key file (mode 0600)' },
        peers: { type: 'string', describe: 'peers JSON file: authorized nodes and their allowedIPs' },
        'tunnel-cidr': {
          type: 'string',
          array: true,
          describe: 'tunnel CIDR; a second one of the other family makes it dual-stack',
        },
        'authorize-from-nodes': {
          type: 'boolean',
          default: false,
          describe: "also require a node's routes to be its Node object's InternalIPs and pod CIDRs",
        },
        kubeconfig: {
          type: 'string',
          describe: 'kubeconfig for --authorize-from-nodes (default: in-cluster, then $KUBECONFIG, ~/.kube/config)',
        },
        cert: {
          type: 'string',
          describe: 'PEM certificate chain signed by your CA, for clients using --ca (default: self-signed for --key)',
        },
        'cert-key': {
          type: 'string',
          describe: 'PEM private key of --cert, mode 0600 (default: --key, which the certificate must then certify)',
        },
        'max-unauthenticated': {
          type: 'number',
          describe: `connections allowed at once between TCP accept and a verified hello (default ${DEFAULTS.maxUnauthenticated})`,
        },
        'max-queued-handshakes': {
          type: 'number',
          describe: `connections held unread, first come first served, while all --max-unauthenticated slots are busy; 0 = refuse at once (default ${DEFAULTS.maxQueuedHandshakes})`,
        },
        'max-new-conns-per-source': {
          type: 'number',
          describe: `new connections per second from one source IP (IPv6: per /64) before refusing (default ${DEFAULTS.maxNewConnsPerSource})`,
        },
        'path-check-interval-ms': {
          type: 'number',
          describe: `check each node's data path through the TUN this often; 0 = off (default ${DEFAULTS.pathCheckIntervalMs})`,
        },
        'path-check-port': {
          type: 'number',
          describe: `TCP port on the node IP the path check connects to (default ${DEFAULTS.pathCheckPort}, kubelet)`,
        },
        'path-check-timeout-ms': {
          type: 'number',
          describe: `a path check without an answer this long fails (default ${DEFAULTS.pathCheckTimeoutMs})`,
        },
        ...tunables,
      }),
    ),
    async (argv) => printOrRun(argv as RawOptions, 'server', () => parseServerConfig(argv as RawOptions), runServer),
  )
  .command(
    'client',
    'run the node side',
    withEnv(
      withConfigFile('client', {
        server: {
          type: 'string',
          array: true,
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
          describe: "with --ca: the DNS name the server's certificate must carry (default: the --server host)",
        },
        key: { type: 'string', describe: 'private key file (mode 0600)' },
        name: { type: 'string', describe: "this node's name, as in the server's peers file" },
        route: { type: 'string', array: true, describe: 'CIDR to announce: node IP /32 and pod CIDRs' },
        forwarding: { type: 'boolean', default: true, describe: 'enable ip_forward for the announced families' },
        'backoff-base-ms': {
          type: 'number',
          describe: `first redial wait ceiling; waits are uniform in [0, min(cap, base*2^n)] (default ${DEFAULTS.backoffBaseMs})`,
        },
        'backoff-cap-ms': {
          type: 'number',
          describe: `largest redial wait ceiling (default ${DEFAULTS.backoffCapMs})`,
        },
        'routes-from-node': {
          type: 'boolean',
          default: false,
          describe:
            "announce this Node object's InternalIPs and pod CIDRs (name from --name or NODE_NAME), and re-announce when they change",
        },
        'node-poll-ms': {
          type: 'number',
          describe: `with --routes-from-node, re-read the Node this often (default ${DEFAULTS.nodePollMs})`,
        },
        kubeconfig: {
          type: 'string',
          describe: 'kubeconfig for --routes-from-node (default: in-cluster, then $KUBECONFIG, ~/.kube/config)',
        },
        ...tunables,
      }),
    ),
    async (argv) => printOrRun(argv as RawOptions, 'client', () => parseClientConfig(argv as RawOptions), runClient),
  )
  .command(
    'status',
    "show the local daemon's peers and routes",
    withEnv({
      'admin-socket': { type: 'string', describe: 'admin socket of the daemon (default: server, else client)' },
      json: { type: 'boolean', default: false, describe: 'print JSON' },
      watch: { type: 'boolean', default: false, describe: 'redraw every --interval seconds until Ctrl-C' },
      interval: { type: 'number', default: 2, describe: 'seconds between refreshes with --watch' },
      count: { type: 'number', describe: 'with --watch, stop after this many refreshes' },
    }),
    async (argv) => statusCommand(argv as RawOptions),
  )
  .command(
    'diagnose',
    'check the link step by step and say what to fix (exit 1 when a check fails)',
    withEnv(
      withConfigFile(
        'diagnose',
        {
          side: {
            type: 'string',
            describe: 'node or control-plane (default: node when --server is given or only a client socket exists)',
          },
          server: { type: 'string', describe: 'node side: HOST:PORT of the server (default: ask the running client)' },
          'server-key': {
            type: 'string',
            describe: "node side: the server's public key (default: ask the running client)",
          },
          key: { type: 'string', describe: "node side: this node's private key file" },
          name: {
            type: 'string',
            describe: "node side: this node's name (default: the running client's, or NODE_NAME)",
          },
          route: { type: 'string', array: true, describe: 'node side: the CIDRs this node announces' },
          tun: { type: 'string', describe: `TUN interface name (default ${DEFAULTS.tun})` },
          'admin-socket': { type: 'string', describe: 'admin socket of the local daemon' },
          'kubelet-port': { type: 'number', describe: 'kubelet port checked on the node (default 10250)' },
          'timeout-ms': { type: 'number', describe: 'per-check network timeout (default 3000)' },
          json: { type: 'boolean', default: false, describe: 'print JSON' },
        },
        { ignoreUnknown: true },
      ),
    ),
    async (argv) => {
      process.exitCode = await diagnoseCommand(argv as RawOptions);
    },
  )
  .demandCommand(1, 'name a command: keygen, pubkey, server, client, status or diagnose')
  .fail((message, err) => fail(err ?? new UsageError(message)))
  .help()
  .parseAsync()
  .catch(fail);

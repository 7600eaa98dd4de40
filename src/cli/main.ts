#!/usr/bin/env node
import { readFileSync } from 'node:fs';
import yargs from 'yargs';
import { hideBin } from 'yargs/helpers';
import { decodeKey, encodeKey, generateSeed, keyPairFromSeed } from '../auth/index.js';
import { NodelinkError, userMessage } from '../errors.js';
import {
  CLIENT_SETTINGS,
  CONFIG_SETTING,
  DEFAULTS,
  SERVER_SETTINGS,
  parseClientConfig,
  parseServerConfig,
  type RawOptions,
} from './config.js';
import { tierUpEarly } from './daemon.js';
import { runServer } from './run-server.js';
import { runClient } from './run-client.js';
import { formatPrintConfig, readSettings } from './config-file.js';
import {
  settingValues,
  yargsOptions,
  type CommandLine,
  type Environment,
  type Settings,
  type SettingsSpec,
} from './settings.js';
import type { StartSettings } from './reload.js';
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

/**
 * Reads a command's settings (flag > NODELINK_* env > config file > default, see settings.ts)
 * from what yargs collected and this process's environment.
 */
function settingsOf(command: string, spec: SettingsSpec, argv: CommandLine, ignoreUnknownFileKeys = false): Settings {
  return readSettings({ command, spec, argv, env: process.env, ignoreUnknownFileKeys });
}

/**
 * Starts a daemon: settings resolved, then checked by its parseConfig; `--print-config` prints
 * both and exits instead. SIGHUP reads the settings again from the same command line and env.
 */
async function startDaemon<C extends object>(
  command: 'server' | 'client',
  spec: SettingsSpec,
  argv: CommandLine,
  parse: (raw: RawOptions, env: Environment) => C,
  run: (config: C, start: StartSettings) => Promise<void>,
): Promise<void> {
  // A copy: what SIGHUP reads again is the environment the daemon started with.
  const request = { command, spec, argv, env: { ...process.env } };
  const settings = readSettings(request);
  const config = parse(settingValues(settings), request.env);
  if (settings['print-config']?.value === true) {
    process.stdout.write(formatPrintConfig(command, settings, config));
    return;
  }
  tierUpEarly();
  await run(config, { settings, reread: () => readSettings(request) });
}

const STATUS_SETTINGS: SettingsSpec = {
  'admin-socket': {
    type: 'string',
    defaultText: 'server, else client',
    describe: 'admin socket of the daemon',
  },
  json: { type: 'boolean', default: false, describe: 'print JSON' },
  watch: { type: 'boolean', default: false, describe: 'redraw every --interval seconds until Ctrl-C' },
  interval: { type: 'number', default: DEFAULTS.statusIntervalS, describe: 'seconds between refreshes with --watch' },
  count: { type: 'number', describe: 'with --watch, stop after this many refreshes' },
};

/** diagnose reads the client's or the server's config file and uses the keys it knows. */
const DIAGNOSE_SETTINGS: SettingsSpec = {
  side: {
    type: 'string',
    describe:
      'node or control-plane (default: node when a node-side flag is given, else the role of the daemon on --admin-socket)',
  },
  server: { type: 'string', describe: 'node side: HOST:PORT of the server (default: ask the running client)' },
  'server-key': {
    type: 'string',
    describe: "node side: the server's public key (default: ask the running client)",
  },
  ca: { type: 'string', describe: "node side: the client's --ca, to trust the server by its CA" },
  'server-name': { type: 'string', describe: "node side: the client's --server-name, with --ca" },
  key: { type: 'string', describe: "node side: this node's private key file" },
  name: {
    type: 'string',
    describe: "node side: this node's name (default: the running client's, or NODE_NAME)",
  },
  route: { type: 'list', describe: 'node side: the CIDRs this node announces' },
  tun: { type: 'string', default: DEFAULTS.tun, describe: 'TUN interface name' },
  'admin-socket': { type: 'string', defaultText: 'server, else client', describe: 'admin socket of the local daemon' },
  'kubelet-port': { type: 'number', default: DEFAULTS.pathCheckPort, describe: 'kubelet port checked on the node' },
  'timeout-ms': { type: 'number', default: DEFAULTS.pathCheckTimeoutMs, describe: 'per-check network timeout' },
  json: { type: 'boolean', default: false, describe: 'print JSON' },
  ...CONFIG_SETTING,
};

function pubkeyCommand(): void {
  const text = readFileSync(0, 'utf8');
  const seed = decodeKey(text, 'the private key on stdin');
  process.stdout.write(`${encodeKey(keyPairFromSeed(seed).publicKey)}\n`);
}

await yargs(hideBin(process.argv))
  .scriptName('nodelink')
  // Numbers stay the text the user typed: settings.ts converts them, as it does env and file values.
  .parserConfiguration({ 'parse-numbers': false })
  .strict()
  .command('keygen', 'print a new private key (base64 Ed25519 seed)', {}, async () => {
    process.stdout.write(`${encodeKey(generateSeed())}\n`);
  })
  .command('pubkey', 'read a private key on stdin, print its public key', {}, async () => pubkeyCommand())
  .command('server', 'run the control-plane side', yargsOptions(SERVER_SETTINGS), async (argv) =>
    startDaemon('server', SERVER_SETTINGS, argv, parseServerConfig, runServer),
  )
  .command('client', 'run the node side', yargsOptions(CLIENT_SETTINGS), async (argv) =>
    startDaemon('client', CLIENT_SETTINGS, argv, parseClientConfig, runClient),
  )
  .command('status', "show the local daemon's peers and routes", yargsOptions(STATUS_SETTINGS), async (argv) =>
    statusCommand(settingValues(settingsOf('status', STATUS_SETTINGS, argv))),
  )
  .command(
    'diagnose',
    'check the link step by step and say what to fix (exit 1 when a check fails)',
    yargsOptions(DIAGNOSE_SETTINGS),
    async (argv) => {
      process.exitCode = await diagnoseCommand(settingValues(settingsOf('diagnose', DIAGNOSE_SETTINGS, argv, true)));
    },
  )
  .demandCommand(1, 'name a command: keygen, pubkey, server, client, status or diagnose')
  .fail((message, err) => fail(err ?? new UsageError(message)))
  .help()
  .parseAsync()
  .catch(fail);

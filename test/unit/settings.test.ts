// Settings: where each value comes from (flag > NODELINK_* env > config file > default), the one
// coercion per type, the config file, --print-config and the SIGHUP reload of live settings.

import { expect } from 'chai';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { Writable } from 'node:stream';
import { pino } from 'pino';
import type { Logger } from '../../src/log.js';
import { runCli } from '../../scripts/cluster.js';
import {
  ConfigError,
  resolveSettings,
  settingValues,
  splitList,
  toBoolean,
  toList,
  toNumber,
  toText,
  yargsOptions,
  type SettingsSpec,
} from '../../src/cli/settings.js';
import { CLIENT_SETTINGS, DEFAULTS, SERVER_SETTINGS, list, parseServerConfig } from '../../src/cli/config.js';
import {
  effectiveConfig,
  formatPrintConfig,
  loadConfigFile,
  readSettings,
  redact,
  type SettingsRequest,
} from '../../src/cli/config-file.js';
import { liveSettings, restartNeeded, settingsReloader, type LiveSettings } from '../../src/cli/reload.js';

const SPEC: SettingsSpec = {
  mtu: { type: 'number', default: 65000, describe: 'TUN MTU' },
  name: { type: 'string', fallbackEnv: 'NODE_NAME', describe: 'node name' },
  forwarding: { type: 'boolean', default: true, describe: 'forward' },
  route: { type: 'list', describe: 'routes' },
};
const FILE = { path: '/etc/nodelink/client.yaml', values: { mtu: 1400, name: 'from-file', forwarding: 'off' } };

/** A logger whose JSON lines the test can read. */
function capturingLogger(): { log: Logger; lines: () => Array<Record<string, unknown>> } {
  const chunks: string[] = [];
  const sink = new Writable({
    write(chunk: Buffer, _encoding, done) {
      chunks.push(chunk.toString());
      done();
    },
  });
  const log: Logger = pino({ level: 'info' }, sink);
  const lines = () =>
    chunks
      .join('')
      .split('\n')
      .filter((line) => line.length > 0)
      .map((line) => JSON.parse(line) as Record<string, unknown>);
  return { log, lines };
}

describe('settings', function () {
  let dir = '';
  before(() => {
    dir = mkdtempSync(path.join(os.tmpdir(), 'nodelink-settings-'));
  });
  after(() => rmSync(dir, { recursive: true, force: true }));

  describe('precedence: flag > environment > config file > default', function () {
    it('a flag wins over the environment, the file and the default', function () {
      const settings = resolveSettings(SPEC, { argv: { mtu: '1500' }, env: { NODELINK_MTU: '1450' }, file: FILE });
      expect(settings['mtu']).to.deep.equal({ value: 1500, source: 'flag' });
      expect(resolveSettings(SPEC, { argv: { mtu: '1500' }, env: {} })['mtu']).to.deep.equal({
        value: 1500,
        source: 'flag',
      });
    });

    it('the environment wins over the file and the default', function () {
      const settings = resolveSettings(SPEC, { argv: {}, env: { NODELINK_MTU: '1450' }, file: FILE });
      expect(settings['mtu']).to.deep.equal({ value: 1450, source: 'env', from: 'NODELINK_MTU' });
      expect(resolveSettings(SPEC, { argv: {}, env: { NODELINK_FORWARDING: 'no' } })['forwarding']).to.deep.equal({
        value: false,
        source: 'env',
        from: 'NODELINK_FORWARDING',
      });
    });

    it('the file wins over the default; an empty variable or a null file value sets nothing', function () {
      const settings = resolveSettings(SPEC, { argv: {}, env: { NODELINK_MTU: '' }, file: FILE });
      expect(settings['mtu']).to.deep.equal({ value: 1400, source: 'file', from: FILE.path });
      expect(settings['forwarding']).to.deep.equal({ value: false, source: 'file', from: FILE.path });
      const unset = resolveSettings(SPEC, { argv: {}, env: {}, file: { path: 'f', values: { mtu: null } } });
      expect(unset['mtu']).to.deep.equal({ value: 65000, source: 'default' });
      expect(unset['route']).to.deep.equal({ value: undefined, source: 'default' });
    });

    it('a fallback variable (NODE_NAME for --name) comes after the file and before the default', function () {
      const env = { NODE_NAME: 'node-7' };
      expect(resolveSettings(SPEC, { argv: {}, env, file: FILE })['name']!.value).to.equal('from-file');
      expect(resolveSettings(SPEC, { argv: {}, env })['name']).to.deep.equal({
        value: 'node-7',
        source: 'env',
        from: 'NODE_NAME',
      });
      expect(resolveSettings(SPEC, { argv: {}, env: { ...env, NODELINK_NAME: 'n' } })['name']!.value).to.equal('n');
    });

    it('a flag given twice: the last one wins, a list keeps them all', function () {
      const settings = resolveSettings(SPEC, {
        argv: { mtu: ['1400', '1500'], route: ['198.19.0.11/32', '198.19.1.0/24,198.19.2.0/24'] },
        env: {},
      });
      expect(settings['mtu']!.value).to.equal(1500);
      expect(settings['route']!.value).to.deep.equal(['198.19.0.11/32', '198.19.1.0/24', '198.19.2.0/24']);
    });

    it('a value-less flag that is not a boolean is refused', function () {
      expect(() => resolveSettings(SPEC, { argv: { mtu: true }, env: {} })).to.throw(
        ConfigError,
        /^--mtu needs a value$/,
      );
      expect(resolveSettings(SPEC, { argv: { forwarding: true }, env: {} })['forwarding']!.value).to.equal(true);
    });
  });

  describe('coercion: one function per type', function () {
    it('booleans: true/false, 1/0, yes/no, on/off in any case, and nothing else', function () {
      for (const text of ['true', 'TRUE', '1', 'yes', 'Yes', 'on', 'ON']) expect(toBoolean(text, '--x')).to.equal(true);
      for (const text of ['false', 'False', '0', 'no', 'NO', 'off', 'Off'])
        expect(toBoolean(text, '--x')).to.equal(false);
      expect(toBoolean(true, '--x')).to.equal(true);
      expect(toBoolean(0, '--x')).to.equal(false);
      for (const bad of ['maybe', '', 'yes please', 2, ['true'], null]) {
        expect(() => toBoolean(bad, '--x'), String(bad)).to.throw(
          ConfigError,
          /^--x must be true or false \(or 1\/0, yes\/no, on\/off, in any case\), got /,
        );
      }
    });

    it('"maybe" is refused from the environment and from the file alike, naming the flag and its source', function () {
      const fromEnv = () => resolveSettings(CLIENT_SETTINGS, { argv: {}, env: { NODELINK_FORWARDING: 'maybe' } });
      const file = { path: path.join(dir, 'client.yaml'), values: { forwarding: 'maybe' } };
      const fromFile = () => resolveSettings(CLIENT_SETTINGS, { argv: {}, env: {}, file });
      const accepted = 'must be true or false (or 1/0, yes/no, on/off, in any case), got "maybe"';
      expect(fromEnv).to.throw(ConfigError, `--forwarding (from NODELINK_FORWARDING) ${accepted}`);
      expect(fromFile).to.throw(ConfigError, `--forwarding (from --config ${file.path}) ${accepted}`);
      // The same words either way, and the same answer for a value both accept.
      const message = (run: () => unknown): string => {
        try {
          run();
          return '';
        } catch (err) {
          return (err as Error).message.replace(/ \(from [^)]*\)/, '');
        }
      };
      expect(message(fromEnv)).to.equal(message(fromFile)).and.to.equal(`--forwarding ${accepted}`);
      const off = { argv: {}, env: { NODELINK_FORWARDING: 'Off' } };
      expect(resolveSettings(CLIENT_SETTINGS, off)['forwarding']!.value).to.equal(false);
      const offInFile = { argv: {}, env: {}, file: { path: 'f', values: { forwarding: 'Off' } } };
      expect(resolveSettings(CLIENT_SETTINGS, offInFile)['forwarding']!.value).to.equal(false);
    });

    it('numbers: numeric text or a number; blank, words and lists are refused', function () {
      expect(toNumber('1400', '--mtu')).to.equal(1400);
      expect(toNumber(' 7 ', '--mtu')).to.equal(7);
      expect(toNumber(0.2, '--interval')).to.equal(0.2);
      for (const bad of ['abc', '', ' ', true, [1], null]) {
        expect(() => toNumber(bad, '--mtu'), String(bad)).to.throw(ConfigError, /^--mtu must be a number, got /);
      }
      expect(() => resolveSettings(SPEC, { argv: {}, env: { NODELINK_MTU: 'big' } })).to.throw(
        '--mtu (from NODELINK_MTU) must be a number, got "big"',
      );
    });

    it('text: one value; a list in the file is refused rather than joined', function () {
      expect(toText('node-a', '--name')).to.equal('node-a');
      expect(toText(123, '--name')).to.equal('123');
      expect(() => toText(['a', 'b'], '--name')).to.throw(ConfigError, /^--name must be one value, got a list/);
      const file = { path: 'f.yaml', values: { name: ['a', 'b'] } };
      expect(() => resolveSettings(SPEC, { argv: {}, env: {}, file })).to.throw(/^--name \(from --config f\.yaml\)/);
    });

    it('lists: one splitter for commas and spaces, used by flags, env, file and parseConfig', function () {
      expect(splitList('a,b c,, d ')).to.deep.equal(['a', 'b', 'c', 'd']);
      expect(toList(['a,b', 'c'], '--route')).to.deep.equal(['a', 'b', 'c']);
      expect(toList('a', '--route')).to.deep.equal(['a']);
      expect(() => toList([{ a: 1 }], '--route')).to.throw(/^--route must be one value/);
      const routes = ['198.19.0.11/32', '198.19.1.0/24'];
      const sources = [
        { argv: { route: ['198.19.0.11/32,198.19.1.0/24'] }, env: {} },
        { argv: {}, env: { NODELINK_ROUTE: '198.19.0.11/32, 198.19.1.0/24' } },
        { argv: {}, env: {}, file: { path: 'f', values: { route: routes } } },
        { argv: {}, env: {}, file: { path: 'f', values: { route: '198.19.0.11/32 198.19.1.0/24' } } },
      ];
      for (const input of sources) expect(resolveSettings(SPEC, input)['route']!.value).to.deep.equal(routes);
      expect(list({ route: '198.19.0.11/32 198.19.1.0/24' }, 'route')).to.deep.equal(routes);
    });
  });

  describe('config file', function () {
    it('reads YAML and JSON with flag or camelCase keys; names the file and the problem otherwise', function () {
      const yaml = path.join(dir, 'server.yaml');
      writeFileSync(
        yaml,
        'listen: 198.18.0.2:8443\ntunnelCidr: [198.18.255.0/24, "fd00:18:ff::/64"]\nlog-level: debug\n',
      );
      expect(loadConfigFile(yaml)).to.deep.equal({
        listen: '198.18.0.2:8443',
        'tunnel-cidr': ['198.18.255.0/24', 'fd00:18:ff::/64'],
        'log-level': 'debug',
      });
      const json = path.join(dir, 'client.json');
      writeFileSync(json, '{"server": "cp:8443", "keepaliveMs": 500}');
      expect(loadConfigFile(json)).to.deep.equal({ server: 'cp:8443', 'keepalive-ms': 500 });
      writeFileSync(json, '{"server": ');
      expect(() => loadConfigFile(json)).to.throw(/client\.json is not valid JSON/);
      writeFileSync(yaml, '- a\n- b\n');
      expect(() => loadConfigFile(yaml)).to.throw(/must hold a mapping of flag names/);
      expect(() => loadConfigFile(path.join(dir, 'missing.yaml'))).to.throw(/cannot be read \(ENOENT\)/);
    });

    it('comes from --config or NODELINK_CONFIG; a key the command lacks is refused unless ignored', function () {
      const file = path.join(dir, 'typo.yaml');
      writeFileSync(file, 'mtu: 1400\nmtuu: 1300\n');
      const request = { command: 'client', spec: CLIENT_SETTINGS, argv: {}, env: { NODELINK_CONFIG: file } };
      expect(() => readSettings(request)).to.throw(
        ConfigError,
        `--config ${file}: "mtuu" is not a setting of nodelink client (see nodelink client --help)`,
      );
      const settings = readSettings({ ...request, ignoreUnknownFileKeys: true });
      expect(settings['mtu']).to.deep.equal({ value: 1400, source: 'file', from: file });
      expect(settings['config']).to.deep.equal({ value: file, source: 'env', from: 'NODELINK_CONFIG' });
      expect(readSettings({ ...request, argv: { config: '' } })['mtu']!.source).to.equal('default');
    });
  });

  describe('--print-config', function () {
    it('shows every setting with its value and source, then the effective config, secrets redacted', function () {
      const file = { path: '/etc/nodelink/server.yaml', values: { 'keepalive-ms': 700, metrics: '0.0.0.0:9477' } };
      const settings = resolveSettings(SERVER_SETTINGS, {
        argv: { listen: '198.18.0.2:8443', key: '/k', peers: '/p', 'tunnel-cidr': ['198.18.255.0/24'] },
        env: { NODELINK_LOG_LEVEL: 'debug' },
        file,
      });
      const printed = JSON.parse(formatPrintConfig('server', settings, parseServerConfig(settingValues(settings)))) as {
        command: string;
        settings: Record<string, unknown>;
        config: Record<string, unknown>;
      };
      expect(printed.command).to.equal('server');
      expect(printed.settings).to.deep.include({
        listen: { value: '198.18.0.2:8443', source: 'flag' },
        'log-level': { value: 'debug', source: 'env', from: 'NODELINK_LOG_LEVEL' },
        'keepalive-ms': { value: 700, source: 'file', from: file.path },
        mtu: { value: DEFAULTS.mtu, source: 'default' },
        cert: { value: null, source: 'default' },
      });
      expect(Object.keys(printed.settings)).to.deep.equal(Object.keys(SERVER_SETTINGS));
      expect(printed.config).to.include({ logLevel: 'debug', keepaliveIntervalMs: 700, metrics: '0.0.0.0:9477' });
    });

    it('prints the effective config as plain JSON with secrets redacted', function () {
      const config = parseServerConfig({
        listen: '198.18.0.2:8443',
        key: '/etc/nodelink/server.key',
        peers: '/p.json',
        'tunnel-cidr': ['198.18.255.0/24'],
        metrics: '0.0.0.0:9477',
      });
      const shown = effectiveConfig(config);
      expect(shown).to.include({
        listen: '198.18.0.2:8443',
        keyFile: '/etc/nodelink/server.key',
        metrics: '0.0.0.0:9477',
        pathCheckIntervalMs: 10_000,
      });
      expect(shown['tunnelCidrs']).to.deep.equal(['198.18.255.0/24']);
      expect(shown['tunnelAddresses']).to.deep.equal(['198.18.255.1/32']);
      expect(redact({ token: 'abc', nested: { privateKey: 'x', name: 'n' }, password: '' })).to.deep.equal({
        token: '<redacted>',
        nested: { privateKey: '<redacted>', name: 'n' },
        password: '',
      });
    });

    it('through the real CLI: flags, NODELINK_* env, the file and defaults, each named', async function () {
      this.timeout(20_000);
      const file = path.join(dir, 'client.yaml');
      writeFileSync(file, 'server: cp.example:8443\nkeepaliveMs: 700\nforwarding: "off"\nmtu: 1300\n');
      const args = ['client', '--config', file, '--server-key', 'k', '--key', '/k', '--name', 'node-a'];
      const previous = process.env['NODELINK_LOG_LEVEL'];
      process.env['NODELINK_LOG_LEVEL'] = 'warn';
      let result: Awaited<ReturnType<typeof runCli>>;
      try {
        result = await runCli([...args, '--route', '198.19.0.11/32', '--mtu', '1400', '--print-config']);
      } finally {
        if (previous === undefined) delete process.env['NODELINK_LOG_LEVEL'];
        else process.env['NODELINK_LOG_LEVEL'] = previous;
      }
      expect(result.code, result.stderr).to.equal(0);
      const printed = JSON.parse(result.stdout) as {
        settings: Record<string, unknown>;
        config: Record<string, unknown>;
      };
      expect(printed.settings).to.deep.include({
        mtu: { value: 1400, source: 'flag' },
        'log-level': { value: 'warn', source: 'env', from: 'NODELINK_LOG_LEVEL' },
        'keepalive-ms': { value: 700, source: 'file', from: file },
        forwarding: { value: false, source: 'file', from: file },
        'dead-after-ms': { value: DEFAULTS.deadAfterMs, source: 'default' },
      });
      expect(printed.config).to.include({
        mtu: 1400,
        logLevel: 'warn',
        enableForwarding: false,
        server: 'cp.example:8443',
      });
    });

    it('through the real CLI: a boolean flag takes the same words, a bad number is refused as typed', async function () {
      this.timeout(20_000);
      const base = ['client', '--server', 'cp:8443', '--server-key', 'k', '--key', '/k', '--name', 'n'];
      const routes = ['--route', '198.19.0.11/32'];
      // yargs' own boolean parser took "--routes-from-node=yes" as false, and then wanted --route.
      const yes = await runCli([...base, '--routes-from-node=yes', '--no-forwarding', '--print-config']);
      expect(yes.code, yes.stderr).to.equal(0);
      const { config } = JSON.parse(yes.stdout) as { config: { routesFromNode: boolean; enableForwarding: boolean } };
      expect(config).to.include({ routesFromNode: true, enableForwarding: false });
      const maybe = await runCli([...base, ...routes, '--forwarding=maybe']);
      expect(maybe.code).to.equal(1);
      expect(maybe.stderr).to.equal(
        'nodelink: --forwarding must be true or false (or 1/0, yes/no, on/off, in any case), got "maybe"\n',
      );
      const mtu = await runCli([...base, ...routes, '--mtu', 'big']);
      expect(mtu.stderr).to.equal('nodelink: --mtu must be a number, got "big"\n');
    });
  });

  describe('--help', function () {
    it('takes every default from the settings, and lists every log level', function () {
      for (const spec of [SERVER_SETTINGS, CLIENT_SETTINGS]) {
        const options = yargsOptions(spec);
        for (const [flag, setting] of Object.entries(spec)) {
          if (setting.default === undefined) continue;
          expect(options[flag]!.describe, flag).to.contain(`(default ${String(setting.default)})`);
        }
      }
      expect(yargsOptions(CLIENT_SETTINGS)['log-level']!.describe).to.contain('fatal');
      expect(yargsOptions(SERVER_SETTINGS)['keepalive-ms']!.describe).to.contain(`${DEFAULTS.keepaliveIntervalMs}`);
    });
  });

  describe('SIGHUP: settings resolved again from the same command line and environment', function () {
    const write = (file: string, text: string): void => writeFileSync(file, text);

    /**
     * The reloader the daemon builds at start for a command line with `--config file` and
     * `argv`, and `env`: it starts from the settings these resolve to now (returned too), and
     * records what each reload applies and logs.
     */
    function reloaderFor(
      role: 'server' | 'client',
      file: string,
      given: { argv: SettingsRequest['argv']; env: SettingsRequest['env'] },
    ): {
      settings: ReturnType<typeof readSettings>;
      reload: ReturnType<typeof settingsReloader>;
      applied: LiveSettings[];
      lines: () => Array<Record<string, unknown>>;
    } {
      const request: SettingsRequest = {
        command: role,
        spec: role === 'server' ? SERVER_SETTINGS : CLIENT_SETTINGS,
        argv: { config: file, ...given.argv },
        env: given.env,
      };
      const settings = readSettings(request);
      const applied: LiveSettings[] = [];
      const { log, lines } = capturingLogger();
      const reload = settingsReloader({
        role,
        configFile: file,
        start: { settings, reread: () => readSettings(request) },
        log,
        apply: (next) => applied.push(next),
      });
      return { settings, reload, applied, lines };
    }

    it('the file changes what no flag or variable set; flags and env still win; other changes need a restart', function () {
      const file = path.join(dir, 'server-reload.yaml');
      write(file, 'listen: 198.18.0.2:8443\nlog-level: info\npath-check-interval-ms: 2000\npath-check-port: 9000\n');
      const { settings, reload, applied, lines } = reloaderFor('server', file, {
        argv: { key: '/k', peers: '/p', 'tunnel-cidr': ['198.18.255.0/24'], 'log-level': 'warn' },
        env: { NODELINK_PATH_CHECK_PORT: '8080' },
      });
      expect(liveSettings('server', settings)).to.deep.equal({
        logLevel: 'warn',
        pathCheckIntervalMs: 2000,
        pathCheckTimeoutMs: DEFAULTS.pathCheckTimeoutMs,
        pathCheckPort: 8080,
      });
      write(
        file,
        'listen: 198.18.0.2:8443\nlog-level: debug\npath-check-interval-ms: 5000\npath-check-port: 9100\nmtu: 1400\n',
      );
      void reload();
      expect(applied).to.deep.equal([
        {
          logLevel: 'warn',
          pathCheckIntervalMs: 5000,
          pathCheckTimeoutMs: DEFAULTS.pathCheckTimeoutMs,
          pathCheckPort: 8080,
        },
      ]);
      const [reloaded, restart] = lines();
      expect(reloaded).to.deep.include({ msg: 'settings reloaded', changed: { pathCheckIntervalMs: 5000 } });
      expect(restart).to.deep.include({ settings: ['mtu'] });
      expect(restart!['msg']).to.match(/take effect only after a restart/);
    });

    it('a bad value in the file is refused naming the setting and its source; nothing is applied', function () {
      const file = path.join(dir, 'client-reload.yaml');
      write(file, 'log-level: info\n');
      const { reload, applied } = reloaderFor('client', file, { argv: {}, env: {} });
      write(file, 'log-level: loud\n');
      expect(() => reload()).to.throw(/--log-level must be one of trace, debug, info, warn, error, fatal, silent/);
      write(file, 'forwarding: maybe\n');
      expect(() => reload()).to.throw(`--forwarding (from --config ${file}) must be true or false`);
      write(file, 'log-level: debug\n');
      void reload();
      expect(applied).to.deep.equal([{ logLevel: 'debug' }]);
    });

    it('names only settings whose resolved value changed as needing a restart', function () {
      const before = resolveSettings(SPEC, { argv: { mtu: '1500' }, env: {}, file: FILE });
      const after = resolveSettings(SPEC, { argv: { mtu: '1500' }, env: {}, file: { ...FILE, values: { mtu: 1300 } } });
      // mtu is held by its flag; name and forwarding fell back from the file to their defaults.
      expect(restartNeeded(before, after)).to.deep.equal(['forwarding', 'name']);
    });
  });
});

import { readFileSync } from 'node:fs';
import { parse as parseYaml, YAMLError } from 'yaml';
import { whereJsonFails } from '../auth/index.js';
import { formatEndpoint } from '../routing/index.js';
import {
  ConfigError,
  resolveSettings,
  unknownFileKeys,
  type CommandLine,
  type Environment,
  type Settings,
  type SettingsSpec,
} from './settings.js';

/**
 * `--config FILE` (or NODELINK_CONFIG): the same settings as the flags, in JSON or YAML, keyed
 * by flag name (`tunnel-cidr`, or camelCase `tunnelCidr`). The file is one source of
 * settings.ts's resolver, below the command line and the environment. Lists are YAML/JSON
 * arrays or comma/space-separated strings.
 *
 *   # /etc/nodelink/client.yaml
 *   server: cp.example.com:8443
 *   server-key: kKspxnER4aCPakKQcNtTIz2GuRFC5mIQ7OgGUC31wlM=
 *   key: /etc/nodelink/node.key
 *   name: node-a
 *   route: [10.240.0.4/32, 10.244.1.0/24]
 *   metrics: 127.0.0.1:9476
 */

export type FileValues = Record<string, unknown>;

/** Settings that are never printed: they would be secrets if anyone ever put one inline. */
const SECRET_KEY = /secret|password|passphrase|token|private|credential/i;

function kebab(key: string): string {
  return key.replace(/[A-Z]/g, (c) => `-${c.toLowerCase()}`).replace(/_/g, '-');
}

/** Reads and parses a config file; keys are normalized to flag names. */
export function loadConfigFile(path: string): FileValues {
  let text: string;
  try {
    text = readFileSync(path, 'utf8');
  } catch (err) {
    throw new ConfigError(
      `--config ${path} cannot be read (${(err as NodeJS.ErrnoException).code ?? (err as Error).message}): fix the path`,
    );
  }
  let data: unknown;
  const json = /\.json$/i.test(path);
  try {
    // YAML 1.2 is a superset of JSON, so one parser reads both; a .json file gets JSON.parse's
    // stricter rules. YAML warnings are off: they print the offending line to stderr.
    data = json ? JSON.parse(text) : parseYaml(text, { logLevel: 'error' });
  } catch (err) {
    // Never the parser's message: both quote the file, which may be a secret passed by mistake.
    const where = json
      ? whereJsonFails(text)
      : err instanceof YAMLError && err.linePos
        ? `line ${err.linePos[0].line}, column ${err.linePos[0].col}`
        : 'no position given';
    throw new ConfigError(
      `--config ${path} is not valid ${json ? 'JSON' : 'YAML or JSON'} (${where}; content not shown): fix the file`,
    );
  }
  if (data === null || data === undefined) return {};
  if (typeof data !== 'object' || Array.isArray(data))
    throw new ConfigError(`--config ${path} must hold a mapping of flag names to values, e.g. "log-level: debug"`);
  const values: FileValues = {};
  for (const [key, value] of Object.entries(data as Record<string, unknown>)) {
    const flag = kebab(key);
    if (value !== null && typeof value === 'object' && !Array.isArray(value)) {
      throw new ConfigError(`--config ${path}: "${key}" must be a value or a list, not a mapping`);
    }
    values[flag] = value;
  }
  return values;
}

/** What a command's settings are read from; kept so that SIGHUP can read them again. */
export interface SettingsRequest {
  readonly command: string;
  readonly spec: SettingsSpec;
  readonly argv: CommandLine;
  readonly env: Environment;
  /** diagnose reads the client's or the server's file and uses the keys it knows. */
  readonly ignoreUnknownFileKeys?: boolean;
}

/**
 * The command's settings from its command line, environment and config file (`--config`, or
 * NODELINK_CONFIG). A file that cannot be read, or names a key that is not a setting of the
 * command (a typo would otherwise be silently ignored), is refused with one line.
 */
export function readSettings(request: SettingsRequest): Settings {
  const { spec, argv, env } = request;
  const path = spec['config'] ? resolveSettings({ config: spec['config'] }, { argv, env })['config']!.value : undefined;
  const file = typeof path === 'string' && path !== '' ? { path, values: loadConfigFile(path) } : undefined;
  const unknown = file && !request.ignoreUnknownFileKeys ? unknownFileKeys(spec, file) : [];
  if (unknown.length > 0) {
    const names = unknown.map((key) => `"${key}"`).join(', ');
    throw new ConfigError(
      `--config ${file!.path}: ${names} ${unknown.length === 1 ? 'is not a setting' : 'are not settings'} of nodelink ${request.command} (see nodelink ${request.command} --help)`,
    );
  }
  return resolveSettings(spec, { argv, env, file });
}

// ---- printing the effective config ------------------------------------------------------------

/** A config object as plain JSON: prefixes and endpoints as text, secrets redacted. */
export function effectiveConfig(config: object): Record<string, unknown> {
  return redact(plain(config)) as Record<string, unknown>;
}

function plain(value: unknown): unknown {
  if (value === null || value === undefined) return value ?? null;
  if (Array.isArray(value)) return value.map(plain);
  if (typeof value === 'object') {
    const record = value as Record<string, unknown>;
    const keys = Object.keys(record);
    if (keys.length === 2 && 'host' in record && 'port' in record) {
      const host = String(record['host']);
      return formatEndpoint({ host, port: String(record['port']) });
    }
    // Prefix and friends: anything with its own toString is shown as text.
    if (
      Object.getPrototypeOf(value) !== Object.prototype &&
      typeof (value as { toString?: unknown }).toString === 'function' &&
      (value as { toString: () => string }).toString !== Object.prototype.toString
    ) {
      return String(value);
    }
    return Object.fromEntries(keys.map((key) => [key, plain(record[key])]));
  }
  return value;
}

export function redact(value: unknown, key = ''): unknown {
  if (SECRET_KEY.test(key) && value !== null && value !== undefined && value !== '') return '<redacted>';
  if (Array.isArray(value)) return value.map((item) => redact(item, key));
  if (value !== null && typeof value === 'object') {
    return Object.fromEntries(Object.entries(value as Record<string, unknown>).map(([k, v]) => [k, redact(v, k)]));
  }
  return value;
}

/**
 * For --print-config, one JSON document: every setting with its value and source (`flag`,
 * `env`, `file` or `default`, and `from` naming the variable or file), then the effective
 * config the daemon would run with. Secrets are redacted in both.
 */
export function formatPrintConfig(command: string, settings: Settings, config: object): string {
  // One line per setting, so the list reads as a table; still one JSON document.
  const lines = Object.entries(settings).map(([flag, { value, source, from }]) => {
    const shown = { value: redact(value ?? null, flag), source, ...(from !== undefined ? { from } : {}) };
    return `    ${JSON.stringify(flag)}: ${JSON.stringify(shown)}`;
  });
  const effective = JSON.stringify(effectiveConfig(config), null, 2).replace(/\n/g, '\n  ');
  return `{\n  "command": ${JSON.stringify(command)},\n  "settings": {\n${lines.join(',\n')}\n  },\n  "config": ${effective}\n}\n`;
}

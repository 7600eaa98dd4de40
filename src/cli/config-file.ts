import { readFileSync } from 'node:fs';
import { parse as parseYaml } from 'yaml';
import { ConfigError, type RawOptions } from './config.js';

/**
 * `--config FILE` (or NODELINK_CONFIG): the same settings as the flags, in JSON or YAML, keyed
 * by flag name (`tunnel-cidr`, or camelCase `tunnelCidr`). Precedence, highest first: command
 * line, environment (NODELINK_<FLAG>), config file, built-in default. Lists are YAML/JSON
 * arrays or comma/space-separated strings.
 *
 *   # /etc/nodelink/client.yaml
 *   server: cp.example.com:8443
 *   server-key: kKspxnER4aCPakKQcNtTIz2GuRFC5mIQ7OgGUC31wlM=
 *   key: /etc/nodelink/node.key
 *   name: node-a
 *   route: [10.240.0.4/32, 10.244.1.0/24]
 *   metrics: 0.0.0.0:9472
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
  try {
    // YAML 1.2 is a superset of JSON, so one parser reads both; a .json file gets JSON.parse's
    // stricter errors.
    data = /\.json$/i.test(path) ? JSON.parse(text) : parseYaml(text);
  } catch (err) {
    const first = ((err as Error).message.split('\n')[0] ?? '').trim();
    throw new ConfigError(`--config ${path} is not valid ${/\.json$/i.test(path) ? 'JSON' : 'YAML or JSON'}: ${first}`);
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

/** The config file named on the command line (`--config F`, `--config=F`) or by NODELINK_CONFIG. */
function configPathFrom(argv: readonly string[], env: NodeJS.ProcessEnv): string | undefined {
  for (let i = 0; i < argv.length; i++) {
    const arg = argv[i]!;
    if (arg === '--config' && i + 1 < argv.length) return argv[i + 1];
    if (arg.startsWith('--config=')) return arg.slice('--config='.length);
  }
  return env['NODELINK_CONFIG'] || undefined;
}

/** Whether a flag was given on the command line (so neither env nor file may change it). */
export function givenOnCommandLine(flag: string, argv: readonly string[]): boolean {
  return argv.some((arg) => arg === `--${flag}` || arg.startsWith(`--${flag}=`) || arg === `--no-${flag}`);
}

export function envName(flag: string): string {
  return `NODELINK_${flag.toUpperCase().replace(/-/g, '_')}`;
}

// ---- used by main.ts while it declares the commands --------------------------------------------

let loaded: { path: string; values: FileValues } | { path: string; error: ConfigError } | undefined;

function current(): typeof loaded {
  if (loaded) return loaded;
  const path = configPathFrom(process.argv.slice(2), process.env);
  if (!path) return undefined;
  try {
    loaded = { path, values: loadConfigFile(path) };
  } catch (err) {
    loaded = { path, error: err instanceof ConfigError ? err : new ConfigError(String(err)) };
  }
  return loaded;
}

export interface Spec {
  type: 'string' | 'number' | 'boolean';
  array?: boolean;
  default?: unknown;
  describe: string;
}

/**
 * Adds `--config` to a command's options and makes the file's values the defaults of its flags,
 * below the environment (main.ts's withEnv, applied after this) and the command line. A file
 * that cannot be read, or names a flag this command does not have, fails when the command runs,
 * as one line (`ignoreUnknown`: diagnose reads the client's or server's file and uses what it knows).
 */
export function withConfigFile<T extends Record<string, Spec>>(
  command: string,
  options: T,
  opts: { ignoreUnknown?: boolean } = {},
): T {
  const file = current();
  const out: Record<string, Spec> = {};
  for (const [flag, spec] of Object.entries(options)) {
    const value = file && 'values' in file ? file.values[flag] : undefined;
    if (value === undefined || value === null) {
      out[flag] = spec;
    } else if (spec.array) {
      const items = Array.isArray(value)
        ? value.map(String)
        : String(value)
            .split(/[\s,]+/)
            .filter((item) => item.length > 0);
      out[flag] = { ...spec, default: items };
    } else if (spec.type === 'boolean') {
      out[flag] = { ...spec, default: value === true || /^(1|true|yes|on)$/i.test(String(value)) };
    } else {
      out[flag] = { ...spec, default: Array.isArray(value) ? value.map(String).join(',') : String(value) };
    }
  }
  out['config'] = {
    type: 'string',
    describe: 'config file (JSON or YAML) with any of these flags as keys; flags and NODELINK_* env win over it',
  };
  known.set(command, { flags: new Set(Object.keys(options)), ignoreUnknown: opts.ignoreUnknown === true });
  return out as unknown as T;
}

const known = new Map<string, { flags: Set<string>; ignoreUnknown: boolean }>();

/**
 * Throws the config file's problem for this command, if it has one: unreadable, not YAML/JSON,
 * or a key that is not one of the command's flags (a typo would otherwise be silently ignored).
 */
export function assertConfigFile(command: string): void {
  const state = current();
  if (!state) return;
  if ('error' in state) throw state.error;
  const spec = known.get(command);
  if (!spec || spec.ignoreUnknown) return;
  const unknown = Object.keys(state.values).filter((key) => key !== 'config' && !spec.flags.has(key));
  if (unknown.length > 0) {
    throw new ConfigError(
      `--config ${state.path}: ${unknown.map((key) => `"${key}"`).join(', ')} ${unknown.length === 1 ? 'is not a setting' : 'are not settings'} of nodelink ${command} (see nodelink ${command} --help)`,
    );
  }
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
      return `${host.includes(':') ? `[${host}]` : host}:${String(record['port'])}`;
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

/** For --print-config: the effective config, one JSON document, with where it came from. */
export function formatEffectiveConfig(command: string, config: object): string {
  return `${JSON.stringify({ command, ...effectiveConfig(config) }, null, 2)}\n`;
}

/** `--print-config`: print the effective config (after flags, env, file and defaults) instead of running. */
export async function printOrRun<C extends object>(
  raw: RawOptions,
  command: string,
  parse: () => C,
  run: (config: C) => Promise<void>,
): Promise<void> {
  assertConfigFile(command);
  const config = parse();
  if (raw['print-config'] === true) {
    process.stdout.write(formatEffectiveConfig(command, config));
    return;
  }
  await run(config);
}

import { NodelinkError } from '../errors.js';

/**
 * Where every setting of a command comes from, decided in one place. Highest first:
 *
 *   1. the command line          --log-level debug
 *   2. the environment           NODELINK_LOG_LEVEL=debug   (a DaemonSet sets env, not args)
 *   3. the config file           log-level: debug           (--config FILE or NODELINK_CONFIG)
 *   4. the built-in default      DEFAULTS in config.ts, also what --help shows
 *
 * `resolveSettings` takes all of its input as arguments (the parsed command line, the
 * environment, the file's values), so start-up, --print-config and a SIGHUP reload run the same
 * code over the same inputs. Each value is turned into its type by the one coercion for that
 * type below, which also serves parseConfig; range and format checks stay in parseConfig
 * (config.ts), which gets the resolved values.
 */

/** A bad flag, environment or config-file value. The message names the setting and what a good one looks like. */
export class ConfigError extends NodelinkError {
  constructor(message: string) {
    super('config', message);
  }
}

export type SettingType = 'boolean' | 'number' | 'string' | 'list';
export type SettingValue = boolean | number | string | readonly string[];

export interface SettingSpec {
  readonly type: SettingType;
  /** The --help text, without the default: that is added from `default` or `defaultText`. */
  readonly describe: string;
  readonly default?: SettingValue;
  /** What --help says the default is when it is not one value ("in-cluster, then $KUBECONFIG"). */
  readonly defaultText?: string;
  /** A variable read after the config file and before the default (--name falls back to NODE_NAME). */
  readonly fallbackEnv?: string;
  /** false for --config itself: a config file cannot name another one. */
  readonly inFile?: false;
}

export type SettingsSpec = Readonly<Record<string, SettingSpec>>;

export type Source = 'flag' | 'env' | 'file' | 'default';

export interface Resolved {
  /** undefined: no source set it and it has no default. */
  readonly value: SettingValue | undefined;
  readonly source: Source;
  /** The environment variable or the config file the value came from. */
  readonly from?: string;
}

export type Settings = Readonly<Record<string, Resolved>>;

/** The parsed command line: flag name → what yargs collected (only flags that were given). */
export type CommandLine = Readonly<Record<string, unknown>>;
export type Environment = Readonly<Record<string, string | undefined>>;

/** A config file's values, keyed by flag name. */
export interface ConfigFile {
  readonly path: string;
  readonly values: Readonly<Record<string, unknown>>;
}

export interface SettingsInput {
  readonly argv: CommandLine;
  readonly env: Environment;
  readonly file?: ConfigFile;
}

export function envName(flag: string): string {
  return `NODELINK_${flag.toUpperCase().replace(/-/g, '_')}`;
}

/** Every setting of `spec` with its value and the source that set it. */
export function resolveSettings(spec: SettingsSpec, input: SettingsInput): Settings {
  const settings: Record<string, Resolved> = {};
  for (const [flag, setting] of Object.entries(spec)) settings[flag] = resolveOne(flag, setting, input);
  return settings;
}

function resolveOne(flag: string, setting: SettingSpec, { argv, env, file }: SettingsInput): Resolved {
  const given = argv[flag];
  if (given !== undefined) {
    // A flag given twice: the last one wins, unless the setting is a list.
    const value = Array.isArray(given) && setting.type !== 'list' ? given[given.length - 1] : given;
    return typed(flag, setting, value, { source: 'flag' });
  }
  const variable = envName(flag);
  const text = env[variable];
  if (text !== undefined && text !== '') return typed(flag, setting, text, { source: 'env', from: variable });
  const stored = setting.inFile === false ? undefined : file?.values[flag];
  if (stored !== undefined && stored !== null)
    return typed(flag, setting, stored, { source: 'file', from: file!.path });
  const fallback = setting.fallbackEnv ? env[setting.fallbackEnv] : undefined;
  if (fallback !== undefined && fallback !== '') {
    return typed(flag, setting, fallback, { source: 'env', from: setting.fallbackEnv });
  }
  return { value: setting.default, source: 'default' };
}

function typed(flag: string, setting: SettingSpec, raw: unknown, where: Omit<Resolved, 'value'>): Resolved {
  // yargs collects a flag without a value as `true` (it is given no types, see yargsOptions).
  if (raw === true && where.source === 'flag' && setting.type !== 'boolean')
    throw new ConfigError(`--${flag} needs a value`);
  return { value: coerce(setting.type, raw, settingName(flag, where)), ...where };
}

/** The flag and, unless it was typed on the command line, where it was set: for error messages. */
export function settingName(flag: string, where: Omit<Resolved, 'value'>): string {
  if (where.source === 'env') return `--${flag} (from ${where.from})`;
  if (where.source === 'file') return `--${flag} (from --config ${where.from})`;
  return `--${flag}`;
}

// ---- one coercion per type -----------------------------------------------------------------------
// Each takes what a source holds (command-line text, an environment string, a YAML/JSON value) and
// returns the typed value, or throws one line naming the setting and what it accepts.

export function coerce(type: SettingType, raw: unknown, name: string): SettingValue {
  switch (type) {
    case 'boolean':
      return toBoolean(raw, name);
    case 'number':
      return toNumber(raw, name);
    case 'string':
      return toText(raw, name);
    case 'list':
      return toList(raw, name);
  }
}

const TRUE = ['true', '1', 'yes', 'on'];
const FALSE = ['false', '0', 'no', 'off'];

/** true/false, 1/0, yes/no, on/off in any case; anything else is refused, never guessed. */
export function toBoolean(raw: unknown, name: string): boolean {
  if (typeof raw === 'boolean') return raw;
  const text = String(raw).trim().toLowerCase();
  if ((typeof raw === 'string' || typeof raw === 'number') && TRUE.includes(text)) return true;
  if ((typeof raw === 'string' || typeof raw === 'number') && FALSE.includes(text)) return false;
  throw new ConfigError(`${name} must be true or false (or 1/0, yes/no, on/off, in any case), got ${describeRaw(raw)}`);
}

export function toNumber(raw: unknown, name: string): number {
  const n = numberOrNaN(raw);
  if (!Number.isFinite(n)) throw new ConfigError(`${name} must be a number, got ${describeRaw(raw)}`);
  return n;
}

/** The number a value holds, NaN when it holds none (blank text is none, not zero). */
export function numberOrNaN(raw: unknown): number {
  if (typeof raw === 'number') return raw;
  return typeof raw === 'string' && raw.trim() !== '' ? Number(raw) : NaN;
}

export function toText(raw: unknown, name: string): string {
  if (typeof raw === 'string') return raw;
  if (typeof raw === 'number' || typeof raw === 'boolean') return String(raw);
  throw new ConfigError(`${name} must be one value, got ${describeRaw(raw)}`);
}

/** A list: repeated flags, a YAML/JSON array, or one text of items separated by commas or spaces. */
export function toList(raw: unknown, name: string): string[] {
  const items = Array.isArray(raw) ? (raw as unknown[]) : [raw];
  return items.flatMap((item) => splitList(toText(item, name)));
}

/** The one list splitter: "a,b", "a b" and "a, b" are the same two items. */
export function splitList(text: string): string[] {
  return text.split(/[\s,]+/).filter((item) => item.length > 0);
}

function describeRaw(raw: unknown): string {
  return Array.isArray(raw) ? `a list (${JSON.stringify(raw)})` : (JSON.stringify(raw) ?? String(raw));
}

// ---- what resolved settings are used for ----------------------------------------------------------

/** The values alone, as parseConfig takes them; unset settings are left out. */
export function settingValues(settings: Settings): Record<string, unknown> {
  const raw: Record<string, unknown> = {};
  for (const [flag, { value }] of Object.entries(settings)) if (value !== undefined) raw[flag] = value;
  return raw;
}

/** Keys of a config file that are not settings of this command (a typo would otherwise be ignored). */
export function unknownFileKeys(spec: SettingsSpec, file: ConfigFile): string[] {
  return Object.keys(file.values).filter((key) => !(key in spec));
}

/**
 * yargs options for a spec. yargs only collects input: it is given no defaults (so a value it
 * returns was typed on the command line) and no types but "list", and main.ts turns its number
 * parsing off, so the text reaches the same coercion as an environment or file value would
 * ("--forwarding=yes" is false to yargs' own boolean parser, "--mtu abc" is null to its number
 * parser).
 */
export function yargsOptions(spec: SettingsSpec): Record<string, { describe: string; type?: 'string'; array?: true }> {
  const options: Record<string, { describe: string; type?: 'string'; array?: true }> = {};
  for (const [flag, setting] of Object.entries(spec)) {
    const describe = `${setting.describe}${helpDefault(setting)}`;
    options[flag] = setting.type === 'list' ? { describe, type: 'string', array: true } : { describe };
  }
  return options;
}

function helpDefault(setting: SettingSpec): string {
  if (setting.defaultText !== undefined) return ` (default: ${setting.defaultText})`;
  if (setting.default === undefined) return '';
  const value = Array.isArray(setting.default) ? setting.default.join(',') : String(setting.default);
  return ` (default ${value})`;
}

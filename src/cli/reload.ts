import type { Logger, LogLevel } from '../log.js';
import { userMessage } from '../errors.js';
import { logLevelSetting, pathCheckSettings, type RawOptions } from './config.js';
import { envName, givenOnCommandLine, loadConfigFile, type FileValues } from './config-file.js';

/**
 * SIGHUP, the one handler for the whole process. Each part that can change live registers a
 * reload step here (`onReload`), instead of adding its own process.on('SIGHUP'): the steps run
 * in order, one after the other, and a failing step is logged and does not stop the others.
 *
 *   onReload('settings', …)   this file: log level, path checks (re-read from --config)
 *   onReload('peers', …)      the peers file (server), when that is reloadable
 */
type ReloadStep = () => Promise<void> | void;

const steps: Array<{ name: string; run: ReloadStep }> = [];
let installed = false;
let running: Promise<void> | undefined;

export function onReload(name: string, run: ReloadStep, log?: Logger): void {
  steps.push({ name, run });
  if (installed) return;
  installed = true;
  process.on('SIGHUP', () => {
    // A second SIGHUP during a reload runs the whole reload again afterwards.
    running = (running ?? Promise.resolve()).then(async () => {
      log?.info({ signal: 'SIGHUP', steps: steps.map((step) => step.name) }, 'reloading');
      for (const step of steps) {
        try {
          await step.run();
        } catch (err) {
          log?.error({ step: step.name, err: userMessage(err) }, 'reload step failed; the old settings stay');
        }
      }
    });
  });
}

/** Settings that change without a restart. */
export interface LiveSettings {
  logLevel: LogLevel;
  pathCheckIntervalMs?: number;
  pathCheckTimeoutMs?: number;
  pathCheckPort?: number;
}

const LIVE_FLAGS: Record<string, keyof LiveSettings> = {
  'log-level': 'logLevel',
  'path-check-interval-ms': 'pathCheckIntervalMs',
  'path-check-timeout-ms': 'pathCheckTimeoutMs',
  'path-check-port': 'pathCheckPort',
};

/**
 * What the live settings are after the config file changed: a flag on the command line or in
 * the environment still wins (it was given explicitly); otherwise the file's value, otherwise
 * the default. Throws a ConfigError naming the field when the file's value is bad.
 */
export function liveSettingsFrom(
  role: 'server' | 'client',
  file: FileValues,
  current: LiveSettings,
  argv: readonly string[] = process.argv.slice(2),
  env: NodeJS.ProcessEnv = process.env,
): LiveSettings {
  const explicit = (flag: string): boolean => givenOnCommandLine(flag, argv) || (env[envName(flag)] ?? '') !== '';
  const pick = (flag: string): unknown => (explicit(flag) ? undefined : file[flag]);
  const next: LiveSettings = {
    logLevel: logLevelSetting({ 'log-level': explicit('log-level') ? current.logLevel : pick('log-level') }),
  };
  if (role === 'server') {
    const raw: RawOptions = {};
    for (const flag of ['path-check-interval-ms', 'path-check-timeout-ms', 'path-check-port']) {
      const key = LIVE_FLAGS[flag]!;
      raw[flag] = explicit(flag) ? current[key] : pick(flag);
    }
    Object.assign(next, pathCheckSettings(raw));
  }
  return next;
}

/** Flags in the file that differ from those the daemon started with and cannot change live. */
export function restartNeeded(before: FileValues, after: FileValues): string[] {
  const keys = new Set([...Object.keys(before), ...Object.keys(after)]);
  return [...keys]
    .filter((key) => !(key in LIVE_FLAGS) && JSON.stringify(before[key]) !== JSON.stringify(after[key]))
    .sort();
}

export interface SettingsReloadOptions {
  readonly role: 'server' | 'client';
  readonly configFile: string | null;
  readonly log: Logger;
  readonly initial: LiveSettings;
  readonly apply: (next: LiveSettings) => void;
}

/**
 * The reload step of this issue: re-reads --config and applies the live settings. Logs one
 * line saying what changed, and one naming settings that need a restart.
 */
export function settingsReloader(options: SettingsReloadOptions): ReloadStep {
  let settings = options.initial;
  let fileValues: FileValues = options.configFile ? safeLoad(options.configFile) : {};
  return () => {
    const { log } = options;
    if (!options.configFile) {
      log.info('no --config file: nothing to reload (flags and env are read only at start)');
      return;
    }
    const file = loadConfigFile(options.configFile);
    const next = liveSettingsFrom(options.role, file, settings);
    const changed = Object.fromEntries(
      Object.entries(next).filter(([key, value]) => settings[key as keyof LiveSettings] !== value),
    );
    const stale = restartNeeded(fileValues, file);
    options.apply(next);
    settings = next;
    fileValues = file;
    log.info(
      { configFile: options.configFile, changed },
      Object.keys(changed).length > 0 ? 'settings reloaded' : 'settings reloaded: nothing changed',
    );
    if (stale.length > 0)
      log.warn({ settings: stale }, 'these settings changed in the config file but take effect only after a restart');
  };
}

function safeLoad(path: string): FileValues {
  try {
    return loadConfigFile(path);
  } catch {
    return {};
  }
}

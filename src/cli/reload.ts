import type { Logger, LogLevel } from '../log.js';
import { userMessage } from '../errors.js';
import { logLevelSetting, pathCheckSettings } from './config.js';
import { settingValues, type Settings } from './settings.js';

/**
 * SIGHUP, the one handler for the whole process. Each part that can change live registers a
 * reload step here (`onReload`), instead of adding its own process.on('SIGHUP'): the steps run
 * in order, one after the other, and a failing step is logged and does not stop the others.
 *
 *   onReload('settings', …)   settingsReloader below: log level, path checks (--config re-read)
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

const LIVE_FLAGS = new Set(['log-level', 'path-check-interval-ms', 'path-check-timeout-ms', 'path-check-port']);

/** The live settings among a daemon's resolved settings, checked as at start. */
export function liveSettings(role: 'server' | 'client', settings: Settings): LiveSettings {
  const raw = settingValues(settings);
  const live: LiveSettings = { logLevel: logLevelSetting(raw) };
  return role === 'server' ? { ...live, ...pathCheckSettings(raw) } : live;
}

/** Settings whose value changed and that take effect only after a restart. */
export function restartNeeded(before: Settings, after: Settings): string[] {
  return Object.keys(after)
    .filter(
      (flag) => !LIVE_FLAGS.has(flag) && JSON.stringify(before[flag]?.value) !== JSON.stringify(after[flag]?.value),
    )
    .sort();
}

/** The settings a daemon started with, and how to read them again from the same sources. */
export interface StartSettings {
  readonly settings: Settings;
  /**
   * The start's command line and environment with the config file as it is now: a flag or a
   * NODELINK_* variable still wins over the file, as it did at start.
   */
  readonly reread: () => Settings;
}

export interface SettingsReloadOptions {
  readonly role: 'server' | 'client';
  readonly configFile: string | null;
  readonly start: StartSettings;
  readonly log: Logger;
  /** Applies the daemon's own live settings; the log level is applied for every daemon. */
  readonly apply?: (next: LiveSettings) => void;
}

/**
 * The settings reload step: resolves the settings again and applies the live ones. Logs one
 * line saying what changed, and one naming settings that need a restart. A bad value in the
 * file throws, naming the setting, and the old settings stay.
 */
export function settingsReloader(options: SettingsReloadOptions): ReloadStep {
  let settings = options.start.settings;
  let live = liveSettings(options.role, settings);
  return () => {
    const { log } = options;
    if (!options.configFile) {
      log.info('no --config file: nothing to reload (flags and env are read only at start)');
      return;
    }
    const nextSettings = options.start.reread();
    const next = liveSettings(options.role, nextSettings);
    const changed = Object.fromEntries(
      Object.entries(next).filter(([key, value]) => live[key as keyof LiveSettings] !== value),
    );
    const stale = restartNeeded(settings, nextSettings);
    options.apply?.(next);
    settings = nextSettings;
    live = next;
    log.info(
      { configFile: options.configFile, changed },
      Object.keys(changed).length > 0 ? 'settings reloaded' : 'settings reloaded: nothing changed',
    );
    if (stale.length > 0)
      log.warn({ settings: stale }, 'these settings changed in the config file but take effect only after a restart');
    // Last, so that the lines about this reload are written at the level that asked for it.
    log.level = next.logLevel;
  };
}

/** Registers the settings reload step of a daemon for SIGHUP. */
export function reloadSettingsOnSighup(options: SettingsReloadOptions): void {
  onReload('settings', settingsReloader(options), options.log);
}

/** What a server's settings reload retunes besides the log level: its path checker, if any. */
export interface PathCheckRetune {
  reconfigure(update: { intervalMs: number; timeoutMs: number; port: number }): void;
}

/** The server's settings reload step for SIGHUP (a lone server and a workers' primary alike). */
export function reloadServerSettingsOnSighup(
  options: Omit<SettingsReloadOptions, 'role' | 'apply'>,
  pathChecker: PathCheckRetune | undefined,
): void {
  reloadSettingsOnSighup({
    ...options,
    role: 'server',
    apply: (next) =>
      pathChecker?.reconfigure({
        intervalMs: next.pathCheckIntervalMs!,
        timeoutMs: next.pathCheckTimeoutMs!,
        port: next.pathCheckPort!,
      }),
  });
}

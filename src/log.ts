import { pino, type Logger } from 'pino';
import pinoPretty from 'pino-pretty';

export type { Logger };

export const LOG_LEVELS = ['trace', 'debug', 'info', 'warn', 'error', 'fatal', 'silent'] as const;
export type LogLevel = (typeof LOG_LEVELS)[number];

/** `auto`: readable lines when stderr is a terminal, JSON lines otherwise (files, journald, kubectl logs). */
export const LOG_FORMATS = ['auto', 'json', 'pretty'] as const;
export type LogFormat = (typeof LOG_FORMATS)[number];

/**
 * Structured JSON lines on stderr (stdout belongs to command output). One line per event —
 * connect, reject, disconnect, route change — never one per packet.
 */
export function createLogger(
  level: LogLevel,
  bindings: Record<string, unknown> = {},
  format: LogFormat = 'json',
): Logger {
  const pretty = format === 'pretty' || (format === 'auto' && process.stderr.isTTY === true);
  const destination = pretty
    ? pinoPretty({
        destination: 2,
        sync: true,
        colorize: process.stderr.isTTY === true,
        translateTime: 'SYS:HH:MM:ss.l',
        ignore: 'pid,hostname',
        singleLine: true,
      })
    : pino.destination({ fd: 2, sync: true });
  return pino({ level, base: bindings, timestamp: pino.stdTimeFunctions.isoTime }, destination);
}

export function silentLogger(): Logger {
  return pino({ level: 'silent' });
}

import { connect as tlsConnect } from 'node:tls';
import { EXPORTER_BYTES, EXPORTER_LABEL, encodeHello, type KeyPair } from '../auth/index.js';
import { FramedConnection, type ConnectionOptions } from '../link/connection.js';
import { CloseCode, DEFAULT_MAX_PAYLOAD, FrameType, closeCodeName, decodeWelcome } from '../protocol/index.js';
import { checkServer, clientTlsOptions, serverIdentity, type ServerTrust, type Untrusted } from './trust.js';

/** Where to dial, what to trust, and who to say we are. */
export interface ProbeOptions {
  readonly host: string;
  readonly port: number;
  /** What the running client trusts: a pinned key, --ca (and --server-name), or both. */
  readonly trust: ServerTrust;
  /** Our identity for a hello; without it the probe stops once the server is trusted. */
  readonly hello?: { readonly keyPair: KeyPair; readonly name: string; readonly routes: readonly string[] };
  readonly timeoutMs: number;
}

/** What the server said it is, in a welcome. */
export interface ProbeWelcome {
  readonly tunnelCidrs: string[];
  readonly serverAddresses: string[];
}

/** Everything after `tls` carries `presented`: the server's key, or its certificate's fingerprint. */
export type ProbeResult =
  | { stage: 'tls'; error: string }
  | { stage: 'untrusted'; presented: string | null; untrusted: Untrusted }
  | { stage: 'trusted'; presented: string | null }
  | { stage: 'welcome'; presented: string | null; welcome: ProbeWelcome }
  | { stage: 'rejected'; presented: string | null; code: string; reason: string }
  | { stage: 'no_answer'; presented: string | null; error: string };

/** The probe sends one hello and never starts keepalive or carries data. */
const PROBE_CONNECTION: ConnectionOptions = {
  maxQueueBytes: DEFAULT_MAX_PAYLOAD,
  keepaliveIntervalMs: 60_000,
  deadAfterMs: 120_000,
};

/**
 * One dial to a server made the way the client makes it (the same TLS options, the same trust
 * decision, the same framed stream), stopped after the answer: for `nodelink diagnose`. It says
 * how far the handshake got: TLS, trust in the server, and whether the server accepted our key
 * and routes. On a welcome the session is closed at once (Close, normal), so the probe costs the
 * server one log line, not a lasting session.
 */
export function probeHandshake(options: ProbeOptions): Promise<ProbeResult> {
  return new Promise((resolve) => {
    let result: ProbeResult | undefined;
    let presented: string | null = null;
    let trusted = false;
    const settle = (outcome: ProbeResult): void => {
      if (result) return;
      result = outcome;
      clearTimeout(timer);
      resolve(outcome);
    };
    const socket = tlsConnect(clientTlsOptions(options.host, options.port, options.trust));
    // The error's code (ERR_SSL_WRONG_VERSION_NUMBER, ECONNRESET) says more than its message.
    let socketError: string | undefined;
    socket.once('error', (err: NodeJS.ErrnoException) => {
      socketError = err.code ?? err.message;
    });
    const connection = new FramedConnection(
      socket,
      {
        onData: () => {
          settle({ stage: 'no_answer', presented, error: 'the server sent data before its welcome' });
          connection.close(CloseCode.ProtocolError, 'data before welcome');
        },
        onControl: (type, payload) => {
          const welcome = type === FrameType.Welcome ? parseWelcome(payload) : undefined;
          if (!welcome) {
            const what = type === FrameType.Welcome ? 'a malformed welcome' : `an unexpected ${FrameType[type]} frame`;
            settle({ stage: 'no_answer', presented, error: `the server sent ${what}` });
            connection.close(CloseCode.ProtocolError, `unexpected ${FrameType[type]} frame`);
            return;
          }
          settle({ stage: 'welcome', presented, welcome });
          connection.close(CloseCode.Normal, 'nodelink diagnose: probe done');
        },
        onClose: (code, reason, byPeer) => {
          if (!trusted)
            settle({ stage: 'tls', error: socketError ?? 'the connection closed during the TLS handshake' });
          else if (byPeer) settle({ stage: 'rejected', presented, code: closeCodeName(code), reason });
          else settle({ stage: 'no_answer', presented, error: `no welcome or reject: ${socketError ?? reason}` });
        },
      },
      PROBE_CONNECTION,
    );
    const timer = setTimeout(() => {
      settle(
        trusted
          ? { stage: 'no_answer', presented, error: `no welcome or reject within ${options.timeoutMs} ms` }
          : { stage: 'tls', error: `TLS handshake did not finish within ${options.timeoutMs} ms` },
      );
      connection.destroy('probe timed out');
    }, options.timeoutMs);
    socket.once('secureConnect', () => {
      presented = serverIdentity(socket) ?? null;
      const untrusted = checkServer(socket, options.trust);
      if (untrusted) {
        settle({ stage: 'untrusted', presented, untrusted });
        connection.destroy(untrusted.message);
        return;
      }
      trusted = true;
      const { hello } = options;
      if (!hello) {
        settle({ stage: 'trusted', presented });
        connection.destroy('probe done: no hello');
        return;
      }
      const exporter = socket.exportKeyingMaterial(EXPORTER_BYTES, EXPORTER_LABEL, Buffer.alloc(0));
      connection.sendControl(
        FrameType.Hello,
        encodeHello(hello.keyPair, exporter, { name: hello.name, routes: [...hello.routes] }),
      );
    });
  });
}

function parseWelcome(payload: Buffer): ProbeWelcome | undefined {
  try {
    const welcome = decodeWelcome(payload);
    return { tunnelCidrs: [...welcome.tunnelCidrs], serverAddresses: [...welcome.serverAddresses] };
  } catch {
    return undefined;
  }
}

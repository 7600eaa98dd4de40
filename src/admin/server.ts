import { createServer, request, type Server } from 'node:http';
import { chmodSync, lstatSync, mkdirSync, mkdtempSync, renameSync, rmSync, unlinkSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { AdminError } from './errors.js';
import type { DaemonStatus } from './status.js';

/**
 * Serves the daemon's state over HTTP on a unix socket (root-only, mode 0600), so
 * `nodelink status` works without any network port. The provider is injected: this module
 * knows nothing of links, TUNs or protocols.
 */
export class AdminServer {
  private constructor(
    private readonly server: Server,
    readonly path: string,
  ) {}

  static async start(path: string, provider: () => DaemonStatus | Promise<DaemonStatus>): Promise<AdminServer> {
    const dir = dirname(path);
    mkdirSync(dir, { recursive: true, mode: 0o755 });
    // A live socket of this user is another nodelink. One of another user is no daemon of ours
    // (someone who can write to the directory put it there): it is replaced below.
    if (ownedByUs(path) && (await isAlive(path))) {
      throw new AdminError(
        'admin_in_use',
        `admin socket ${path} is in use by another running nodelink: stop it or pass --admin-socket`,
      );
    }
    const server = createServer((req, res) => {
      if (req.method === 'GET' && req.url === '/status') {
        // The provider may read kernel state (route states), so it can be async.
        Promise.resolve()
          .then(provider)
          .then(
            (status) => {
              res.writeHead(200, { 'content-type': 'application/json' });
              res.end(JSON.stringify(status));
            },
            (err: unknown) => {
              res.writeHead(500, { 'content-type': 'text/plain' });
              res.end(`status failed: ${err instanceof Error ? err.message : String(err)}`);
            },
          );
      } else {
        res.writeHead(404).end();
      }
    });
    const fail = (err: NodeJS.ErrnoException): AdminError =>
      new AdminError(
        'admin_socket',
        `cannot listen on admin socket ${path} (${err.code ?? err.message}): pass a writable --admin-socket`,
      );
    // bind() creates the socket file with the umask's mode, and nothing can set it before. So it
    // is bound in a fresh directory only this user may enter (mkdtemp: 0700), made 0600 there,
    // and renamed into place (atomic, replacing a stale socket): at its final path it never has
    // another mode, whatever the umask.
    let staging: string;
    try {
      staging = mkdtempSync(join(dir, '.nl'));
    } catch (err) {
      throw fail(err as NodeJS.ErrnoException);
    }
    const staged = join(staging, 's');
    try {
      await new Promise<void>((resolve, reject) => {
        server.once('error', (err: NodeJS.ErrnoException) => reject(fail(err)));
        server.listen(staged, () => resolve());
      });
      try {
        chmodSync(staged, 0o600);
        renameSync(staged, path);
      } catch (err) {
        server.close();
        throw fail(err as NodeJS.ErrnoException);
      }
    } finally {
      rmSync(staging, { recursive: true, force: true });
    }
    return new AdminServer(server, path);
  }

  close(): void {
    this.server.close();
    try {
      unlinkSync(this.path);
    } catch {
      // Already gone.
    }
  }
}

function ownedByUs(path: string): boolean {
  try {
    return lstatSync(path).uid === process.getuid?.();
  } catch {
    return false;
  }
}

function isAlive(path: string): Promise<boolean> {
  return new Promise((resolve) => {
    const req = request({ socketPath: path, path: '/status', timeout: 1000 }, (res) => {
      res.resume();
      resolve(true);
    });
    req.on('error', () => resolve(false));
    req.on('timeout', () => {
      req.destroy();
      resolve(false);
    });
    req.end();
  });
}

export function fetchStatus(path: string): Promise<DaemonStatus> {
  return new Promise((resolve, reject) => {
    const req = request({ socketPath: path, path: '/status', timeout: 3000 }, (res) => {
      const chunks: Buffer[] = [];
      res.on('data', (chunk: Buffer) => chunks.push(chunk));
      res.on('end', () => {
        try {
          resolve(JSON.parse(Buffer.concat(chunks).toString('utf8')) as DaemonStatus);
        } catch {
          reject(
            new AdminError('admin_unreachable', `admin socket ${path} answered with something that is not status JSON`),
          );
        }
      });
    });
    req.on('error', (err: NodeJS.ErrnoException) =>
      reject(
        new AdminError(
          'admin_unreachable',
          `no nodelink daemon answers on ${path} (${err.code ?? err.message}): is it running? pass --admin-socket if it uses another path`,
        ),
      ),
    );
    req.on('timeout', () => req.destroy(new Error('timeout')));
    req.end();
  });
}

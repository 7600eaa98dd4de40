// The daemon's local endpoints and file errors against a local attacker, without root: /metrics
// rendered once per cache period however many scrape, connections capped and slow requests cut,
// the admin socket never visible with a looser mode than 0600 even under umask 000, a key file
// passed for another file never quoted in the error, a taken endpoint that the daemon works
// around and retries, and --authorize-from-nodes reads that are cached and capped.

import { expect } from 'chai';
import fc from 'fast-check';
import { spawnSync } from 'node:child_process';
import { chmodSync, chownSync, existsSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { createServer as createHttpServer } from 'node:http';
import { connect, createServer as createNetServer, type Server as NetServer, type Socket } from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { Worker } from 'node:worker_threads';
import {
  AdminServer,
  ENDPOINT_LIMITS,
  ObservabilityServer,
  RetryingEndpoint,
  fetchStatus,
  report,
  type DaemonStatus,
  type ObservabilityServerOptions,
} from '../../src/admin/index.js';
import { encodeKey, generateSeed, jsonErrorOffset, readPeersFile } from '../../src/auth/index.js';
import { loadConfigFile } from '../../src/cli/config-file.js';
import { KubernetesError, nodeRouteChecker, type NodeLike, type NodeSource } from '../../src/k8s/index.js';
import { Prefix } from '../../src/routing/index.js';
import { runCli } from '../../scripts/cluster.js';
import { setTimeout as sleep } from 'node:timers/promises';
import { portOf, recordingLogger } from '../support/link-rig.js';
import { waitFor } from '../support/wait.js';

function endpointOptions(overrides: Partial<ObservabilityServerOptions> = {}): ObservabilityServerOptions {
  return {
    host: '127.0.0.1',
    port: 0,
    metrics: async () => 'nodelink_up 1\n',
    contentType: 'text/plain; version=0.0.4',
    ready: async () => report({}),
    ...overrides,
  };
}

function daemonStatus(role: DaemonStatus['role']): DaemonStatus {
  return { role, tun: 'nl0', tunnelAddress: null, tunnelAddresses: [], startedAt: '', dropsByReason: {}, peers: [] };
}

/** Prints a measured figure in the mocha output, indented under the test. */
function note(text: string): void {
  console.log(`      → ${text}`);
}

/** Opens a TCP connection and says, within `ms`, whether the server closed it. */
function closedWithin(port: number, ms: number, send?: string): Promise<{ socket: Socket; closed: boolean }> {
  return new Promise((resolve) => {
    const socket = connect(port, '127.0.0.1');
    socket.on('error', () => undefined);
    socket.resume(); // read, so that the server's FIN is seen
    let done = false;
    const finish = (closed: boolean): void => {
      if (done) return;
      done = true;
      resolve({ socket, closed });
    };
    socket.once('connect', () => {
      if (send !== undefined) socket.write(send);
    });
    socket.once('close', () => finish(true));
    setTimeout(() => finish(false), ms);
  });
}

describe('admin and metrics endpoints against a local attacker', function () {
  this.timeout(20_000);

  describe('/metrics: cached rendering, connection cap, timeouts', function () {
    let http: ObservabilityServer | undefined;
    afterEach(() => http?.close());

    it('many concurrent scrapes render the registry once per cache period', async function () {
      let renders = 0;
      http = await ObservabilityServer.start(
        endpointOptions({
          metrics: async () => {
            renders++;
            await sleep(20); // a slow rendering: scrapes arriving meanwhile must wait for it, not start their own
            return `nodelink_renders ${renders}\n`;
          },
        }),
      );
      const url = `http://${http.address}/metrics`;
      const first = await Promise.all(Array.from({ length: 50 }, () => fetch(url).then((r) => r.text())));
      for (let i = 0; i < 20; i++) first.push(await fetch(url).then((r) => r.text()));
      expect(renders).to.equal(1);
      expect(new Set(first)).to.deep.equal(new Set(['nodelink_renders 1\n']));
      await sleep(ENDPOINT_LIMITS.metricsCacheMs + 50);
      const later = await Promise.all(Array.from({ length: 20 }, () => fetch(url).then((r) => r.text())));
      expect(renders).to.equal(2);
      expect(new Set(later)).to.deep.equal(new Set(['nodelink_renders 2\n']));
    });

    it('a failed rendering is not served again: the next scrape renders anew', async function () {
      let renders = 0;
      http = await ObservabilityServer.start(
        endpointOptions({
          metrics: async () => {
            if (++renders === 1) throw new Error('registry broke');
            return 'nodelink_up 1\n';
          },
        }),
      );
      expect((await fetch(`http://${http.address}/metrics`)).status).to.equal(500);
      expect(await (await fetch(`http://${http.address}/metrics`)).text()).to.equal('nodelink_up 1\n');
      expect(renders).to.equal(2);
    });

    it(`connections beyond the cap (${ENDPOINT_LIMITS.maxConnections}) are closed at accept and counted; a scrape gets in once one frees`, async function () {
      http = await ObservabilityServer.start(endpointOptions());
      const port = portOf(http.address);
      const cap = ENDPOINT_LIMITS.maxConnections;
      const held = await Promise.all(Array.from({ length: cap }, () => closedWithin(port, 300)));
      try {
        expect(held.filter((c) => c.closed)).to.have.length(0);
        const extra = await Promise.all(Array.from({ length: 20 }, () => closedWithin(port, 1000)));
        extra.forEach((c) => c.socket.destroy());
        expect(extra.filter((c) => c.closed)).to.have.length(20);
        expect(http.refusedConnections).to.equal(20);
      } finally {
        held.forEach((c) => c.socket.destroy());
      }
      await sleep(100);
      expect((await fetch(`http://${http.address}/metrics`)).status).to.equal(200);
    });

    it('a request whose headers never end is cut after headersTimeout, not held for Node’s 30 s check', async function () {
      http = await ObservabilityServer.start(endpointOptions());
      const port = portOf(http.address);
      const started = Date.now();
      const slow = await closedWithin(
        port,
        ENDPOINT_LIMITS.headersTimeoutMs + 3000,
        'GET /metrics HTTP/1.1\r\nHost: x\r\n',
      );
      expect(slow.closed, 'half-sent request still open').to.equal(true);
      expect(Date.now() - started).to.be.at.least(ENDPOINT_LIMITS.headersTimeoutMs - 100);
    });
  });

  describe('admin socket', function () {
    let dir = '';
    before(() => {
      dir = mkdtempSync(path.join(os.tmpdir(), 'nodelink-admin-'));
    });
    after(() => rmSync(dir, { recursive: true, force: true }));

    /** Starts raced by the watcher: the old listen-then-chmod window is open in a few of them. */
    const STARTS = 200;

    it('under umask 000 it is never seen with a looser mode than 0600, by a thread watching every start', async function () {
      const socket = path.join(dir, 'race.sock');
      const stop = new Int32Array(new SharedArrayBuffer(4));
      // The watcher runs on its own thread, truly alongside each start: it sees any moment at
      // which the socket (or a directory beside it) is open to others.
      const watcher = new Worker(
        `
        const { workerData, parentPort } = require('node:worker_threads');
        const fs = require('node:fs');
        const path = require('node:path');
        const { dir, socket, stop } = workerData;
        const seen = [];
        let polls = 0;
        let sightings = 0;
        const deadline = Date.now() + 30000;
        const look = (file) => {
          let st;
          try { st = fs.lstatSync(file); } catch { return; }
          const mode = st.mode & 0o777;
          if (st.isSocket()) sightings++;
          if (st.isSocket() && mode !== 0o600) seen.push(path.basename(file) + ' socket ' + mode.toString(8));
          if (st.isDirectory() && (mode & 0o077) !== 0) seen.push(path.basename(file) + ' directory ' + mode.toString(8));
        };
        parentPort.postMessage('watching');
        while (Atomics.load(stop, 0) === 0 && Date.now() < deadline) {
          look(socket);
          // The directory listing is slower: every 16th round, for what lies beside the socket.
          if (polls++ % 16 === 0) {
            let names = [];
            try { names = fs.readdirSync(dir); } catch {}
            for (const name of names) look(path.join(dir, name));
          }
        }
        parentPort.postMessage({ polls, sightings, seen: [...new Set(seen)] });
        `,
        { eval: true, workerData: { dir, socket, stop } },
      );
      const result = new Promise<{ polls: number; sightings: number; seen: string[] }>((resolve, reject) => {
        watcher.on('message', (message: unknown) => {
          if (message !== 'watching') resolve(message as { polls: number; sightings: number; seen: string[] });
        });
        watcher.once('error', reject);
      });
      await new Promise((resolve) => watcher.once('message', resolve));
      const umask = process.umask(0o000);
      try {
        for (let i = 0; i < STARTS; i++) {
          const admin = await AdminServer.start(socket, () => daemonStatus('client'));
          admin.close();
        }
      } finally {
        process.umask(umask);
        Atomics.store(stop, 0, 1);
      }
      const { polls, sightings, seen } = await result;
      await watcher.terminate();
      expect(polls, 'the watcher ran').to.be.greaterThan(100);
      expect(sightings, 'the watcher saw the socket at all').to.be.greaterThan(0);
      expect(seen).to.deep.equal([]);
    });

    it('a live socket of this user is another nodelink: that start fails; a dead one is replaced', async function () {
      const socket = path.join(dir, 'live.sock');
      const first = await AdminServer.start(socket, () => daemonStatus('server'));
      try {
        const second = await AdminServer.start(socket, () => daemonStatus('client')).then(
          () => undefined,
          (err: Error) => err,
        );
        expect(second?.message).to.match(/admin socket .*live\.sock is in use by another running nodelink/);
        const { log } = recordingLogger();
        const retried = await RetryingEndpoint.start(
          'admin',
          socket,
          () => AdminServer.start(socket, () => daemonStatus('client')),
          log,
        ).then(
          () => undefined,
          (err: Error) => err,
        );
        expect(retried?.message, 'a second nodelink on the same socket must not start').to.match(/in use by another/);
      } finally {
        first.close();
      }
      // A socket file nobody listens on, left by a daemon that was killed, is replaced.
      const killed = spawnSync(process.execPath, [
        '-e',
        `require('node:net').createServer().listen(${JSON.stringify(socket)}, () => process.kill(process.pid, 'SIGKILL'))`,
      ]);
      expect(killed.signal).to.equal('SIGKILL');
      expect(existsSync(socket), 'the killed daemon left its socket').to.equal(true);
      const admin = await AdminServer.start(socket, () => daemonStatus('client'));
      expect((await fetchStatus(socket)).role).to.equal('client');
      admin.close();
    });

    if (process.getuid?.() === 0) {
      it('as root: a socket another user placed at the path is replaced, not trusted', async function () {
        const shared = mkdtempSync(path.join(os.tmpdir(), 'nodelink-shared-'));
        try {
          chmodSync(shared, 0o1777);
          const socket = path.join(shared, 'squat.sock');
          const squatter = createHttpServer((_req, res) => res.end('{}')).listen(socket);
          await new Promise((resolve) => squatter.once('listening', resolve));
          chownSync(socket, 65534, 65534);
          const admin = await AdminServer.start(socket, () => daemonStatus('server'));
          expect((await fetchStatus(socket)).role).to.equal('server');
          admin.close();
          squatter.close();
        } finally {
          rmSync(shared, { recursive: true, force: true });
        }
      });
    }
  });

  describe('file errors never quote content', function () {
    let dir = '';
    let keyFile = '';
    let keyText = '';
    before(() => {
      dir = mkdtempSync(path.join(os.tmpdir(), 'nodelink-files-'));
      keyFile = path.join(dir, 'server.key');
      keyText = encodeKey(generateSeed());
      writeFileSync(keyFile, `${keyText}\n`, { mode: 0o600 });
    });
    after(() => rmSync(dir, { recursive: true, force: true }));

    /** Every run of 6 characters of the key: a quote of more than 5 characters of it is caught. */
    function quotesKey(message: string): string[] {
      const pieces: string[] = [];
      const bare = keyText.replace(/=+$/, '');
      for (let i = 0; i + 6 <= bare.length; i++)
        if (message.includes(bare.slice(i, i + 6))) pieces.push(bare.slice(i, i + 6));
      return pieces;
    }

    it('a key file passed as --peers: the CLI names the file and the mistake, and prints no part of the key', async function () {
      const result = await runCli([
        'server',
        '--listen',
        '127.0.0.1:1',
        '--key',
        keyFile,
        '--peers',
        keyFile,
        '--tunnel-cidr',
        '198.18.250.0/24',
        '--admin-socket',
        path.join(dir, 'never.sock'),
      ]);
      expect(result.code).to.not.equal(0);
      expect(result.stderr).to.contain(`peers file ${keyFile}`).and.contain('it holds a key');
      expect(result.stderr.trim().split('\n')).to.have.length(1);
      expect(quotesKey(result.stderr + result.stdout)).to.deep.equal([]);
    });

    it('peers and config files that are not JSON or YAML: line and column, never their bytes', function () {
      const broken = path.join(dir, 'peers.json');
      const secret = 'Zm9vYmFyYmF6cXV4c2VjcmV0';
      writeFileSync(broken, `{"peers": [\n  {"name": "a", "token": ${secret}}\n]}`);
      const peersError = (() => {
        try {
          readPeersFile(broken);
        } catch (err) {
          return (err as Error).message;
        }
        return '';
      })();
      expect(peersError).to.contain('line 2, column 26').and.not.contain(secret.slice(0, 6));
      const json = path.join(dir, 'config.json');
      writeFileSync(json, `${keyText}\n`);
      expect(() => loadConfigFile(json)).to.throw(
        /config\.json is not valid JSON \(it holds a key; content not shown\)/,
      );
      try {
        loadConfigFile(json);
      } catch (err) {
        expect(quotesKey((err as Error).message)).to.deep.equal([]);
      }
      const yaml = path.join(dir, 'config.yaml');
      writeFileSync(yaml, `listen: 0.0.0.0:8443\ntoken: "${secret}\n`);
      let yamlError = '';
      try {
        loadConfigFile(yaml);
      } catch (err) {
        yamlError = (err as Error).message;
      }
      expect(yamlError).to.match(/config\.yaml is not valid YAML or JSON \(line \d+, column \d+; content not shown\)/);
      expect(yamlError).to.not.contain(secret.slice(0, 6));
    });

    it('the position finder agrees with JSON.parse on valid, mutated and random text', function () {
      const accepts = (text: string): boolean => {
        try {
          JSON.parse(text);
          return true;
        } catch {
          return false;
        }
      };
      fc.assert(
        fc.property(
          fc.oneof(
            fc.json(),
            fc
              .json()
              .chain((text) =>
                fc
                  .tuple(fc.nat(text.length), fc.string({ maxLength: 3 }))
                  .map(([at, insert]) => text.slice(0, at) + insert + text.slice(at + 1)),
              ),
            fc.string(),
          ),
          (text) => (jsonErrorOffset(text) === undefined) === accepts(text),
        ),
        { numRuns: 3000 },
      );
    });
  });

  describe('a taken endpoint never keeps the daemon from starting', function () {
    let squatter: NetServer | undefined;
    let endpoint: RetryingEndpoint<ObservabilityServer> | undefined;
    afterEach(() => {
      endpoint?.close();
      squatter?.close();
    });

    it('a metrics port held by another process: failed in status and one log line, retried, serving once free', async function () {
      squatter = createNetServer().listen(0, '127.0.0.1');
      await new Promise((resolve) => squatter!.once('listening', resolve));
      const port = (squatter.address() as { port: number }).port;
      const { log, lines } = recordingLogger();
      endpoint = await RetryingEndpoint.start(
        'metrics',
        `127.0.0.1:${port}`,
        () => ObservabilityServer.start(endpointOptions({ port })),
        log,
        100,
      );
      const failed = endpoint.status();
      expect(failed.state).to.equal('failed');
      expect(failed.error).to.match(
        /--metrics 127\.0\.0\.1:\d+ is already in use: stop the other process or pick another port/,
      );
      await sleep(350); // a few retries while the port is still taken
      const errors = lines
        .map((line) => JSON.parse(line) as { level: number; msg: string })
        .filter((l) => l.level >= 50);
      expect(errors).to.have.length(1);
      expect(errors[0]!.msg).to.match(/metrics endpoint failed; the link runs without it/);
      squatter.close();
      squatter = undefined;
      await waitFor('the endpoint serving', () => endpoint!.status().state === 'serving', 3000);
      expect((await fetch(`http://${endpoint.value!.address}/healthz`)).status).to.equal(200);
      expect(lines.some((line) => line.includes('metrics endpoint serving again'))).to.equal(true);
    });
  });

  describe('--authorize-from-nodes Node reads', function () {
    const routes = (...r: string[]): Prefix[] => r.map((x) => Prefix.parse(x));
    const node = (n: number, podCIDR = `198.19.${n}.0/24`): NodeLike => ({
      metadata: { name: `node-${n}` },
      spec: { podCIDR },
      status: { addresses: [{ type: 'InternalIP', address: `198.18.${n}.1` }] },
    });

    /** Answers after a delay, counting reads and the most in flight at once. */
    class SlowNodes implements NodeSource {
      readonly server = 'fake';
      readonly nodes = new Map<string, NodeLike | Error>();
      reads = 0;
      inFlight = 0;
      maxInFlight = 0;
      async getNode(name: string): Promise<NodeLike> {
        this.reads++;
        this.maxInFlight = Math.max(this.maxInFlight, ++this.inFlight);
        await sleep(20);
        this.inFlight--;
        const answer = this.nodes.get(name);
        if (answer instanceof Error) throw answer;
        if (!answer) throw new KubernetesError('k8s_not_found', `no Node ${name}`);
        return answer;
      }
    }

    it('a burst of hellos from 20 nodes: one read per node, at most 4 in flight', async function () {
      const source = new SlowNodes();
      for (let n = 1; n <= 20; n++) source.nodes.set(`node-${n}`, node(n));
      const check = nodeRouteChecker(source);
      const checks: Array<Promise<void>> = [];
      for (let round = 0; round < 10; round++)
        for (let n = 1; n <= 20; n++) checks.push(check(`node-${n}`, routes(`198.18.${n}.1/32`, `198.19.${n}.0/24`)));
      await Promise.all(checks);
      expect(source.reads).to.equal(20);
      expect(source.maxInFlight).to.equal(4);
      note(`200 checks of 20 nodes: ${source.reads} reads, at most ${source.maxInFlight} in flight`);
    });

    it('a cached Node only lets checks pass: a changed pod CIDR is read again before any rejection', async function () {
      const source = new SlowNodes();
      source.nodes.set('node-1', node(1));
      const check = nodeRouteChecker(source);
      await check('node-1', routes('198.19.1.0/24'));
      source.nodes.set('node-1', node(1, '198.19.77.0/24'));
      await check('node-1', routes('198.19.77.0/24'));
      expect(source.reads).to.equal(2);
      const refused = await check('node-1', routes('198.19.99.0/24')).then(
        () => undefined,
        (err: Error) => err,
      );
      expect(refused?.message).to.match(/route 198\.19\.99\.0\/24 is not an address or pod CIDR of Node "node-1"/);
    });

    it('API errors are not cached; checks beyond the waiting line are refused as transient', async function () {
      const source = new SlowNodes();
      source.nodes.set('node-1', new KubernetesError('k8s_api', 'HTTP 500'));
      const check = nodeRouteChecker(source);
      for (let i = 0; i < 3; i++) {
        const err = await check('node-1', routes('198.19.1.0/24')).then(
          () => undefined,
          (e: Error) => e,
        );
        expect((err as KubernetesError).code).to.equal('k8s_api');
      }
      expect(source.reads).to.equal(3);
      const busy = new SlowNodes();
      for (let n = 1; n <= 12; n++) busy.nodes.set(`node-${n}`, node(n));
      const limited = nodeRouteChecker(busy, { maxConcurrent: 2, maxWaiting: 4 });
      const results = await Promise.all(
        Array.from({ length: 12 }, (_, i) =>
          limited(`node-${i + 1}`, routes(`198.19.${i + 1}.0/24`)).then(
            () => 'ok',
            (err: KubernetesError) => err.code,
          ),
        ),
      );
      expect(results.filter((r) => r === 'ok')).to.have.length(6);
      expect(results.filter((r) => r === 'k8s_busy')).to.have.length(6);
    });
  });
});

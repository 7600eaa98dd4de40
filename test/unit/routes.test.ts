import { expect } from 'chai';
import {
  BACKSTOP_METRIC,
  ClientRoutes,
  RouteConflictError,
  ServerRoutes,
  containsAddress,
  covers,
  describeRoute,
  parseCidr,
  parseRoutes,
  routeConflicts,
  routeTableFor,
  type KernelRoute,
} from '../../src/tun/index.js';
import { Prefix } from '../../src/routing/index.js';

const TABLE = routeTableFor('nl0');

/** What `ip -N -j -4 route show table all` printed in a control-plane namespace with a default route. */
const HOST4 = JSON.stringify([
  { dst: 'default', gateway: '198.18.0.1', dev: 'eth0', flags: [] },
  { dst: '198.18.0.0/24', dev: 'eth0', protocol: '2', scope: '253', prefsrc: '198.18.0.2', flags: [] },
  { type: '2', dst: '198.18.0.2', dev: 'eth0', table: '255', protocol: '2', scope: '254', flags: [] },
  { type: '3', dst: '198.18.0.255', dev: 'eth0', table: '255', protocol: '2', scope: '253', flags: [] },
  { type: '2', dst: '127.0.0.0/8', dev: 'lo', table: '255', protocol: '2', scope: '254', flags: [] },
]);
const HOST6 = JSON.stringify([
  { dst: 'fd00:18::/64', dev: 'eth0', protocol: '2', metric: 256, flags: [] },
  { type: '2', dst: 'fd00:18::2', dev: 'eth0', table: '255', protocol: '2', metric: 0, flags: [] },
  { type: '5', dst: 'ff00::/8', dev: 'eth0', table: '255', protocol: '2', metric: 256, flags: [] },
]);

function route(dst: string, more: Partial<KernelRoute> = {}): KernelRoute {
  return {
    dst: parseCidr(dst),
    table: 254,
    type: 1,
    dev: 'eth0',
    gateway: undefined,
    protocol: 3,
    metric: 0,
    ...more,
  };
}

/** A fake `ip`: answers route and rule listings from state, records every command. */
class FakeIp {
  routes4: object[] = JSON.parse(HOST4) as object[];
  routes6: object[] = JSON.parse(HOST6) as object[];
  rules: object[] = [];
  readonly calls: string[] = [];
  readonly batches: string[][] = [];
  run = async (args: readonly string[]): Promise<string> => {
    this.calls.push(args.join(' '));
    const text = args.join(' ');
    if (text.includes('route show')) return JSON.stringify(text.includes('-6') ? this.routes6 : this.routes4);
    if (text.includes('rule show')) return JSON.stringify(this.rules);
    if (text.includes('rule add')) return '';
    throw new Error(`unexpected ip ${text}`);
  };
  batch = async (commands: readonly string[]): Promise<void> => {
    if (commands.length > 0) this.batches.push([...commands]);
  };
}

describe('tun/routes: which routes are nodelink’s, and failing closed', function () {
  it('gives each TUN name its own table in the "NL" range, the same every time', function () {
    expect(routeTableFor('nl0')).to.equal(routeTableFor('nl0'));
    expect(routeTableFor('nl0')).to.not.equal(routeTableFor('nl1'));
    for (const name of ['nl0', 'nl1', 'tun0', 'a']) {
      expect(routeTableFor(name)).to.be.within(0x4e4c0000, 0x4e4cffff);
    }
  });

  it('parses ip -N -j output: default, host routes, tables, types and the implied boot protocol', function () {
    const routes = parseRoutes(HOST4, 4);
    expect(routes.map((r) => r.dst.text)).to.deep.equal([
      '0.0.0.0/0',
      '198.18.0.0/24',
      '198.18.0.2/32',
      '198.18.0.255/32',
      '127.0.0.0/8',
    ]);
    expect(routes[0]).to.include({ table: 254, type: 1, protocol: 3, gateway: '198.18.0.1' });
    expect(routes[2]).to.include({ table: 255, type: 2, protocol: 2 });
    expect(describeRoute(routes[0]!)).to.equal('default via 198.18.0.1 dev eth0 proto boot table main');
    expect(describeRoute(routes[1]!)).to.equal('198.18.0.0/24 dev eth0 proto kernel table main');
    expect(describeRoute(routes[2]!)).to.equal('local 198.18.0.2/32 dev eth0 proto kernel table local');
    expect(parseRoutes(HOST6, 6)[2]!.dst.text).to.equal('ff00::/8');
  });

  it('covers: containment by family and length, never across families', function () {
    expect(covers(parseCidr('198.19.0.0/16'), parseCidr('198.19.1.0/24'))).to.equal(true);
    expect(covers(parseCidr('198.19.1.0/24'), parseCidr('198.19.1.0/24'))).to.equal(true);
    expect(covers(parseCidr('198.19.1.0/24'), parseCidr('198.19.0.0/16'))).to.equal(false);
    expect(covers(parseCidr('198.19.2.0/24'), parseCidr('198.19.1.7/32'))).to.equal(false);
    expect(covers(parseCidr('fd00::/8'), parseCidr('fd00:19::b/128'))).to.equal(true);
    expect(covers(parseCidr('::/0'), parseCidr('198.19.1.0/24'))).to.equal(false);
  });

  it('covers and containsAddress agree with the routing table’s prefixes on random IPv4 and IPv6 networks', function () {
    let seed = 0x4e4c;
    const next = (): number => {
      seed = (Math.imul(seed, 1103515245) + 12345) >>> 0;
      return seed >>> 8;
    };
    // Few distinct values, so that containment happens often; host bits are cleared.
    const random = (family: 4 | 6): string => {
      const bits = family === 4 ? 32 : 128;
      const length = next() % (bits + 1);
      let value = 0n;
      const fixed = family === 4 ? [198, 18] : [0xfd, 0, 0, 0x18];
      for (let i = 0; i < bits / 8; i++) value = (value << 8n) | BigInt(fixed[i] ?? next() % 3);
      value &= ((1n << BigInt(bits)) - 1n) ^ ((1n << BigInt(bits - length)) - 1n);
      if (family === 4) return `${[24n, 16n, 8n, 0n].map((shift) => (value >> shift) & 255n).join('.')}/${length}`;
      const groups = Array.from({ length: 8 }, (_, i) => ((value >> BigInt(112 - 16 * i)) & 0xffffn).toString(16));
      return `${groups.join(':')}/${length}`;
    };
    let contained = 0;
    for (let i = 0; i < 4000; i++) {
      const family = i % 2 === 0 ? 4 : 6;
      const [a, b] = [random(family), random(family)];
      let outer: Prefix;
      let inner: Prefix;
      try {
        outer = Prefix.parse(a);
        inner = Prefix.parse(b);
      } catch {
        continue; // host bits set: not a network
      }
      const expected = outer.contains(inner);
      if (expected) contained++;
      expect(covers(parseCidr(a), parseCidr(b)), `${a} covers ${b}`).to.equal(expected);
    }
    expect(contained, 'the sample has containments').to.be.greaterThan(100);
    expect(containsAddress(parseCidr('::ffff:198.19.0.0/120'), '::ffff:198.19.0.7')).to.equal(true);
    expect(containsAddress(parseCidr('fd00:18::/64'), 'fd00:18::2')).to.equal(true);
    expect(containsAddress(parseCidr('fd00:18::/64'), 'fd00:19::2')).to.equal(false);
    expect(containsAddress(parseCidr('198.18.0.0/16'), 'fd00:18::2')).to.equal(false);
  });

  it('checks 20,000 allowedIPs against a table holding 40,000 of its own routes in well under a second', function () {
    const owner = { tun: 'nl0', table: TABLE };
    const own: KernelRoute[] = [];
    const cidrs: string[] = [];
    for (let i = 0; i < 20_000; i++) {
      const cidr = `10.${(i >> 8) & 255}.${i & 255}.0/24`;
      cidrs.push(cidr);
      own.push(route(cidr, { dev: 'nl0', table: TABLE, protocol: 78 }));
      own.push(route(cidr, { dev: undefined, type: 7, table: TABLE, protocol: 78 }));
    }
    const host = [...parseRoutes(HOST4, 4), ...own];
    const started = performance.now();
    expect(routeConflicts(cidrs, host, owner)).to.deep.equal([]);
    expect(performance.now() - started).to.be.below(1000);
  });

  it('a conflict is a CIDR covering or equal to a host route; a node inside a connected subnet is none', function () {
    const host = [...parseRoutes(HOST4, 4), ...parseRoutes(HOST6, 6)];
    const owner = { tun: 'nl0', table: TABLE };
    const found = (cidrs: string[]): Array<[string, string | undefined]> =>
      routeConflicts(cidrs, host, owner).map((c) => [c.cidr, c.route && describeRoute(c.route)]);
    expect(found(['198.18.0.0/24'])).to.deep.equal([
      ['198.18.0.0/24', '198.18.0.0/24 dev eth0 proto kernel table main'],
    ]);
    expect(found(['198.18.0.0/23'])).to.have.length(1);
    expect(found(['198.18.0.2/32'])[0]![1]).to.match(/^local 198\.18\.0\.2\/32/);
    expect(found(['0.0.0.0/0'])).to.deep.equal([['0.0.0.0/0', undefined]]);
    expect(found(['::/0'])).to.deep.equal([['::/0', undefined]]);
    expect(found(['ff00::/7'])[0]![1]).to.match(/^multicast ff00::\/8/);
    // A node's /32 inside the control plane's connected subnet (flat network), and unrelated ranges.
    expect(found(['198.18.0.11/32', '198.19.0.11/32', '198.19.1.0/24', 'fd00:19::b/128'])).to.deep.equal([]);
  });

  it('own routes (into the TUN, or own backstops) are no conflict; another nodelink’s always are', function () {
    const owner = { tun: 'nl0', table: TABLE };
    const own = [
      route('198.19.1.0/24', { dev: 'nl0', table: TABLE, protocol: 78 }),
      route('198.19.2.0/24', { dev: undefined, type: 7, table: TABLE, protocol: 78, metric: BACKSTOP_METRIC }),
      route('198.18.255.0/24', { dev: 'nl0', protocol: 2 }),
    ];
    expect(routeConflicts(['198.19.1.0/24', '198.19.2.0/24'], own, owner)).to.deep.equal([]);
    const other = routeTableFor('nl1');
    const theirs = [
      route('198.19.1.0/24', { dev: 'nl1', table: other, protocol: 78 }),
      route('198.19.2.0/24', { dev: undefined, type: 7, table: other, protocol: 78 }),
    ];
    expect(routeConflicts(['198.19.1.0/24', '198.19.2.0/24'], theirs, owner)).to.have.length(2);
    // Someone else's reject routes carry no traffic, and tables of other software are not nodelink's to judge.
    const ignored = [
      route('198.19.0.0/16', { type: 7, dev: undefined }),
      route('198.19.3.0/24', { table: 100, dev: 'cilium_host' }),
    ];
    expect(routeConflicts(['198.19.0.0/16', '198.19.3.0/24'], ignored, owner)).to.deep.equal([]);
    // Another device's route in main is the host's: a conflict.
    expect(routeConflicts(['198.19.4.0/24'], [route('198.19.4.0/24', { dev: 'eth1' })], owner)).to.have.length(1);
  });

  describe('ServerRoutes', function () {
    const sources = { 4: '198.18.255.1', 6: 'fd00:18:ff::1' };

    it('refuses an allowedIP over the host’s route in one line naming both, before changing anything', async function () {
      const fake = new FakeIp();
      const routes = new ServerRoutes({ tun: 'nl0', listenPort: 8443, sources, run: fake.run, batch: fake.batch });
      const err = await routes
        .check(['198.19.0.11/32', '198.18.0.0/24'], (cidr) => `peer "node-d" allowedIPs ${cidr}`)
        .then(
          () => undefined,
          (e: unknown) => e,
        );
      expect(err).to.be.instanceOf(RouteConflictError);
      const message = (err as Error).message;
      expect(message).to.not.include('\n');
      expect(message).to.match(
        /^peer "node-d" allowedIPs 198\.18\.0\.0\/24 covers the host's route 198\.18\.0\.0\/24 dev eth0 proto kernel table main: .*peers file$/,
      );
      expect(fake.batches).to.deep.equal([]);
      const dflt = await routes.check(['0.0.0.0/0']).catch((e: Error) => e.message);
      expect(dflt).to.match(/allowedIPs 0\.0\.0\.0\/0 would route every address into nl0/);
      const theirs = new FakeIp();
      theirs.routes4.push({ dst: '198.19.0.11', dev: 'nl1', table: String(routeTableFor('nl1')), protocol: '78' });
      const other = new ServerRoutes({ tun: 'nl0', listenPort: 8443, sources, run: theirs.run, batch: theirs.batch });
      expect(await other.check(['198.19.0.11/32']).catch((e: Error) => e.message)).to.match(
        /allowedIPs 198\.19\.0\.11\/32 covers another nodelink's route 198\.19\.0\.11\/32 dev nl1 proto 78 table \d+: stop that server/,
      );
    });

    it('failClosed adds the two rules per family once, missing backstops, and prunes only when told', async function () {
      const fake = new FakeIp();
      const routes = new ServerRoutes({ tun: 'nl0', listenPort: 8443, sources, run: fake.run, batch: fake.batch });
      fake.routes4.push(
        { type: '7', dst: '198.19.0.11', table: String(TABLE), protocol: '78', metric: BACKSTOP_METRIC },
        { type: '7', dst: '198.19.9.0/24', table: String(TABLE), protocol: '78', metric: BACKSTOP_METRIC },
        // Another server's backstop: never pruned by this one.
        { type: '7', dst: '198.19.8.0/24', table: String(routeTableFor('nl1')), protocol: '78' },
      );
      const summary = await routes.failClosed(['198.19.0.11/32', '198.19.1.0/24', 'fd00:19::b/128'], { prune: true });
      expect(summary).to.deep.equal({
        rulesAdded: 4,
        backstopsAdded: ['198.19.1.0/24', 'fd00:19::b/128'],
        backstopsRemoved: ['198.19.9.0/24'],
      });
      const adds = fake.calls.filter((c) => c.includes('rule add'));
      expect(adds).to.deep.equal([
        '-4 rule add priority 4877 ipproto tcp sport 8443 lookup main protocol 78',
        `-4 rule add priority 4878 lookup ${TABLE} protocol 78`,
        '-6 rule add priority 4877 ipproto tcp sport 8443 lookup main protocol 78',
        `-6 rule add priority 4878 lookup ${TABLE} protocol 78`,
      ]);
      expect(fake.batches).to.deep.equal([
        [
          `route add unreachable 198.19.1.0/24 proto 78 metric 4096 table ${TABLE}`,
          `route add unreachable fd00:19::b/128 proto 78 metric 4096 table ${TABLE}`,
          `route del unreachable 198.19.9.0/24 proto 78 metric 4096 table ${TABLE}`,
        ],
      ]);
      // Rules present (as ip -N prints them): none added again; without prune nothing is removed.
      fake.rules = [
        { priority: 4877, src: 'all', ipproto: 'ipproto-6', sport: 8443, table: '254', protocol: '78' },
        { priority: 4878, src: 'all', table: String(TABLE), protocol: '78' },
      ];
      fake.calls.length = 0;
      fake.batches.length = 0;
      const again = await routes.failClosed(['198.19.0.11/32'], { prune: false });
      expect(again).to.deep.equal({ rulesAdded: 0, backstopsAdded: [], backstopsRemoved: [] });
      expect(fake.calls.filter((c) => c.includes('rule add'))).to.deep.equal([]);
      // Another listen port is another rule (one per family).
      const moved = new ServerRoutes({ tun: 'nl0', listenPort: 9443, sources, run: fake.run, batch: fake.batch });
      expect((await moved.failClosed(['198.19.0.11/32'], { prune: false })).rulesAdded).to.equal(2);
    });

    it('install puts TUN routes with the tunnel source over the backstops; remove takes both away', async function () {
      const fake = new FakeIp();
      const routes = new ServerRoutes({ tun: 'nl0', listenPort: 8443, sources, run: fake.run, batch: fake.batch });
      await routes.install(['198.19.1.0/24', 'fd00:19:1::/64']);
      expect(fake.batches.at(-1)).to.deep.equal([
        `route replace 198.19.1.0/24 dev nl0 src 198.18.255.1 proto 78 metric 64 table ${TABLE}`,
        `route replace fd00:19:1::/64 dev nl0 src fd00:18:ff::1 proto 78 metric 64 table ${TABLE}`,
      ]);
      await routes.remove(['198.19.1.0/24']);
      expect(fake.batches.at(-1)).to.deep.equal([
        `route del 198.19.1.0/24 dev nl0 proto 78 metric 64 table ${TABLE}`,
        `route del unreachable 198.19.1.0/24 proto 78 metric 4096 table ${TABLE}`,
      ]);
    });
  });

  describe('ClientRoutes (the node side of a welcome)', function () {
    const nodeHost = (): FakeIp => {
      const fake = new FakeIp();
      fake.routes4 = [
        { dst: 'default', gateway: '198.19.0.1', dev: 'eth0', flags: [] },
        { dst: '198.19.0.0/24', dev: 'eth0', protocol: '2', flags: [] },
        { type: '2', dst: '198.19.0.11', dev: 'eth0', table: '255', protocol: '2', flags: [] },
      ];
      return fake;
    };

    it('never installs a default route, a route to the server itself, or one over the node’s routes', async function () {
      const fake = nodeHost();
      const routes = new ClientRoutes({ tun: 'nl0', run: fake.run, batch: fake.batch });
      const refused = (cidrs: string[], server = '198.18.0.2'): Promise<string> =>
        routes.install(cidrs, server).then(
          () => '',
          (e: Error) => e.message,
        );
      expect(await refused(['0.0.0.0/0'])).to.match(/tunnel CIDR 0\.0\.0\.0\/0 would be a default route on this node/);
      expect(await refused(['198.18.0.0/24'])).to.match(/holds the server's own address 198\.18\.0\.2/);
      expect(await refused(['198.19.0.0/16'])).to.match(
        /tunnel CIDR 198\.19\.0\.0\/16 covers this node's route 198\.19\.0\.0\/24 dev eth0 proto kernel table main/,
      );
      expect(await refused(['198.19.0.11/32'], '198.18.0.2')).to.match(/local 198\.19\.0\.11\/32/);
      expect(fake.batches, 'nothing installed').to.deep.equal([]);
    });

    it('installs with its protocol and, on a new welcome, removes only the routes it installed', async function () {
      const fake = nodeHost();
      const routes = new ClientRoutes({ tun: 'nl0', run: fake.run, batch: fake.batch });
      await routes.install(['198.18.255.0/24'], '198.18.0.2');
      expect(fake.batches).to.deep.equal([['route replace 198.18.255.0/24 dev nl0 proto 78']]);
      fake.batches.length = 0;
      await routes.install(['198.18.254.0/24'], '198.18.0.2');
      expect(fake.batches).to.deep.equal([
        ['route replace 198.18.254.0/24 dev nl0 proto 78'],
        ['route del 198.18.255.0/24 dev nl0 proto 78'],
      ]);
    });
  });
});

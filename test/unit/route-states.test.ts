// Route states in status, judged on the routes' Prefix objects (the server's) or on the welcome's
// tunnel CIDRs (a node's), against what `ip route` shows for the TUN; and the server's answers to
// its observability: route states per peer and the path checker's targets.

import { expect } from 'chai';
import { kernelRouteSet, nodeRouteStates, tunnelRouteStates } from '../../src/admin/index.js';
import { Prefix } from '../../src/routing/index.js';
import { Rigs, newPair, registryOf } from '../support/link-rig.js';
import { waitFor } from '../support/wait.js';

const prefixes = (...texts: string[]): Prefix[] => texts.map((text) => Prefix.parse(text));

describe('route states', function () {
  describe('kernelRouteSet', function () {
    it('keeps canonical CIDR text, and undefined (ip could not say) as undefined', function () {
      const kernel = kernelRouteSet(['198.19.1.0/24', 'FD00:19:0:0::/64', 'not a route']);
      expect([...kernel!]).to.deep.equal(['198.19.1.0/24', 'fd00:19::/64', 'not a route']);
      expect(kernelRouteSet(undefined)).to.equal(undefined);
    });
  });

  describe('nodeRouteStates (server)', function () {
    const allowed = prefixes('198.19.0.11/32', '198.19.1.0/24', 'fd00:19::/64');

    it('is active when announced (or covered), not_announced when not, missing when the kernel lacks it', function () {
      const kernel = kernelRouteSet(['198.19.0.11/32', 'fd00:19::/64']);
      const states = nodeRouteStates(allowed, prefixes('198.19.0.11/32', 'fd00:19::b/128'), kernel);
      expect(states).to.deep.equal([
        { route: '198.19.0.11/32', state: 'active', kernel: true },
        { route: '198.19.1.0/24', state: 'missing', kernel: false },
        { route: 'fd00:19::/64', state: 'active', kernel: true },
      ]);
      expect(nodeRouteStates(allowed.slice(0, 1), [], kernel)).to.deep.equal([
        { route: '198.19.0.11/32', state: 'not_announced', kernel: true },
      ]);
    });

    it('is offline without a session, and judges without the kernel when ip could not say', function () {
      expect(nodeRouteStates(allowed.slice(0, 1), undefined, kernelRouteSet(['198.19.0.11/32']))).to.deep.equal([
        { route: '198.19.0.11/32', state: 'offline', kernel: true },
      ]);
      expect(nodeRouteStates(allowed.slice(1, 2), prefixes('198.19.1.0/24'), undefined)).to.deep.equal([
        { route: '198.19.1.0/24', state: 'active', kernel: null },
      ]);
      // A missing kernel route outranks a missing session: it is what the operator must fix.
      expect(nodeRouteStates(allowed.slice(0, 1), undefined, kernelRouteSet([]))[0]!.state).to.equal('missing');
    });
  });

  describe('tunnelRouteStates (node)', function () {
    it('is installed or missing by the kernel, in canonical form, and keeps text it cannot parse', function () {
      const kernel = kernelRouteSet(['198.18.255.0/24']);
      expect(tunnelRouteStates(['198.18.255.0/24', 'FD00:18:FF::/64', 'junk'], kernel)).to.deep.equal([
        { route: '198.18.255.0/24', state: 'installed', kernel: true },
        { route: 'fd00:18:ff::/64', state: 'missing', kernel: false },
        { route: 'junk', state: 'missing', kernel: false },
      ]);
      expect(tunnelRouteStates(['198.18.255.0/24'], undefined)).to.deep.equal([
        { route: '198.18.255.0/24', state: 'installed', kernel: null },
      ]);
    });
  });

  describe('LinkServer', function () {
    this.timeout(10_000);
    const rigs = new Rigs();
    after(() => rigs.stopAll());

    it('gives each peer its route states and targets only connected nodes for path checks', async function () {
      const serverPair = newPair();
      const nodeA = newPair();
      const nodeB = newPair();
      const registry = registryOf([
        { name: 'node-a', pair: nodeA, allowedIPs: ['198.19.0.11/32', '198.19.1.0/24'] },
        { name: 'node-b', pair: nodeB, allowedIPs: ['198.19.0.12/32'] },
      ]);
      const { server, port } = await rigs.server({ registry, keyPair: serverPair });
      const a = rigs.client({
        port,
        name: 'node-a',
        keyPair: nodeA,
        serverKey: serverPair.publicKey,
        routes: ['198.19.0.11/32'],
      });
      await waitFor('node-a authenticated', () => a.client.isAuthenticated);

      const kernel = kernelRouteSet(['198.19.0.11/32', '198.19.0.12/32']);
      const states = server.routeStates(kernel);
      expect(Object.fromEntries(states)).to.deep.equal({
        'node-a': [
          { route: '198.19.0.11/32', state: 'active', kernel: true },
          { route: '198.19.1.0/24', state: 'missing', kernel: false },
        ],
        'node-b': [{ route: '198.19.0.12/32', state: 'offline', kernel: true }],
      });
      expect(server.pathTargets()).to.deep.equal([{ peer: 'node-a', address: '198.19.0.11', family: 4 }]);
    });
  });
});

// The pure parts of src/tun: reading iproute2's JSON output.

import { expect } from 'chai';
import { routeDestinations } from '../../src/tun/index.js';

describe('routeDestinations (ip -j route show)', function () {
  it('gives host routes their full length and keeps network routes as printed', function () {
    const json = JSON.stringify([
      { dst: '198.18.255.0/24', dev: 'nl0', protocol: 'kernel', scope: 'link' },
      { dst: '198.19.0.11', dev: 'nl0', scope: 'link' },
      { dst: 'fd00:19::b', dev: 'nl0', metric: 1024 },
      { dst: 'fd00:19:1::/64', dev: 'nl0', metric: 1024 },
    ]);
    expect(routeDestinations(json)).to.deep.equal([
      '198.18.255.0/24',
      '198.19.0.11/32',
      'fd00:19::b/128',
      'fd00:19:1::/64',
    ]);
  });

  it('leaves out the default route, and reads empty output as no routes', function () {
    expect(routeDestinations(JSON.stringify([{ dst: 'default', gateway: '198.19.0.1', dev: 'eth0' }]))).to.deep.equal(
      [],
    );
    expect(routeDestinations('')).to.deep.equal([]);
    expect(routeDestinations('[]')).to.deep.equal([]);
  });
});

import { expect } from 'chai';
import { chmodSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import {
  DEMO_TOOLS,
  TEST_TOOLS,
  TOOL_PACKAGES,
  findMissingTools,
  missingToolsMessage,
} from '../../scripts/preflight.js';

describe('preflight', function () {
  describe('missingToolsMessage', function () {
    it('says nothing when no tool is missing', function () {
      expect(missingToolsMessage('npm run demo', [])).to.equal(undefined);
    });

    it('names one missing tool and the apt-get command for its package', function () {
      expect(missingToolsMessage('npm run demo', ['nft'])).to.equal(
        'npm run demo: missing tool nft; install it with: apt-get update && apt-get install -y nftables',
      );
    });

    it('names every missing tool on one line and installs each package once', function () {
      const message = missingToolsMessage('the namespace tests', ['ip', 'nft', 'tc', 'ping', 'conntrack', 'nft']);
      expect(message).to.equal(
        'the namespace tests: missing tools ip, nft, tc, ping, conntrack; ' +
          'install them with: apt-get update && apt-get install -y iproute2 nftables iputils-ping conntrack',
      );
      expect(message).to.not.include('\n');
    });

    it('falls back to the tool name for a tool without a known package', function () {
      expect(missingToolsMessage('x', ['jq'])).to.match(/apt-get install -y jq$/);
    });

    it('knows the package of every tool the demo and the tests check', function () {
      for (const tool of [...DEMO_TOOLS, ...TEST_TOOLS]) expect(TOOL_PACKAGES, tool).to.have.property(tool);
    });
  });

  describe('findMissingTools', function () {
    let dir: string;
    before(function () {
      dir = mkdtempSync(path.join(tmpdir(), 'nl-preflight-'));
      writeFileSync(path.join(dir, 'ip'), '#!/bin/sh\n');
      chmodSync(path.join(dir, 'ip'), 0o755);
      writeFileSync(path.join(dir, 'nft'), 'not executable\n');
      chmodSync(path.join(dir, 'nft'), 0o644);
    });
    after(function () {
      rmSync(dir, { recursive: true, force: true });
    });

    it('finds executables on the given PATH and reports the rest in order', function () {
      const searchPath = [path.join(dir, 'absent'), dir].join(path.delimiter);
      expect(findMissingTools(['curl', 'ip', 'nft'], searchPath)).to.deep.equal(['curl', 'nft']);
    });

    it('treats an empty PATH as holding nothing', function () {
      expect(findMissingTools(['ip'], '')).to.deep.equal(['ip']);
    });
  });
});

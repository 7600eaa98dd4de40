import 'reflect-metadata';
import { webcrypto } from 'node:crypto';
import * as x509 from '@peculiar/x509';
import { pkcs8Der, privateKeyObject, spkiDer, type KeyPair } from '../auth/index.js';

export interface ServerCertificate {
  readonly certPem: string;
  readonly keyPem: string;
}

/**
 * A self-signed certificate for the server's own Ed25519 key. Nobody trusts it by chain:
 * clients pin the key inside it (--server-key), and TLS 1.3's CertificateVerify proves the
 * server holds that key.
 */
export async function createServerCertificate(pair: KeyPair): Promise<ServerCertificate> {
  x509.cryptoProvider.set(webcrypto as unknown as Crypto);
  const algorithm = { name: 'Ed25519' };
  const keys = {
    privateKey: await webcrypto.subtle.importKey('pkcs8', pkcs8Der(pair), algorithm, false, ['sign']),
    publicKey: await webcrypto.subtle.importKey('spki', spkiDer(pair), algorithm, true, ['verify']),
  };
  const now = Date.now();
  const cert = await x509.X509CertificateGenerator.createSelfSigned({
    serialNumber: Buffer.from(webcrypto.getRandomValues(new Uint8Array(8))).toString('hex').replace(/^[89a-f]/, '1'),
    name: 'CN=nodelink-server',
    notBefore: new Date(now - 3600_000),
    notAfter: new Date(now + 10 * 365 * 86400_000),
    keys: keys as unknown as CryptoKeyPair,
    signingAlgorithm: algorithm,
  });
  return {
    certPem: cert.toString('pem'),
    keyPem: privateKeyObject(pair).export({ format: 'pem', type: 'pkcs8' }).toString(),
  };
}

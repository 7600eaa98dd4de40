import { X509Certificate, createPrivateKey, webcrypto, type KeyObject } from 'node:crypto';
import {
  pkcs8Der,
  privateKeyObject,
  readPemCertificates,
  readSecretFile,
  spkiDer,
  type KeyPair,
} from '../auth/index.js';
import { NodelinkError } from '../errors.js';

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
  // Loaded here, not with the module: the X.509 library and its ASN.1 modules take ~0.14 s to
  // load, which every other command, and the client on every node, would pay for nothing.
  await import('reflect-metadata');
  const x509 = await import('@peculiar/x509');
  x509.cryptoProvider.set(webcrypto as unknown as Crypto);
  const algorithm = { name: 'Ed25519' };
  const keys = {
    privateKey: await webcrypto.subtle.importKey('pkcs8', pkcs8Der(pair), algorithm, false, ['sign']),
    publicKey: await webcrypto.subtle.importKey('spki', spkiDer(pair), algorithm, true, ['verify']),
  };
  const now = Date.now();
  const cert = await x509.X509CertificateGenerator.createSelfSigned({
    serialNumber: Buffer.from(webcrypto.getRandomValues(new Uint8Array(8)))
      .toString('hex')
      .replace(/^[89a-f]/, '1'),
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

/** A --cert or --cert-key file that cannot serve as the server's TLS identity. */
export class CertificateError extends NodelinkError {
  constructor(message: string) {
    super('certificate', message);
  }
}

function readPrivateFile(path: string, flag: string): string {
  return readSecretFile(
    path,
    `${flag} file`,
    'pass the PEM private key of the --cert certificate',
    (message) => new CertificateError(message),
  );
}

/**
 * A certificate chain signed by the operator's CA, for clients that run with --ca.
 *
 * `certFile` holds PEM certificates, the server's own first, then any intermediates. Its key is
 * `certKeyFile` (PEM, mode 0600) or, without one, the server's own Ed25519 key (--key): then the
 * certificate must be issued for that key, and clients may pin it (--server-key) and check the
 * chain (--ca) at once. With a key of its own (any algorithm the CA issues), clients can only use
 * --ca. Checked here, once, so a mismatch or an expired certificate stops the server at start
 * with one line instead of failing every node's handshake later.
 */
export function loadServerCertificate(
  certFile: string,
  certKeyFile: string | undefined,
  pair: KeyPair,
  now = Date.now(),
): ServerCertificate {
  const pems = readPemCertificates(
    certFile,
    '--cert file',
    'pass a PEM certificate chain signed by your CA',
    (message) => new CertificateError(message),
  );
  let leaf: X509Certificate;
  try {
    leaf = new X509Certificate(pems[0]!);
  } catch (err) {
    throw new CertificateError(
      `--cert file ${certFile}: the first certificate cannot be parsed (${(err as Error).message.split('\n')[0]})`,
    );
  }
  let key: KeyObject;
  if (certKeyFile) {
    try {
      key = createPrivateKey(readPrivateFile(certKeyFile, '--cert-key'));
    } catch (err) {
      if (err instanceof CertificateError) throw err;
      throw new CertificateError(`--cert-key file ${certKeyFile} is not a PEM private key`);
    }
  } else {
    key = privateKeyObject(pair);
  }
  if (!leaf.checkPrivateKey(key)) {
    throw new CertificateError(
      certKeyFile
        ? `--cert ${certFile} was not issued for the key in --cert-key ${certKeyFile}: pass the matching pair`
        : `--cert ${certFile} was not issued for the server key (--key): have your CA sign that key, or pass the certificate's own key with --cert-key`,
    );
  }
  if (Date.parse(leaf.validTo) < now)
    throw new CertificateError(`--cert ${certFile} expired on ${leaf.validTo}: renew it`);
  if (Date.parse(leaf.validFrom) > now)
    throw new CertificateError(
      `--cert ${certFile} is not valid before ${leaf.validFrom}: check the clock or the certificate`,
    );
  return {
    certPem: pems.join('\n') + '\n',
    keyPem: key.export({ format: 'pem', type: 'pkcs8' }).toString(),
  };
}

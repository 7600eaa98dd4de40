// A throwaway CA and a server certificate it signed, both ECDSA P-256 (a key that is not
// Ed25519, as a company PKI issues), made in-process for the --ca tests.

import 'reflect-metadata';
import { webcrypto } from 'node:crypto';
import * as x509 from '@peculiar/x509';

export interface CaSignedCertificate {
  /** The CA's certificate: what a client passes as --ca. */
  readonly caPem: string;
  /** The server's certificate and its own key: what the server takes as --cert and --cert-key. */
  readonly certPem: string;
  readonly keyPem: string;
}

const ECDSA = { name: 'ECDSA', namedCurve: 'P-256', hash: 'SHA-256' };

function pemOf(pkcs8: ArrayBuffer): string {
  const body = Buffer.from(pkcs8)
    .toString('base64')
    .replace(/(.{64})/g, '$1\n');
  return `-----BEGIN PRIVATE KEY-----\n${body.trimEnd()}\n-----END PRIVATE KEY-----\n`;
}

/** A server certificate for the given IP addresses and DNS names, signed by a fresh CA. */
export async function caSignedEcdsaCertificate(names: {
  ips?: readonly string[];
  dns?: readonly string[];
}): Promise<CaSignedCertificate> {
  x509.cryptoProvider.set(webcrypto as unknown as Crypto);
  const notBefore = new Date(Date.now() - 3600_000);
  const notAfter = new Date(Date.now() + 86400_000);
  const caKeys = (await webcrypto.subtle.generateKey(ECDSA, true, ['sign', 'verify'])) as unknown as CryptoKeyPair;
  const ca = await x509.X509CertificateGenerator.createSelfSigned({
    serialNumber: '01',
    name: 'CN=nodelink test CA',
    notBefore,
    notAfter,
    keys: caKeys,
    signingAlgorithm: ECDSA,
    extensions: [
      new x509.BasicConstraintsExtension(true, undefined, true),
      new x509.KeyUsagesExtension(x509.KeyUsageFlags.keyCertSign, true),
    ],
  });
  const serverKeys = (await webcrypto.subtle.generateKey(ECDSA, true, ['sign', 'verify'])) as unknown as CryptoKeyPair;
  const cert = await x509.X509CertificateGenerator.create({
    serialNumber: '02',
    subject: 'CN=nodelink-server',
    issuer: ca.subject,
    notBefore,
    notAfter,
    publicKey: serverKeys.publicKey,
    signingKey: caKeys.privateKey,
    signingAlgorithm: ECDSA,
    extensions: [
      new x509.SubjectAlternativeNameExtension([
        ...(names.ips ?? []).map((value) => ({ type: 'ip' as const, value })),
        ...(names.dns ?? []).map((value) => ({ type: 'dns' as const, value })),
      ]),
    ],
  });
  return {
    caPem: ca.toString('pem'),
    certPem: cert.toString('pem'),
    keyPem: pemOf(await webcrypto.subtle.exportKey('pkcs8', serverKeys.privateKey)),
  };
}

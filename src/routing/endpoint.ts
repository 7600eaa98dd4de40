/** HOST:PORT as people, URLs and parseEndpoint write it: an IPv6 address in brackets, [fd00::1]:8443. */
export function formatEndpoint(endpoint: { readonly host: string; readonly port: number | string }): string {
  const { host, port } = endpoint;
  return host.includes(':') ? `[${host}]:${port}` : `${host}:${port}`;
}

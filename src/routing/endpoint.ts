/** HOST:PORT as people, URLs and parseEndpoint write it: an IPv6 address in brackets, [fd00::1]:8443. */
export function formatEndpoint(host: string, port: number | string): string {
  return host.includes(':') ? `[${host}]:${port}` : `${host}:${port}`;
}

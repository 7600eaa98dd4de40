export * from './device.js';
export * from './errors.js';
export * from './iproute2.js';
export * from './routes.js';
export * from './linux-tun.js';
export * from './nftables.js';

export * from './client.js';
export * from './backoff.js';
export * from './fanout.js';

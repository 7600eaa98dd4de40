export * from './client.js';
export * from './backoff.js';

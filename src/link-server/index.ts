export * from './server.js';
export * from './certificate.js';
export * from './flow-filter.js';

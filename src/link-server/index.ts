export * from './server.js';
export * from './certificate.js';
export * from './flow-filter.js';
export * from './session-routes.js';

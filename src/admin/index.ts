export * from './status.js';
export * from './errors.js';
export * from './server.js';
export * from './format.js';
export * from './debug.js';
export * from './metrics.js';
export * from './http.js';
export * from './endpoint.js';

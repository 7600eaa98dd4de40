export * from './server.js';
export * from './certificate.js';

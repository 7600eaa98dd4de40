export * from './errors.js';
export * from './keys.js';
export * from './hello.js';
export * from './peers.js';
export * from './file-errors.js';

export * from './frame.js';
export * from './errors.js';
export * from './encode.js';
export * from './decoder.js';
export * from './welcome.js';

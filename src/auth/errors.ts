import { NodelinkError } from '../errors.js';

/**
 * Key, peers-file and handshake failures. Codes: 'bad_key', 'key_file', 'peers_file',
 * 'bad_hello', 'unknown_key', 'bad_signature', 'name_mismatch', 'route_not_allowed'.
 */
export class AuthError extends NodelinkError {}

import { NodelinkError } from '../errors.js';

/** TUN and iproute2 failures. Codes: 'tun_open', 'tun_config', 'iproute2'. */
export class TunError extends NodelinkError {}

import { NodelinkError } from '../errors.js';

/** Admin socket failures. Codes: 'admin_in_use', 'admin_unreachable', 'admin_socket', 'metrics_listen'. */
export class AdminError extends NodelinkError {}

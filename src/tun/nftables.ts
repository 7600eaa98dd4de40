import { TunError } from './errors.js';
import { runTool } from './exec.js';

/**
 * nftables through the `nft` tool, as operators inspect it (`nft list table inet nodelink_nl0`).
 * Calls are rare (start, peer changes, status reads every second at most), never per packet.
 */

/** Raised when `nft` is not installed, so the caller can name the package and the way out. */
export const NFT_MISSING = 'nft_missing';

/**
 * Runs `nft ARGS`, with `input` on stdin (for `nft -f -`: one atomic transaction). Rejects with
 * a TunError whose code is NFT_MISSING when the binary is absent, 'nftables' otherwise.
 */
export function nft(args: readonly string[], input?: string): Promise<string> {
  return runTool('nft', args, {
    code: 'nftables',
    timeoutMs: 10_000,
    maxBuffer: 64 * 1024 * 1024,
    input: input ?? '',
    missing: () => new TunError(NFT_MISSING, 'nft is not installed'),
  });
}

/** One object of `nft -j list ...` output; only the kinds nodelink reads are typed. */
export interface NftJsonItem {
  counter?: { name: string; packets: number; bytes: number };
  set?: { name: string; elem?: Array<NftSetElement | NftSetValue> };
  chain?: { name: string };
}
export type NftSetValue = string | number | { concat: Array<string | number> };
export interface NftSetElement {
  elem: { val: NftSetValue; expires?: number; timeout?: number };
}

/** `nft -j ARGS`, parsed. */
export async function nftJson(args: readonly string[]): Promise<NftJsonItem[]> {
  const text = await nft(['-j', ...args]);
  try {
    return (JSON.parse(text) as { nftables?: NftJsonItem[] }).nftables ?? [];
  } catch {
    throw new TunError('nftables', `nft -j ${args.join(' ')} printed no JSON: ${text.slice(0, 80)}`);
  }
}

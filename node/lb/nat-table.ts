// The Maglev table of a kernel-forwarded service: its size comes from a fixed ladder (the smallest
// step ≥ 100 × backends, ≈1% imbalance), and ONE function builds the table that the userspace
// picker (route explain) and the kernel map (node/kernel/ruleset.ts; this file sits with the pickers so the model can build it) both read.
//
// Why not the proxy's 65,537 entries: every slot is a map element the kernel loads in one
// transaction; 65,537 elements take 0.65-1.6 s to load and a verdict flip rewrites ~1/n of them. A
// table sized to the backend count loads and updates in milliseconds. The ladder (rather than
// "smallest prime ≥ 100·n") keeps the size, and so every flow's slot, unchanged while the backend
// count moves within a step.
import type { AlgorithmName } from "../../shared/schema.js";
import type { BackendTarget, PickerFactory } from "./algorithm.js";
import { MaglevPicker } from "./maglev.js";

const ENTRIES_PER_BACKEND = 100;
/** Steps: the smallest prime ≥ 100·2^k, for k = 0, 1, …, up to 2^24 entries. */
export const NAT_TABLE_LADDER: readonly number[] = (() => {
  const out: number[] = [];
  for (let k = 0; k <= 18; k++) out.push(nextPrime(ENTRIES_PER_BACKEND * 2 ** k));
  return out;
})();

function nextPrime(n: number): number {
  const isPrime = (x: number) => {
    if (x < 2) return false;
    if (x % 2 === 0) return x === 2;
    for (let d = 3; d * d <= x; d += 2) if (x % d === 0) return false;
    return true;
  };
  let p = Math.max(2, Math.ceil(n));
  while (!isPrime(p)) p++;
  return p;
}

/** Table size of a NAT service with `backends` table members: the smallest ladder step ≥ 100 × backends. */
export function natTableSize(backends: number): number {
  const want = Math.max(1, backends) * ENTRIES_PER_BACKEND;
  for (const step of NAT_TABLE_LADDER) if (step >= want) return step;
  return NAT_TABLE_LADDER[NAT_TABLE_LADDER.length - 1];
}

/**
 * The one builder of a NAT service's table: its picker's `table`/`targets` are what the kernel map
 * holds. The size follows the service's configured backends (`members`, whatever their verdict),
 * not the routable ones: a verdict flip then keeps the size and is a delta of ≈1/n of the slots.
 */
export function buildNatPicker(algorithm: AlgorithmName, targets: readonly BackendTarget[], members: number): MaglevPicker {
  return new MaglevPicker(algorithm, targets, natTableSize(Math.max(members, targets.length)));
}

/** The picker factory the snapshot uses for `forwarding: nat` services (maglev, or source-ip for affinity). */
export function natPickerFactory(algorithm: AlgorithmName, members: number): PickerFactory {
  const sourceOnly = algorithm === "source-ip";
  const name = sourceOnly ? "source-ip" : "maglev";
  return { name, hashSourceOnly: sourceOnly, build: (targets) => buildNatPicker(name, targets, members) };
}

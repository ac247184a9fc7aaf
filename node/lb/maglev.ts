// Maglev consistent hashing (Eisenbud et al., NSDI 2016) for "maglev" (flow hash) and "source-ip"
// (client-IP hash). The lookup table depends only on backend ids and weights, so every node agrees.
import type { AlgorithmName } from "../../shared/schema.js";
import type { BackendTarget, Exclude, Picker, PickerFactory } from "./algorithm.js";
import { hashString } from "./hash.js";

/** Paper's default table size; prime. */
export const MAGLEV_DEFAULT_SIZE = 65537;
/** Table entries per backend that keep per-backend imbalance around 1%. */
const ENTRIES_PER_BACKEND = 100;
/** Largest ladder step (≈16.8M entries, 64 MiB): beyond ~168k backends imbalance exceeds 1% instead. */
const MAX_DOUBLINGS = 8;
const OFFSET_SEED = 0x6d61676c; // "magl"
const SKIP_SEED = 0x65762121; // "ev!!"
/**
 * A population round claims at most M / this many slots, so even extreme weight ratios take several
 * rounds and the table is not filled by whichever backends come first in one long round.
 */
const MIN_ROUNDS = 8;

function isPrime(n: number): boolean {
  if (n < 2 || !Number.isInteger(n)) return false;
  if (n % 2 === 0) return n === 2;
  for (let d = 3; d * d <= n; d += 2) if (n % d === 0) return false;
  return true;
}

/**
 * Table size for a backend count: 65537, or when 100·n exceeds that, the smallest prime ≥ 65537·2^k
 * that is ≥ 100·n. The size is a ladder rather than "smallest prime ≥ 100·n" because a different size
 * remaps nearly every flow: with the ladder, adding or removing one backend keeps the size (and so
 * moves ≈1/n of flows) except when n crosses a step (n = 656, 1312, 2622, 5244, 10487, …).
 */
export function maglevTableSize(backends: number): number {
  const want = Math.max(0, Math.ceil(backends)) * ENTRIES_PER_BACKEND;
  if (want <= MAGLEV_DEFAULT_SIZE) return MAGLEV_DEFAULT_SIZE;
  let size = MAGLEV_DEFAULT_SIZE;
  for (let k = 1; k <= MAX_DOUBLINGS && size < want; k++) {
    size = MAGLEV_DEFAULT_SIZE * 2 ** k;
    while (!isPrime(size)) size++;
  }
  return size;
}

function byId(ids: readonly string[], weights: readonly number[]) {
  // Plain code-unit comparison: localeCompare would make the order depend on the node's locale.
  return (a: number, b: number): number => {
    const ia = ids[a];
    const ib = ids[b];
    if (ia !== ib) return ia < ib ? -1 : 1;
    return weights[a] - weights[b];
  };
}

/**
 * Builds a Maglev lookup table of `tableSize` entries (prime). Entry values are indices into `ids`;
 * -1 only when no backend has a positive weight. Backends are populated in id order, so the
 * id→entries mapping is the same whatever order `ids` arrive in. A backend with weight w takes w
 * turns per round relative to the lightest one (fractional remainders carry over between rounds).
 */
export function buildMaglevTable(ids: readonly string[], weights: readonly number[], tableSize: number): Int32Array {
  if (!isPrime(tableSize) || tableSize > 0x7fffffff) throw new RangeError(`maglev table size must be a prime below 2^31, got ${tableSize}`);
  // Force a small-integer representation: a size computed in floating point (e.g. 65537 * 2 ** k)
  // otherwise makes V8 run the population loop in double arithmetic, 2-3x slower.
  const m = tableSize | 0;
  const table = new Int32Array(m);

  const candidates: number[] = [];
  for (let i = 0; i < ids.length; i++) {
    const w = weights[i];
    if (w > 0 && Number.isFinite(w)) candidates.push(i);
  }
  const k = candidates.length;
  if (k === 0) return table.fill(-1);
  candidates.sort(byId(ids, weights));

  const original = Int32Array.from(candidates);
  const pos = new Int32Array(k);
  const skip = new Int32Array(k);
  const perRound = new Float64Array(k);
  const credit = new Float64Array(k);
  const turns = new Int32Array(k);
  const live = new Int32Array(k);
  // Probes test this bitmap (m/8 bytes, cache-resident) rather than the 4·m-byte table.
  const taken = new Uint32Array((m + 31) >>> 5);

  let minW = Number.POSITIVE_INFINITY;
  let sumW = 0;
  for (let j = 0; j < k; j++) {
    const i = original[j];
    const w = weights[i];
    if (w < minW) minW = w;
    sumW += w;
    pos[j] = hashString(ids[i], OFFSET_SEED) % m;
    skip[j] = (hashString(ids[i], SKIP_SEED) % (m - 1)) + 1;
  }
  const unit = Math.max(minW, (sumW * MIN_ROUNDS) / m);
  for (let j = 0; j < k; j++) perRound[j] = weights[original[j]] / unit;

  let filled = 0;
  while (filled < m) {
    let count = 0;
    for (let j = 0; j < k; j++) {
      // The epsilon absorbs float drift so a weight ratio like 3:2 yields exactly 3 turns per 2 rounds.
      const c = credit[j] + perRound[j];
      const t = Math.floor(c + 1e-9);
      credit[j] = c - t;
      if (t > 0) {
        turns[j] = t;
        live[count++] = j;
      }
    }
    // Interleave turns (one per backend per pass) so a heavy backend does not claim its whole
    // round's share before the others get a turn.
    while (count > 0 && filled < m) {
      let keep = 0;
      for (let x = 0; x < count && filled < m; x++) {
        const j = live[x];
        // Next permutation entry is (c + skip) mod m, computed as c - (m - skip), adding m back
        // when negative without a branch: the wrap is unpredictable and mispredicts cost ~15% here.
        const back = m - skip[j];
        let c = pos[j];
        while ((taken[c >>> 5] & (1 << (c & 31))) !== 0) c = c - back + (m & ((c - back) >> 31));
        taken[c >>> 5] |= 1 << (c & 31);
        table[c] = original[j];
        filled++;
        pos[j] = c - back + (m & ((c - back) >> 31));
        if (--turns[j] > 0) live[keep++] = j;
      }
      count = keep;
    }
  }
  return table;
}

export class MaglevPicker implements Picker {
  readonly algorithm: AlgorithmName;
  /** Backends with positive weight; `table` values index into this array. */
  readonly targets: readonly BackendTarget[];
  readonly table: Int32Array;
  readonly size: number;
  /** Per-pick "already excluded" marks, stamped with `epoch` so nothing is cleared or allocated per pick. */
  private readonly seen: Uint32Array;
  private epoch = 0;

  /** `size` overrides the table size (kernel-forwarded services size it to their backends: node/lb/nat-table.ts). */
  constructor(algorithm: AlgorithmName, targets: readonly BackendTarget[], size?: number) {
    this.algorithm = algorithm;
    const usable = targets.filter((t) => t.weight > 0 && Number.isFinite(t.weight));
    const key = (t: BackendTarget) => t.hashKey ?? t.id;
    usable.sort((a, b) => (key(a) === key(b) ? a.weight - b.weight : key(a) < key(b) ? -1 : 1));
    this.targets = usable;
    this.size = size ?? maglevTableSize(usable.length);
    this.table = buildMaglevTable(
      usable.map(key),
      usable.map((t) => t.weight),
      this.size,
    );
    this.seen = new Uint32Array(usable.length);
  }

  /** Maglev is a pure function of the hash (the epoch marks are scratch space, not state a pick depends on). */
  peek(hash: number, exclude: Exclude | null): BackendTarget | null {
    return this.pick(hash, exclude);
  }

  pick(hash: number, exclude: Exclude | null): BackendTarget | null {
    const n = this.targets.length;
    if (n === 0) return null;
    const m = this.size;
    let c = (hash >>> 0) % m;
    const first = this.targets[this.table[c]];
    if (exclude === null || !exclude(first)) return first;

    // Walk forward through the table: neighbouring entries belong to effectively random backends,
    // so a down backend's flows spread over the rest, and every node walks to the same one.
    if (++this.epoch === 0xffffffff) {
      this.seen.fill(0);
      this.epoch = 1;
    }
    const epoch = this.epoch;
    this.seen[this.table[c]] = epoch;
    let rejected = 1;
    for (let step = 1; step < m && rejected < n; step++) {
      if (++c === m) c = 0;
      const idx = this.table[c];
      if (this.seen[idx] === epoch) continue;
      const t = this.targets[idx];
      if (!exclude(t)) return t;
      this.seen[idx] = epoch;
      rejected++;
    }
    return null;
  }
}

export const maglev: PickerFactory = {
  name: "maglev",
  hashSourceOnly: false,
  build: (targets) => new MaglevPicker("maglev", targets),
};

/** Maglev over the client IP alone, so all of a client's connections land on the same backend. */
export const sourceIp: PickerFactory = {
  name: "source-ip",
  hashSourceOnly: true,
  build: (targets) => new MaglevPicker("source-ip", targets),
};

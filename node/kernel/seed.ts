// The cluster-wide hash seed of the kernel rules. nftables picks a random seed per rule when none is
// given, and then two nodes with identical maps disagree; every node must use the same one. It is
// derived from the cluster name (no etcd record to write, read or lose, known before the first
// snapshot), so nodes of one cluster agree and nodes of two clusters sharing a host do not collide.
import { hashString } from "../lb/hash.js";

/** Mixed with the cluster name so the seed is unrelated to other hashes of the same string. */
const SEED_DOMAIN = "ballast/nat-seed/";

export function clusterSeed(cluster: string): number {
  return hashString(`${SEED_DOMAIN}${cluster}`) >>> 0;
}

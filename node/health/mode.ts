// The verdict mode of a node: where the verdicts that route come from.

/** "shared": the elected leader's verdicts; "local-fallback": this node's own checks; "standalone": no cluster. */
export type NodeMode = "standalone" | "shared" | "local-fallback";

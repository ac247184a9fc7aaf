// The verdict mode of a node: where the verdicts that route come from. One spelling, in the node
// record (shared/codec.ts): "shared" (the elected leader's verdicts), "local-fallback" (this node's
// own checks), "standalone" (no cluster).
export type { NodeMode } from "../../shared/api.js";

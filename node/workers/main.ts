// Entry of a data-plane worker process (forked by node/workers/pool.ts through node:cluster).
import { runWorker } from "./worker.js";

runWorker();

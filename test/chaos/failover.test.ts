// Scenarios 1–5, 7 and 8 on one shared cluster, in order. Each starts from the baseline (every
// container back, every node ready and announced, every backend up: ChaosCluster.restore), records
// its figures and prints them. Scenario 6 (etcd members killed) has its own cluster and file.
import { backendKilled } from "./scenarios/backend-killed.js";
import { flappingBackend } from "./scenarios/flapping-backend.js";
import { gracefulStop } from "./scenarios/graceful-stop.js";
import { leaderKilled } from "./scenarios/leader-killed.js";
import { leaderPaused } from "./scenarios/leader-paused.js";
import { nodeCut } from "./scenarios/node-cut.js";
import { nodeKilled } from "./scenarios/node-killed.js";
import { sharedCluster } from "./shared-cluster.js";

const cluster = sharedCluster();
nodeKilled(cluster);
leaderKilled(cluster);
backendKilled(cluster);
nodeCut(cluster);
leaderPaused(cluster);
flappingBackend(cluster);
gracefulStop(cluster);

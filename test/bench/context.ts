// What every bench phase gets: options, the process group, the run folder, progress output, results.
import type { ProcessGroup } from "./procs.js";
import type { Results } from "./report.js";

export interface Options {
  quick: boolean;
  profile: boolean;
  rounds: number;
  /** Seconds per throughput run (keep-alive, new connections). */
  durationS: number;
  /** Skip the control-plane figures (--no-control-plane). */
  controlPlane: boolean;
  /** Use the Node HTTP backend even when nginx is installed (--node-backend). */
  nodeBackend: boolean;
  /** Also Ballast `workers: 2` and HAProxy `nbthread 2` through the namespaces (--workers). */
  workers: boolean;
}

export interface Context {
  opts: Options;
  group: ProcessGroup;
  runDir: string;
  resultsDir: string;
  results: Results;
  log: (msg: string) => void;
  /** Run after every process is stopped, at the end, on Ctrl-C and on failure (namespaces, socket folders). */
  cleanups: (() => Promise<void>)[];
}

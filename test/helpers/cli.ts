// The compiled `ballast` CLI (dist/, as users run it) against a test's etcd and cluster name: one
// run, its exit code and both outputs, whether it succeeded or not (the tests check the error text).
import { execFile } from "node:child_process";
import { promisify } from "node:util";
import { CLI } from "./node.js";

const run = promisify(execFile);

export interface CliResult {
  code: number;
  stdout: string;
  stderr: string;
}

/**
 * A `ballast` runner bound to one cluster. `endpoint` is read at each run, so the runner can be made
 * at top level before the file's shared etcd has started.
 */
export function ballastCli(endpoint: () => string, cluster: string): (...args: string[]) => Promise<CliResult> {
  return async (...args) => {
    try {
      const r = await run(process.execPath, [CLI, "--etcd", endpoint(), "--cluster", cluster, ...args]);
      return { code: 0, stdout: r.stdout, stderr: r.stderr };
    } catch (err) {
      const e = err as CliResult;
      return { code: e.code, stdout: e.stdout, stderr: e.stderr };
    }
  };
}

// Runs nft: a ruleset is written to a file and loaded with `nft -f FILE` (one atomic transaction per
// file). Never stdin: `nft -f -` fails when stdin is a Node child-process pipe (a socketpair:
// "/dev/stdin: No such device or address"). Errors come back as values with nft's own message.
import { execFile } from "node:child_process";
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";

export interface NftResult {
  ok: boolean;
  /** nft's stderr (or the spawn error), trimmed; "" on success. */
  error: string;
  stdout: string;
  ms: number;
}

export interface NftRunner {
  /** Loads a ruleset script as one transaction. */
  load(script: string): Promise<NftResult>;
  /** Runs `nft <args>` (list, delete): for reads and the flush command. */
  run(args: string[]): Promise<NftResult>;
}

const TIMEOUT_MS = 60_000;

/** `bin args`, or inside network namespace `netns` (`ip netns exec`: tests, tools) when given. */
function exec(bin: string, args: string[], netns?: string): Promise<NftResult> {
  const started = performance.now();
  const [file, argv] = netns ? ["ip", ["netns", "exec", netns, bin, ...args]] : [bin, args];
  return new Promise((resolve) => {
    execFile(file, argv, { timeout: TIMEOUT_MS, maxBuffer: 256 * 1024 * 1024 }, (err, stdout, stderr) => {
      const ms = performance.now() - started;
      if (!err) return resolve({ ok: true, error: "", stdout: String(stdout), ms });
      const e = err as NodeJS.ErrnoException;
      const missing = e.code === "ENOENT" || /exec of "[^"]+" failed: No such file/.test(String(stderr));
      const error = missing ? `${bin} is not installed (apt-get install nftables)` : String(stderr).trim() || e.message;
      resolve({ ok: false, error, stdout: String(stdout), ms });
    });
  });
}

/** The runner of the node's own namespace (or of `netns`), using `nft` from PATH (or `bin`). */
export function nftRunner(opts: { bin?: string; netns?: string } = {}): NftRunner {
  const bin = opts.bin ?? "nft";
  let dir: string | null = null;
  let n = 0;
  return {
    async load(script: string): Promise<NftResult> {
      dir ??= mkdtempSync(join(tmpdir(), "ballast-nft-"));
      const file = join(dir, `ruleset-${process.pid}-${n++}.nft`);
      writeFileSync(file, script);
      try {
        return await exec(bin, ["-f", file], opts.netns);
      } finally {
        rmSync(file, { force: true });
      }
    },
    run: (args) => exec(bin, args, opts.netns),
  };
}

/**
 * Why this node cannot program nftables, or null when it can: `nft list tables` needs both the
 * binary and CAP_NET_ADMIN (netlink answers EPERM without it), and it reads nothing of anyone's rules.
 */
export async function nftUnavailable(runner: NftRunner): Promise<string | null> {
  const r = await runner.run(["list", "tables"]);
  if (r.ok) return null;
  if (/not installed/.test(r.error)) return r.error;
  if (/Operation not permitted|Permission denied|EPERM/i.test(r.error)) return "no CAP_NET_ADMIN: the node may not program nftables (run as root or grant CAP_NET_ADMIN)";
  return `nft does not work here: ${r.error}`;
}

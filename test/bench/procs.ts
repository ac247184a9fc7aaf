// Owns every process the bench starts: spawns them in their own process group, keeps their output in
// results/logs/, and kills them all at the end, on Ctrl-C and on an exception.
import { type ChildProcess, spawn } from "node:child_process";
import { createWriteStream, mkdirSync, type WriteStream } from "node:fs";
import { join } from "node:path";

export interface SpawnOptions {
  env?: Record<string, string>;
  cwd?: string;
  /** Raise the child's open-file limit (soft, up to the hard limit) through a bash wrapper. */
  nofile?: number;
}

type LineListener = (line: string) => void;

export class Proc {
  readonly lines: string[] = [];
  private readonly listeners = new Set<LineListener>();
  readonly exited: Promise<number | null>;
  exitCode: number | null | undefined = undefined;

  constructor(
    readonly name: string,
    readonly child: ChildProcess,
    log: WriteStream,
  ) {
    const onData = (stream: "out" | "err") => {
      let partial = "";
      return (chunk: Buffer) => {
        log.write(chunk);
        const text = partial + chunk.toString("utf8");
        const parts = text.split("\n");
        partial = parts.pop() ?? "";
        for (const line of parts) {
          if (this.lines.length < 2000) this.lines.push(`${stream}: ${line}`);
          for (const l of this.listeners) l(line);
        }
      };
    };
    child.stdout?.on("data", onData("out"));
    child.stderr?.on("data", onData("err"));
    this.exited = new Promise((resolve) => {
      child.on("exit", (code, signal) => {
        this.exitCode = code ?? (signal ? -1 : null);
        log.end();
        resolve(code);
      });
      child.on("error", (err) => {
        log.write(`spawn error: ${err.message}\n`);
        this.exitCode = -1;
        resolve(-1);
      });
    });
  }

  get pid(): number {
    return this.child.pid ?? -1;
  }

  get running(): boolean {
    return this.exitCode === undefined;
  }

  /** Resolves with the first output line matching `re` (already printed lines count), rejects on exit or timeout. */
  waitForLine(re: RegExp, timeoutMs: number): Promise<string> {
    for (const l of this.lines) {
      const line = l.slice(5);
      if (re.test(line)) return Promise.resolve(line);
    }
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        this.listeners.delete(listener);
        reject(new Error(`${this.name}: no line matching ${re} within ${timeoutMs} ms; last output:\n${this.tail()}`));
      }, timeoutMs);
      const listener: LineListener = (line) => {
        if (!re.test(line)) return;
        clearTimeout(timer);
        this.listeners.delete(listener);
        resolve(line);
      };
      this.listeners.add(listener);
      void this.exited.then(() => {
        if (!this.listeners.has(listener)) return;
        clearTimeout(timer);
        this.listeners.delete(listener);
        reject(new Error(`${this.name} exited (${this.exitCode}) before printing ${re}; last output:\n${this.tail()}`));
      });
    });
  }

  /** Calls `listener` with every output line from now on; returns the function that stops it. */
  onLine(listener: (line: string) => void): () => void {
    this.listeners.add(listener);
    return () => this.listeners.delete(listener);
  }

  tail(n = 15): string {
    return this.lines.slice(-n).join("\n");
  }

  /** All stdout lines that parse as JSON objects (agents report results this way). */
  jsonLines(): Record<string, unknown>[] {
    const out: Record<string, unknown>[] = [];
    for (const l of this.lines) {
      if (!l.startsWith("out: {")) continue;
      try {
        out.push(JSON.parse(l.slice(5)) as Record<string, unknown>);
      } catch {
        // not a JSON line
      }
    }
    return out;
  }

  signal(sig: NodeJS.Signals): void {
    if (!this.running || this.pid <= 0) return;
    try {
      process.kill(this.pid, sig);
    } catch {
      // already gone
    }
  }

  /** SIGTERM the whole process group, SIGKILL after `graceMs`. */
  async stop(graceMs = 3000): Promise<void> {
    if (!this.running || this.pid <= 0) return;
    killGroup(this.pid, "SIGTERM");
    const timer = setTimeout(() => killGroup(this.pid, "SIGKILL"), graceMs);
    await this.exited;
    clearTimeout(timer);
    killGroup(this.pid, "SIGKILL");
  }

  kill(): void {
    killGroup(this.pid, "SIGKILL");
  }
}

function killGroup(pid: number, sig: NodeJS.Signals): void {
  if (pid <= 0) return;
  try {
    process.kill(-pid, sig);
  } catch {
    try {
      process.kill(pid, sig);
    } catch {
      // already gone
    }
  }
}

export class ProcessGroup {
  private readonly procs = new Set<Proc>();
  private cleaning = false;

  constructor(private readonly logDir: string) {
    mkdirSync(logDir, { recursive: true });
  }

  start(name: string, command: string, args: string[], opts: SpawnOptions = {}): Proc {
    let cmd = command;
    let argv = args;
    if (opts.nofile) {
      // `ulimit -n` fails above the hard limit; fall back to the hard limit then.
      const quoted = [command, ...args].map(shellQuote).join(" ");
      cmd = "bash";
      argv = ["-c", `ulimit -n ${opts.nofile} 2>/dev/null || ulimit -n $(ulimit -Hn); exec ${quoted}`];
    }
    const log = createWriteStream(join(this.logDir, `${name}.log`), { flags: "a" });
    log.write(`\n=== ${new Date().toISOString()} ${cmd} ${argv.join(" ")}\n`);
    const child = spawn(cmd, argv, {
      cwd: opts.cwd,
      env: { ...process.env, ...opts.env },
      stdio: ["ignore", "pipe", "pipe"],
      detached: true,
    });
    const proc = new Proc(name, child, log);
    this.procs.add(proc);
    void proc.exited.then(() => this.procs.delete(proc));
    return proc;
  }

  async stopAll(): Promise<void> {
    if (this.cleaning) return;
    this.cleaning = true;
    await Promise.all([...this.procs].map((p) => p.stop(2000)));
    this.cleaning = false;
  }

  /** Synchronous last resort for process 'exit'. */
  killAllNow(): void {
    for (const p of this.procs) p.kill();
  }
}

export function shellQuote(s: string): string {
  return /^[A-Za-z0-9_./:=@%+,-]+$/.test(s) ? s : `'${s.replace(/'/g, "'\\''")}'`;
}

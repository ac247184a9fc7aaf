// dig (bind9-dnsutils) as the real DNS client of the DNS tests, and its output parsed into what the
// tests assert on: status, header flags, answer records, and whether dig fell back to TCP.
import { execFile } from "node:child_process";

export interface DigResult {
  status: string;
  flags: string[];
  /** Answer section rdata, in the order received. */
  answers: string[];
  /** Answer section types (A, AAAA, NS, SOA, HINFO …), parallel to `answers`. */
  types: string[];
  authority: string[];
  additional: string[];
  /** dig got TC over UDP and retried over TCP. */
  retriedTcp: boolean;
  raw: string;
}

export function dig(port: number, name: string, type = "A", extra: string[] = [], server = "127.0.0.1"): Promise<DigResult> {
  const args = [`@${server}`, "-p", String(port), name, type, "+time=2", "+tries=1", "+norecurse", "+nocookie", ...extra];
  return new Promise((resolve, reject) => {
    execFile("dig", args, { timeout: 10_000 }, (err, stdout) => {
      // dig exits 9 on "no servers could be reached": a real failure for these tests.
      if (err && !stdout.includes("status:")) {
        reject(new Error(`dig ${args.join(" ")} failed: ${err.message}\n${stdout}`));
        return;
      }
      resolve(parseDig(stdout));
    });
  });
}

export function parseDig(out: string): DigResult {
  const status = /status: ([A-Z]+)/.exec(out)?.[1] ?? "";
  const flags = (/;; flags: ([a-z ]+);/.exec(out)?.[1] ?? "").trim().split(/\s+/).filter(Boolean);
  const sections: Record<string, string[][]> = { ANSWER: [], AUTHORITY: [], ADDITIONAL: [] };
  let current: string | null = null;
  for (const line of out.split("\n")) {
    const head = /^;; (ANSWER|AUTHORITY|ADDITIONAL) SECTION:/.exec(line);
    if (head) {
      current = head[1];
      continue;
    }
    if (line.trim() === "" || line.startsWith(";")) {
      if (line.trim() === "") current = null;
      continue;
    }
    if (current) sections[current].push(line.trim().split(/\s+/));
  }
  const rdata = (f: string[]) => f.slice(4).join(" ");
  return {
    status,
    flags,
    answers: sections.ANSWER.map(rdata),
    types: sections.ANSWER.map((f) => f[3]),
    authority: sections.AUTHORITY.map((f) => `${f[3]} ${rdata(f)}`),
    additional: sections.ADDITIONAL.map((f) => `${f[0]} ${f[3]} ${rdata(f)}`),
    retriedTcp: out.includes("Truncated, retrying in TCP mode"),
    raw: out,
  };
}

// DNS figures: queries per second one Ballast node's DNS responder answers (dnsperf over UDP on
// loopback, bounded by duration and outstanding queries), next to dnsmasq answering the same name
// from its config as a reference when it is installed. RRL is off on the measured node: one source
// sending this much is exactly what RRL is there to stop, and it would measure RRL, not answering.
import { spawnSync } from "node:child_process";
import { writeFileSync } from "node:fs";
import { join } from "node:path";
import { cliPath, repoRoot, waitReady, BallastNode } from "./ballast.js";
import type { Context } from "./context.js";
import type { Etcd } from "./etcd.js";
import { freePort, sleep } from "./net.js";
import { which } from "./tools.js";

const ZONE = "bench.test";
const NAME = `web.${ZONE}`;

interface PerfResult {
  qps: number;
  lost: number;
  sent: number;
  avgLatencyMs: number;
  raw: string;
}

/** One bounded dnsperf run: `durationS` seconds, at most 100 queries in flight, from one source. */
function dnsperf(port: number, queryFile: string, durationS: number): PerfResult {
  const r = spawnSync("dnsperf", ["-s", "127.0.0.1", "-p", String(port), "-d", queryFile, "-l", String(durationS), "-c", "1", "-q", "100", "-t", "2"], { encoding: "utf8", timeout: (durationS + 20) * 1000 });
  const out = `${r.stdout ?? ""}${r.stderr ?? ""}`;
  const num = (re: RegExp) => Number(re.exec(out)?.[1] ?? Number.NaN);
  return {
    qps: num(/Queries per second:\s+([\d.]+)/),
    sent: num(/Queries sent:\s+(\d+)/),
    lost: num(/Queries lost:\s+(\d+)/),
    avgLatencyMs: num(/Average Latency \(s\):\s+([\d.]+)/) * 1000,
    raw: out,
  };
}

async function answers(port: number): Promise<boolean> {
  const r = spawnSync("dig", [`@127.0.0.1`, "-p", String(port), NAME, "A", "+short", "+time=1", "+tries=1"], { encoding: "utf8", timeout: 5000 });
  return r.stdout.trim() === "127.0.0.11";
}

async function waitAnswers(port: number, what: string): Promise<void> {
  const end = Date.now() + 20_000;
  while (Date.now() < end) {
    if (await answers(port)) return;
    await sleep(200);
  }
  throw new Error(`${what} does not answer ${NAME} on 127.0.0.1:${port}`);
}

export async function runDns(ctx: Context, etcd: Etcd): Promise<void> {
  const { log, group, runDir, opts, results } = ctx;
  if (!which("dnsperf") || !which("dig")) {
    results.notes.push("DNS: dnsperf or dig not installed (Debian dnsperf, bind9-dnsutils): no DNS figures.");
    return;
  }
  const durationS = opts.durationS;
  const queryFile = join(runDir, "dnsperf-queries.txt");
  writeFileSync(queryFile, `${NAME} A\n`);

  log("DNS: starting a Ballast node with the DNS responder …");
  const cluster = "bench-dns";
  await etcd.put(`/ballast/${cluster}/services/web`, JSON.stringify({ listen: "127.0.0.1:0", health: { type: "none" } }));
  await etcd.put(`/ballast/${cluster}/dns`, JSON.stringify({ zone: ZONE, ttl: 5 }));
  const adminPort = await freePort();
  const dnsPort = await freePort();
  const file = join(runDir, "ballast-dns.yaml");
  writeFileSync(
    file,
    [
      "node: { id: bench-dns, publicAddresses: [127.0.0.11] }",
      `cluster: ${cluster}`,
      `admin: { listen: "127.0.0.1:${adminPort}" }`,
      "log: { level: warn }",
      `etcd: { endpoints: ["${etcd.url}"] }`,
      `dns: { listen: "127.0.0.1:${dnsPort}", rrl: { responsesPerSecond: 0 } }`,
      "",
    ].join("\n"),
  );
  const proc = group.start("ballast-dns", process.execPath, [cliPath, "node", "--config", file], { cwd: repoRoot });
  const node = new BallastNode("bench-dns", proc, adminPort, { id: "bench-dns", cluster, etcdUrl: etcd.url, runDir });
  await waitReady(node, 30_000);
  await waitAnswers(dnsPort, "the Ballast DNS responder");
  const ballast = dnsperf(dnsPort, queryFile, durationS);
  writeFileSync(join(runDir, "logs", "dnsperf-ballast.txt"), ballast.raw);
  await proc.stop(5000);
  log(`DNS: Ballast ${Math.round(ballast.qps)} queries/s (lost ${ballast.lost} of ${ballast.sent}, avg ${ballast.avgLatencyMs.toFixed(2)} ms)`);

  let reference: PerfResult | null = null;
  if (which("dnsmasq")) {
    const refPort = await freePort();
    const ref = group.start("dnsmasq", "dnsmasq", ["-k", "-p", String(refPort), "--listen-address=127.0.0.1", "--bind-interfaces", "--no-resolv", "--no-hosts", `--address=/${NAME}/127.0.0.11`, "--log-facility=-"], { cwd: runDir });
    try {
      await waitAnswers(refPort, "dnsmasq");
      reference = dnsperf(refPort, queryFile, durationS);
      writeFileSync(join(runDir, "logs", "dnsperf-dnsmasq.txt"), reference.raw);
      log(`DNS: dnsmasq ${Math.round(reference.qps)} queries/s (lost ${reference.lost} of ${reference.sent})`);
    } catch (err) {
      results.notes.push(`DNS reference (dnsmasq) not measured: ${(err as Error).message}`);
    }
    await ref.stop(2000);
  }
  const ratio = reference && reference.qps > 0 ? ` (${(ballast.qps / reference.qps).toFixed(2)}× dnsmasq's ${Math.round(reference.qps)}/s)` : "";
  results.controlPlane.push({
    name: "DNS queries/s answered by one node (dnsperf, UDP, 1 source, ≤ 100 in flight, RRL off)",
    value: Number.isFinite(ballast.qps) ? `${Math.round(ballast.qps)}/s${ratio}` : "no figure (see logs/dnsperf-ballast.txt)",
    meets: null,
    note: `lost ${ballast.lost} of ${ballast.sent}, average latency ${ballast.avgLatencyMs.toFixed(2)} ms; reference: dnsmasq answering the same name from its config (no etcd, C)`,
    data: { ballast: { ...ballast, raw: undefined }, reference: reference ? { ...reference, raw: undefined } : null },
  });
}

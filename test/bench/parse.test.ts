// The bench's parsers and statistics on fixed inputs: wrk's text report, V8 CPU profiles, medians.
import { spawn } from "node:child_process";
import { mkdtempSync, writeFileSync } from "node:fs";
import net from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { describe, expect, it } from "vitest";
import { forwarderStatus } from "./kernel-modes.js";
import { parseWrk } from "./load.js";
import { summarizeProfile } from "./profile.js";
import { addSample, markdown, newResults, pairedRatio } from "./report.js";
import { median, percentile, ratio } from "./stats.js";

const WRK_KEEPALIVE = `Running 2s test @ http://127.0.0.1:28081/
  1 threads and 64 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency     1.30ms    1.72ms  44.41ms   95.32%
    Req/Sec    38.65k     3.12k   42.10k    80.00%
  Latency Distribution
     50%    1.28ms
     75%    1.40ms
     90%    1.63ms
     99%    5.70ms
  76902 requests in 2.00s, 12.32MB read
Requests/sec:  38437.02
Transfer/sec:      6.16MB
`;

const WRK_ERRORS = `Running 10s test @ http://127.0.0.1:28082/
  1 threads and 32 connections
  Latency Distribution
     50%  812.00us
     75%    1.10ms
     90%    2.00ms
     99%    1.02s
  590 requests in 10.00s, 94.00KB read
  Socket errors: connect 0, read 2, write 0, timeout 1
  Non-2xx or 3xx responses: 4
Requests/sec:     59.00
Transfer/sec:      9.40KB
`;

describe("parseWrk", () => {
  const cases = [
    { description: "keep-alive run", input: WRK_KEEPALIVE, expected: { rps: 38437.02, p50Ms: 1.28, p99Ms: 5.7, requests: 76902, errors: 0 } },
    { description: "microseconds, seconds and errors", input: WRK_ERRORS, expected: { rps: 59, p50Ms: 0.812, p99Ms: 1020, requests: 590, errors: 7 } },
  ];
  for (const c of cases) {
    it(c.description, () => {
      const r = parseWrk(c.input);
      expect(r.rps).toBeCloseTo(c.expected.rps, 5);
      expect(r.p50Ms).toBeCloseTo(c.expected.p50Ms, 5);
      expect(r.p99Ms).toBeCloseTo(c.expected.p99Ms, 5);
      expect(r.requests).toBe(c.expected.requests);
      expect(r.errors).toBe(c.expected.errors);
    });
  }

  it("a run that never connected parses as zero requests, not as an exception", () => {
    const r = parseWrk("unable to connect to 127.0.0.1:1 Connection refused\n");
    expect(r.requests).toBe(0);
    expect(Number.isNaN(r.p99Ms)).toBe(true);
  });
});

describe("stats", () => {
  it("median and nearest-rank percentile ignore NaN", () => {
    expect(median([3, 1, Number.NaN, 2])).toBe(2);
    expect(median([4, 1, 3, 2])).toBe(2.5);
    expect(Number.isNaN(median([]))).toBe(true);
    expect(percentile([1, 2, 3, 4, 5, 6, 7, 8, 9, 10], 99)).toBe(10);
    expect(percentile([1, 2, 3, 4, 5, 6, 7, 8, 9, 10], 50)).toBe(5);
    expect(Number.isNaN(ratio(1, 0))).toBe(true);
  });
});

describe("summarizeProfile", () => {
  it("ranks self time, leaves out idle and the start-up window, and credits Ballast frames inclusively", () => {
    // root → relay (ballast) → writeBuffer (native); root → (idle). Sample times: 1 ms apart.
    const profile = {
      nodes: [
        { id: 1, callFrame: { functionName: "(root)", url: "", lineNumber: -1, columnNumber: -1 }, children: [2, 4, 5] },
        { id: 2, callFrame: { functionName: "relay", url: "file:///x/dist/node/data/tcp.js", lineNumber: 9, columnNumber: 0 }, children: [3] },
        { id: 3, callFrame: { functionName: "writeBuffer", url: "", lineNumber: -1, columnNumber: -1 } },
        { id: 4, callFrame: { functionName: "(idle)", url: "", lineNumber: -1, columnNumber: -1 } },
        { id: 5, callFrame: { functionName: "compileSourceTextModule", url: "node:internal/modules/esm/utils", lineNumber: 1, columnNumber: 0 } },
      ],
      // Start-up sample first (t = 1 ms), then 3 × writeBuffer, 1 × relay, 4 × idle.
      samples: [5, 3, 3, 3, 2, 4, 4, 4, 4],
      timeDeltas: [1000, 1000, 1000, 1000, 1000, 1000, 1000, 1000, 1000],
    };
    const dir = mkdtempSync(join(tmpdir(), "bench-profile-"));
    const file = join(dir, "p.cpuprofile");
    writeFileSync(file, JSON.stringify(profile));
    const s = summarizeProfile(file, 1.5);
    expect(s.samples).toBe(8);
    expect(s.top[0]).toMatchObject({ name: "writeBuffer", owner: "native" });
    expect(s.top.some((f) => f.name === "compileSourceTextModule")).toBe(false);
    expect(s.top.some((f) => f.name === "(idle)")).toBe(false);
    expect(s.ballastInclusive[0]).toMatchObject({ name: "relay" });
    // relay: its own sample plus three writeBuffer samples under it, of four busy samples (the last
    // sample's duration is the previous delta, as for every sample).
    expect(s.ballastInclusive[0].inclusivePctBusy).toBe(100);
  });
});

describe("report", () => {
  it("puts every measured path side by side, names skipped ones with why, and marks ratio targets per mode", () => {
    const r = newResults("quick", { rounds: 2 });
    for (const [t, rps] of [["direct", [100, 110]], ["haproxy", [50, 50]], ["ballast-nat", [98, 100]]] as const) {
      for (const v of rps) addSample(r, "ka.rps", t, v);
    }
    r.skipped["ballast-dsr"] = "skipped — not built yet (the node refuses `forwarding: dsr`)";
    const md = markdown(r);
    expect(md).toContain("| figure | direct | HAProxy | Ballast NAT |");
    expect(md).toContain("**Ballast DSR**: skipped — not built yet");
    // NAT/HAProxy: median 99 / 50 = 1.98× against ≥ 1.3; per round 1.96 and 2.00. NAT/direct: 99/105 = 0.94× against ≥ 0.9.
    expect(md).toMatch(/\| keep-alive req\/s \(c=64\) \| 1\.98× \(1\.96–2\.00\) ✓ ≥ 1\.3 \| 0\.94× \(0\.91–0\.98\) ✓ ≥ 0\.9 \|/);
    expect(pairedRatio(r, "ka.rps", "ballast-nat", "haproxy")).toMatchObject({ n: 2, min: 1.96, max: 2 });
  });

  it("compares paths round by round: the median of per-round ratios, not the ratio of medians taken from different rounds", () => {
    // The quiet run of 2026-12-02 08:48: direct was slow in round 1, NAT in round 2.
    const r = newResults("full", { rounds: 3 });
    for (const v of [36015, 52593, 49350]) addSample(r, "ka.rps", "direct", v);
    for (const v of [40034, 23024, 47728]) addSample(r, "ka.rps", "ballast-nat", v);
    const x = pairedRatio(r, "ka.rps", "ballast-nat", "direct");
    expect(x.median).toBeCloseTo(47728 / 49350, 6);
    expect(x.ofMedians).toBeCloseTo(40034 / 49350, 6);
    expect(x.min).toBeCloseTo(23024 / 52593, 6);
    expect(x.max).toBeCloseTo(40034 / 36015, 6);
    expect(markdown(r)).toMatch(/\| keep-alive req\/s \(c=64\) \| [^|]*\| 0\.97× \(0\.44–1\.11\) ✓ ≥ 0\.9 \|/);
  });

  it("sets the proxy with the access log on and off side by side, with the load average", () => {
    const r = newResults("quick", { rounds: 1 });
    for (const [k, on, off] of [["ka.rps", 9000, 10000], ["nc.rps", 2000, 2500], ["ka.cpuUsPerReq", 50, 40], ["nc.cpuUsPerConn", 200, 160]] as const) {
      addSample(r, k, "ballast-log", on);
      addSample(r, k, "ballast-nolog", off);
    }
    r.dataPlaneLoad = { before: 1.5, after: 2.25 };
    const md = markdown(r);
    expect(md).toContain("### Access log cost");
    expect(md).toContain("| on (default: ≤ 1000 lines/s, batched) | 9,000 | 2,000 | 50.0 | 200.0 |");
    expect(md).toContain("| off (`accessLog.enabled: false`) | 10,000 | 2,500 | 40.0 | 160.0 |");
    expect(md).toContain("keep-alive req/s (c=64) 0.90×");
    expect(md).toContain("Load average (1 min) 1.50 when the rounds began, 2.25 when they ended");
    // Without the off path there is nothing to compare: no section.
    const alone = newResults("quick", { rounds: 1 });
    addSample(alone, "ka.rps", "ballast-log", 1);
    expect(markdown(alone)).not.toContain("Access log cost");
  });

  it("finds a forwarder's per-service status wherever /api/state nests it", () => {
    expect(forwarderStatus({ name: "s", dsr: { programmed: true, reason: null, revision: 12 } })).toEqual({ programmed: true, reason: null, revision: 12 });
    expect(forwarderStatus({ name: "s", kernel: { nat: { programmed: false, reason: "no nft" } } })).toMatchObject({ programmed: false });
    expect(forwarderStatus({ name: "s", backends: [] })).toBeNull();
  });
});

describe("relay agent", () => {
  it("carries bytes both ways between a TCP listener and a Unix socket", async () => {
    const dir = mkdtempSync(join(tmpdir(), "bench-relay-"));
    const sock = join(dir, "r.sock");
    const echo = net.createServer((s) => s.pipe(s));
    await new Promise<void>((r) => echo.listen(0, "127.0.0.1", () => r()));
    const target = (echo.address() as net.AddressInfo).port;
    const agent = fileURLToPath(new URL("../../dist/test/bench/agents/relay.js", import.meta.url));
    const relay = spawn(process.execPath, [agent, "--listen", `unix:${sock}`, "--to", `tcp:127.0.0.1:${target}`], { stdio: ["ignore", "pipe", "inherit"] });
    try {
      await new Promise<void>((resolve, reject) => {
        relay.stdout.on("data", (d: Buffer) => d.toString().includes('"ready":true') && resolve());
        relay.once("exit", (code) => reject(new Error(`relay exited ${code}`)));
      });
      const reply = await new Promise<string>((resolve, reject) => {
        const c = net.connect(sock, () => c.write("ping"));
        c.once("data", (d) => {
          resolve(d.toString());
          c.destroy();
        });
        c.once("error", reject);
      });
      expect(reply).toBe("ping");
    } finally {
      relay.kill("SIGKILL");
      echo.close();
    }
  });
});

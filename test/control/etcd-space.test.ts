// etcd's space quota, seen from a node: a real etcd with a small --quota-backend-bytes is filled by
// another client until it raises NOSPACE. The node reports the size against the quota before that
// (metrics, one warning line), then the alarm (metric, error line), and keeps serving through it.
import { readFileSync } from "node:fs";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { closeAllBackends, startTcpEcho, tcpExchange } from "../helpers/backends.js";
import { type EtcdProcess, startEtcd } from "../helpers/etcd.js";
import { type NodeProcess, spawnNode } from "../helpers/node.js";
import { waitFor } from "../helpers/wait.js";

const QUOTA = 4 * 1024 * 1024;
let etcd: EtcdProcess;
let node: NodeProcess;

beforeAll(async () => {
  etcd = await startEtcd({ extraArgs: [`--quota-backend-bytes=${QUOTA}`] });
});
afterAll(async () => {
  node?.kill("SIGKILL");
  await closeAllBackends();
  await etcd?.stop();
});

async function metric(admin: string, name: string): Promise<number | null> {
  const text = await (await fetch(`http://${admin}/metrics`)).text();
  const line = text.split("\n").find((l) => l.startsWith(name));
  return line === undefined ? null : Number(line.slice(line.lastIndexOf(" ") + 1));
}

describe("etcd space and alarms", () => {
  it("reports the database size against the quota, warns before NOSPACE, shows the alarm and keeps serving", async () => {
    const backend = await startTcpEcho("a");
    await etcd.put("/ballast/space/services/web", JSON.stringify({ listen: "127.0.0.1:0", health: { type: "none" } }));
    await etcd.put("/ballast/space/backends/web/a", `127.0.0.1:${backend.port}`);
    node = await spawnNode({ node: { id: "n1" }, cluster: "space", etcd: { endpoints: [etcd.endpoint], quotaBytes: QUOTA, spaceCheck: "200ms" } });
    const admin = node.admin;
    await waitFor(async () => ((await metric(admin, "ballast_etcd_db_size_bytes")) ?? 0) > 0, { message: "db size reported" });
    expect(await metric(admin, "ballast_etcd_db_quota_bytes")).toBe(QUOTA);
    expect(await metric(admin, 'ballast_etcd_alarm{alarm="NOSPACE"')).toBeNull();
    // Every etcd metric the example alert rules use is one the node exports.
    const rules = readFileSync(join(dirname(fileURLToPath(import.meta.url)), "../../deploy/prometheus/ballast-alerts.yml"), "utf8");
    const used = new Set(rules.match(/\bballast_etcd_[a-z_]+/g));
    expect(used.size).toBeGreaterThanOrEqual(3);
    const exported = await (await fetch(`http://${admin}/metrics`)).text();
    for (const name of used) expect(exported, name).toContain(`# TYPE ${name} `);

    // Another client fills etcd (distinct keys, 100 KiB each — 2.4% of the quota, and an argument to
    // etcdctl, so under the kernel's 128 KiB per argument; no compaction). First to past 80%: the node warns.
    const value = "x".repeat(100 * 1024);
    const dbSize = async () => (JSON.parse(await etcd.etcdctl("endpoint", "status", "-w", "json")) as Array<{ Status: { dbSize: number } }>)[0].Status.dbSize;
    let i = 0;
    while ((await dbSize()) < 0.82 * QUOTA && i < 200) await etcd.etcdctl("put", `/other/fill/${i++}`, value);
    const spaceLines = () => node.logs.filter((l) => l.includes('"module":"etcd-space"')).map((l) => JSON.parse(l) as { level: number; msg: string });
    await waitFor(() => spaceLines().some((l) => l.level === 40 && /of its quota/.test(l.msg)), { message: "the warning at 80%" });
    expect(await metric(admin, 'ballast_etcd_alarm{alarm="NOSPACE"')).toBeNull();

    // Then until etcd refuses writes: the alarm.
    let refused = "";
    while (refused === "" && i < 200) await etcd.etcdctl("put", `/other/fill/${i++}`, value).catch((err: Error) => (refused = err.message));
    expect(refused).toMatch(/database space exceeded/);
    await waitFor(async () => (await metric(admin, 'ballast_etcd_alarm{alarm="NOSPACE"')) === 1, { message: "NOSPACE alarm metric" });
    expect((await metric(admin, "ballast_etcd_db_size_bytes"))!).toBeGreaterThanOrEqual(0.82 * QUOTA);
    await waitFor(() => spaceLines().some((l) => l.level === 50 && /etcd alarm NOSPACE/.test(l.msg)), { message: "the alarm's error line" });
    // One line per change of level, not one per check.
    expect(spaceLines().filter((l) => /etcd alarm NOSPACE/.test(l.msg))).toHaveLength(1);
    expect(spaceLines().filter((l) => l.level === 40)).toHaveLength(1);

    // etcd refuses writes, the node still forwards (fail-static): its snapshot is unchanged.
    const port = (await (await fetch(`http://${admin}/api/state`)).json()).services.find((s: { name: string }) => s.name === "web").boundPort as number;
    expect(await tcpExchange(port, "hi")).toBe("a:hi");
    // ~40 etcdctl processes: seconds on a quiet machine, tens of them on a loaded one.
  }, 120_000);
});

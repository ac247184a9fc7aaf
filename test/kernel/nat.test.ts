// forwarding: nat end to end in namespaces: the kernel forwarder programs the lb namespace's
// nftables from a snapshot; a client namespace opens real TCP/UDP flows through it to backend
// namespaces. The TypeScript jhash predicts the kernel's backend for every flow.
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { createLogger } from "../../node/log.js";
import { conntrackTool } from "../../node/kernel/conntrack.js";
import { explainNat, KernelForwarder } from "../../node/kernel/forwarder.js";
import { nftRunner } from "../../node/kernel/nft.js";
import { netnsUnavailable } from "../helpers/netns.js";
import { CLIENT, createLab, type Lab, labSnapshot, VIP } from "./lab.js";

const skip = netnsUnavailable();
const log = createLogger(process.env.BALLAST_TEST_LOG ?? "silent");
const ports = (from: number, n: number) => Array.from({ length: n }, (_, i) => from + i);

function natService(extra: Record<string, unknown> = {}, backends = 3, protocol = "tcp") {
  const b: Record<string, Record<string, unknown>> = {};
  for (let i = 0; i < backends; i++) b[`b${i}`] = { address: `10.77.2.${10 + i}`, port: 8080 };
  return { service: { listen: `${VIP}:80`, protocol, forwarding: "nat", algorithm: "maglev", ...extra }, backends: b };
}

describe.skipIf(skip !== null)("forwarding: nat in the kernel (namespaces)", () => {
  let lab: Lab;
  const forwarders: KernelForwarder[] = [];
  const forwarder = (cluster = "lab") => {
    const f = new KernelForwarder({ cluster, log, runner: nftRunner({ netns: lab.lb.name }), conntrack: conntrackTool({ netns: lab.lb.name }) });
    forwarders.push(f);
    return f;
  };
  beforeAll(async () => {
    lab = await createLab(3);
  });
  afterAll(async () => {
    for (const f of forwarders) await f.close();
    await lab?.destroy();
  });

  it("TCP full NAT: 1000 flows reach the backend the TypeScript jhash predicts, backends see the node's address", async () => {
    const f = forwarder();
    const snap = labSnapshot(5, { web: natService() });
    await f.apply(snap);
    expect(f.status("web")).toEqual({ programmed: true, reason: null, revision: 5 });
    const svc = snap.services.get("web")!;
    const got = await lab.flows("tcp", ports(20000, 1000));
    let agree = 0;
    const seen = new Set<string>();
    for (const [p, answer] of got) {
      const [name, from] = answer.split(" ");
      expect(from, `flow from port ${p}: ${answer}`).toBe("10.77.2.1");
      seen.add(name);
      if (explainNat(svc, f.seed, CLIENT, p).backend?.id === name) agree++;
    }
    expect(got.size).toBe(1000);
    expect(agree).toBe(1000);
    expect(seen.size).toBe(3);
  });

  it("UDP full NAT: 300 flows reach the predicted backend", async () => {
    const f = forwarder();
    const snap = labSnapshot(6, { dns: natService({}, 3, "udp") });
    await f.apply(snap);
    const svc = snap.services.get("dns")!;
    const got = await lab.flows("udp", ports(30000, 300));
    const wrong = [...got].filter(([p, a]) => explainNat(svc, f.seed, CLIENT, p).backend?.id !== a.split(" ")[0]);
    expect(wrong).toEqual([]);
  });
});

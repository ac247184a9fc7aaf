// The node's config file: validated by the schema, unknown keys rejected, every error naming the
// field path; the node refuses to start on an invalid file with a short message and exit code 1.
import { spawnSync } from "node:child_process";
import { mkdtempSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { describe, expect, it } from "vitest";
import { loadConfig } from "../node/config-file.js";
import { CLI } from "./helpers/node.js";

function file(text: string): string {
  const p = join(mkdtempSync(join(tmpdir(), "ballast-cfg-")), "c.yaml");
  writeFileSync(p, text);
  return p;
}

describe("config file", () => {
  it.each([
    { description: "a bad listen address", yaml: "services:\n  - name: web\n    listen: nowhere\n", path: "services[0].listen" },
    { description: "an unknown key", yaml: "admin:\n  listen: 127.0.0.1:9000\n  colour: red\n", path: "admin: unknown key(s) \"colour\"" },
    { description: "a bad algorithm", yaml: "services:\n  - name: web\n    listen: 127.0.0.1:1\n    algorithm: fastest\n", path: "services[0].algorithm" },
    { description: "a bad duration", yaml: "drainTimeout: soon\n", path: "drainTimeout: expected a duration" },
    { description: "a backend port out of range", yaml: "services:\n  - name: web\n    listen: 127.0.0.1:1\n    backends:\n      - { id: a, address: 10.0.0.1, port: 0 }\n", path: "services[0].backends[0].port" },
    { description: "a NAT source that is no address", yaml: "nat:\n  sourceAddresses: [node-a]\n", path: "nat.sourceAddresses[0]" },
    { description: "two NAT sources of one family", yaml: "nat:\n  sourceAddresses: [10.0.0.1, 10.0.0.2]\n", path: "nat.sourceAddresses: at most one IPv4 and one IPv6 address" },
    { description: "services with etcd", yaml: "etcd: { endpoints: [http://127.0.0.1:2379] }\nservices:\n  - name: web\n    listen: 127.0.0.1:1\n", path: "services: only for standalone mode" },
  ])("names the field path for $description", ({ yaml, path }) => {
    expect(() => loadConfig(file(yaml))).toThrow(path);
  });

  it("allowed values are listed for enums", () => {
    expect(() => loadConfig(file("services:\n  - name: web\n    listen: 127.0.0.1:1\n    protocol: sctp\n"))).toThrow(/"tcp"\|"udp"|tcp.*udp/);
  });

  it("the node refuses to start on an invalid file: one screen, exit code 1, no stack trace", () => {
    const r = spawnSync(process.execPath, [CLI, "node", "--config", file("services:\n  - name: web\n    listen: 127.0.0.1:99999\n")], { encoding: "utf8" });
    expect(r.status).toBe(1);
    expect(r.stderr).toContain("services[0].listen");
    expect(r.stderr).not.toMatch(/\n\s+at /);
    expect(r.stderr.split("\n").length).toBeLessThan(20);
  });
});

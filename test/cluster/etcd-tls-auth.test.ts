// etcd over TLS with authentication, as production runs it: certificates made here with openssl, a
// role that may only read and write the cluster's prefix, a node and the CLI using it, and the error a
// wrong password gives.
import { execFile, execFileSync } from "node:child_process";
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { promisify } from "node:util";
import { afterAll, describe, expect, it } from "vitest";
import { closeAllBackends, startTcpEcho, tcpExchange } from "../helpers/backends.js";
import { type EtcdProcess, startEtcd } from "../helpers/etcd.js";
import { CLI, portOf, startNode, stopAllNodes } from "../helpers/node.js";
import { waitFor } from "../helpers/wait.js";

const dir = mkdtempSync(join(tmpdir(), "ballast-tls-"));
let etcd: EtcdProcess | undefined;

afterAll(async () => {
  await stopAllNodes();
  await closeAllBackends();
  await etcd?.stop();
  rmSync(dir, { recursive: true, force: true });
});

/** A CA, and a certificate for 127.0.0.1 it signed (server and client use), all valid for a day. */
function makeCerts(): { ca: string; cert: string; key: string } {
  const f = (name: string) => join(dir, name);
  const ssl = (...args: string[]) => execFileSync("openssl", args, { stdio: "pipe" });
  ssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=ballast-test-ca", "-keyout", f("ca.key"), "-out", f("ca.pem"));
  ssl("req", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=127.0.0.1", "-keyout", f("server.key"), "-out", f("server.csr"));
  writeFileSync(f("ext.cnf"), "subjectAltName=IP:127.0.0.1\nextendedKeyUsage=serverAuth,clientAuth\n");
  ssl("x509", "-req", "-in", f("server.csr"), "-CA", f("ca.pem"), "-CAkey", f("ca.key"), "-CAcreateserial", "-days", "1", "-extfile", f("ext.cnf"), "-out", f("server.pem"));
  return { ca: f("ca.pem"), cert: f("server.pem"), key: f("server.key") };
}

describe("etcd with TLS and authentication", () => {
  it("a node whose role covers only its cluster prefix runs; the CLI reports a wrong password clearly", async () => {
    const certs = makeCerts();
    etcd = await startEtcd({ tls: { cert: certs.cert, key: certs.key, ca: certs.ca } });
    const tlsArgs = [`--cacert=${certs.ca}`, `--cert=${certs.cert}`, `--key=${certs.key}`];
    const ctl = (...args: string[]) => etcd!.etcdctl(...tlsArgs, ...args);
    await ctl("user", "add", "root:rootpw", "--interactive=false");
    await ctl("user", "grant-role", "root", "root");
    await ctl("role", "add", "ballast");
    await ctl("role", "grant-permission", "ballast", "--prefix=true", "readwrite", "/ballast/secure/");
    await ctl("user", "add", "ballast:ballastpw", "--interactive=false");
    await ctl("user", "grant-role", "ballast", "ballast");
    await ctl("auth", "enable");
    const root = [...tlsArgs, "--user=root:rootpw"];
    // The role really is limited: outside the prefix the ballast user is refused.
    await expect(etcd.etcdctl(...tlsArgs, "--user=ballast:ballastpw", "put", "/ballast/other/x", "1")).rejects.toThrow(/permission denied/);

    const a = await startTcpEcho("a");
    await etcd.etcdctl(...root, "put", "/ballast/secure/services/web", JSON.stringify({ listen: "127.0.0.1:0", health: { type: "tcp", interval: "200ms" } }));
    await etcd.etcdctl(...root, "put", "/ballast/secure/backends/web/a", `127.0.0.1:${a.port}`);

    const node = await startNode({
      node: { id: "tls1" },
      cluster: "secure",
      etcd: { endpoints: [etcd.endpoint], username: "ballast", password: "ballastpw", tls: { ca: certs.ca, cert: certs.cert, key: certs.key }, leaseTtl: 2 },
    });
    await waitFor(() => (node.plane.listenerOf("web")?.boundPort ?? 0) > 0, { message: "web listening" });
    expect(await tcpExchange(portOf(node, "web"), "hi")).toBe("a:hi");
    // Registration, health leadership and verdicts are all written under the prefix with that role.
    await waitFor(async () => (await etcd!.etcdctl(...root, "get", "--prefix", "--keys-only", "/ballast/secure/")).includes("/ballast/secure/nodes/tls1"), { message: "node registered" });
    await waitFor(async () => (await etcd!.etcdctl(...root, "get", "--prefix", "--keys-only", "/ballast/secure/health/verdicts/")).includes("web/a"), { message: "verdict written" });

    const cli = (password: string) =>
      promisify(execFile)(process.execPath, [CLI, "--etcd", etcd!.endpoint, "--cacert", certs.ca, "--cert", certs.cert, "--key", certs.key, "--user", "ballast", "--password", password, "--cluster", "secure", "-o", "json", "node", "ls"]);
    const ok = JSON.parse((await cli("ballastpw")).stdout) as Array<{ id: string }>;
    expect(ok.map((n) => n.id)).toEqual(["tls1"]);
    const bad = await cli("wrong").then(
      () => null,
      (err: { code: number; stderr: string }) => err,
    );
    expect(bad?.code).toBe(1);
    expect(bad?.stderr).toMatch(/^ballast: etcd at https:\/\/127\.0\.0\.1:\d+ refused the credentials of user ballast: .*authentication failed.* \(check --user and --password\)$/m);
  }, 120_000);
});

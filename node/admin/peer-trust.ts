// Which other nodes' admin APIs may be sent the admin token (by the status page and by the CLI).
//
// A node record is written by whoever can write to etcd, and its `admin` address is where a status
// page or `ballast status` would send `Authorization: Bearer <token>`. Passing validation only says the
// address is well formed, not that it is ours. So the token goes to a peer only when its admin host is
// on an operator's list: CIDRs or addresses ("10.0.0.0/8", "::1") for IP hosts, exact names
// ("lb2.example") for DNS hosts. The default list is empty: the token stays with the page's own origin
// (and, for the CLI, with the node named by --node).
import { parseHostPort } from "../../shared/address.js";
import { CidrList } from "../model/access.js";

export class PeerTrust {
  private readonly cidrs: CidrList;
  private readonly names: Set<string>;

  /** Throws naming the bad entry (prefixed by `field`) when an entry is neither a CIDR nor a DNS name. */
  constructor(entries: readonly string[], field = "admin.trustedPeers") {
    const cidrs: string[] = [];
    this.names = new Set();
    entries.forEach((entry, i) => {
      const e = entry.trim();
      if (/^[0-9.]+(\/\d+)?$/.test(e) || e.includes(":")) cidrs.push(e);
      else if (/^[a-zA-Z0-9.-]{1,253}$/.test(e)) this.names.add(e.toLowerCase());
      else throw new Error(`${field}[${i}]: expected a CIDR, an IP address or a DNS name, got ${JSON.stringify(entry)}`);
    });
    this.cidrs = new CidrList(cidrs, field);
  }

  /** Whether the admin address ("host:port", IPv6 in brackets) may be sent the token. */
  trusts(admin: string): boolean {
    const hp = typeof admin === "string" ? parseHostPort(admin) : null;
    if (hp === null) return false;
    return this.names.has(hp.host.toLowerCase()) || this.cidrs.contains(hp.host);
  }
}

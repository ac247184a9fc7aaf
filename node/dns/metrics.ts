// Prometheus metrics of the DNS responder, read from its plain counters at scrape time.
import client from "prom-client";
import { collectedCounter } from "../collect.js";
import type { DnsResponder } from "./responder.js";

export function registerDnsMetrics(r: client.Registry, dns: DnsResponder): void {
  new client.Counter({
    name: "ballast_dns_queries_total",
    help: "DNS queries answered (or dropped by RRL after being read), by query type and response code.",
    labelNames: ["type", "rcode"],
    registers: [r],
    collect() {
      this.reset();
      for (const [key, n] of dns.stats.queries) {
        const bar = key.indexOf("|");
        this.inc({ type: key.slice(0, bar), rcode: key.slice(bar + 1) }, n);
      }
    },
  });
  const counter = (name: string, help: string, read: () => number) => collectedCounter({ name, help, registry: r, read: (emit) => emit({}, read()) });
  counter("ballast_dns_answers_total", "Address records (A/AAAA) sent in answers.", () => dns.stats.answers);
  counter("ballast_dns_cache_hits_total", "Queries answered from the reply cache of the current view (same query bytes, same client rotation): no decode, no encode.", () => dns.cache.hits);
  counter("ballast_dns_truncated_total", "UDP replies truncated (TC) because they did not fit; the client retries over TCP.", () => dns.stats.truncated);
  counter("ballast_dns_dropped_total", "Datagrams or frames that were not DNS queries (too short, responses): dropped unanswered.", () => dns.stats.dropped);
  counter("ballast_dns_tcp_connections_total", "DNS TCP connections accepted.", () => dns.stats.tcpConnections);
  counter("ballast_dns_tcp_refused_total", "DNS TCP connections refused at dns.maxTcpConnections.", () => dns.stats.tcpRefused);
  new client.Counter({
    name: "ballast_dns_rrl_total",
    help: "UDP replies held back by response rate limiting: dropped, or sent truncated (slip).",
    labelNames: ["action"],
    registers: [r],
    collect() {
      this.reset();
      this.inc({ action: "drop" }, dns.stats.rrlDropped);
      this.inc({ action: "slip" }, dns.stats.rrlSlipped);
    },
  });
  new client.Gauge({
    name: "ballast_dns_rrl_sources",
    help: "Source prefixes RRL tracks now (bounded by dns.rrl.maxSources).",
    registers: [r],
    collect() {
      this.set(dns.rrl.size);
    },
  });
  new client.Gauge({
    name: "ballast_dns_live_nodes",
    help: "Nodes the DNS view answers with (registered, ready, not draining, with a public address).",
    registers: [r],
    collect() {
      this.set(dns.view?.nodes.filter((n) => n.live).length ?? 0);
    },
  });
}

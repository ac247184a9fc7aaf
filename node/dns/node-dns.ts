// The DNS responder as part of a node: rebuilds the DNS view whenever the cluster view (node records,
// the `dns` record) or the snapshot changes, and describes it for /api/state, the CLI and the status page.
import type { NodeRecord } from "../../shared/codec.js";
import type { NodeConfig } from "../../shared/schema.js";
import type { Logger } from "../log.js";
import type { Reconciler } from "../control/reconciler.js";
import type { Metrics } from "../metrics.js";
import { registerDnsMetrics } from "./metrics.js";
import { DnsResponder } from "./responder.js";
import { buildDnsView } from "./view.js";

/** What the DNS side needs of a node (a narrow context, not the whole node). */
export interface DnsContext {
  readonly config: NodeConfig;
  readonly log: Logger;
  readonly reconciler: Reconciler;
  readonly metrics: Metrics;
}

export class NodeDns {
  readonly responder: DnsResponder;

  constructor(private readonly ctx: DnsContext) {
    const c = ctx.config.dns!;
    this.responder = new DnsResponder({ listen: c.listen, rrl: c.rrl, maxTcpConnections: c.maxTcpConnections, tcpIdleMs: c.tcpIdle }, ctx.log.child({ component: "dns" }));
    registerDnsMetrics(ctx.metrics.registry, this.responder);
  }

  async start(): Promise<void> {
    this.refresh();
    await this.responder.listen();
    if (this.responder.error) this.ctx.log.error({ err: this.responder.error }, "dns responder failed to listen");
    else this.ctx.log.info({ address: this.responder.address }, "dns listening");
  }

  /** Called on every snapshot and cluster change: a draining or vanished node leaves the answers at once. */
  refresh(): void {
    const r = this.ctx.reconciler;
    const services = r.snapshot ? r.snapshot.services.keys() : [];
    this.responder.update(buildDnsView(r.dns.spec, r.nodes.values() as Iterable<NodeRecord>, services, r.appliedRevision));
  }

  close(): Promise<void> {
    return this.responder.close();
  }

  /** The DNS section of /api/state. */
  describe() {
    const v = this.responder.view;
    const r = this.ctx.reconciler;
    return {
      listen: this.responder.address || this.ctx.config.dns!.listen,
      error: this.responder.error,
      recordError: r.dns.error,
      zone: v?.zone ?? null,
      serial: v?.serial ?? 0,
      ttl: v?.ttl ?? 0,
      nameservers: v?.nameservers ?? [],
      names: v
        ? [...v.names.values()].map((n) => ({
            name: n.fqdn,
            service: n.service,
            ttl: n.ttl,
            answers: n.answers,
            locality: n.locality,
            addresses: [...n.v4.all, ...n.v6.all].map((a) => ({ node: a.node, zone: a.zone, address: a.address })),
          }))
        : [],
      nodes: v?.nodes ?? [],
      problems: v?.problems ?? [],
      queries: Object.fromEntries(this.responder.stats.queries),
      rrl: { sources: this.responder.rrl.size, dropped: this.responder.stats.rrlDropped, slipped: this.responder.stats.rrlSlipped },
    };
  }
}

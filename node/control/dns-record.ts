// The cluster's `dns` record: parsed and validated like every person-written record; a bad update keeps
// the last good value (and is listed with its key and reason), so a typo never takes the zone away.
import { type DnsRecordSpec, dnsRecordSchema } from "../../shared/schema.js";
import { parseJsonRecord } from "./records.js";

export function parseDnsValue(raw: Buffer): DnsRecordSpec {
  return parseJsonRecord(raw, dnsRecordSchema);
}

/** The `dns` key's state on this node: the good value in use and the error of the latest value, if any. */
export class DnsRecordSlot {
  spec: DnsRecordSpec | null = null;
  error: string | null = null;
  /** etcd mod revision of the good value: the zone's SOA serial follows it. */
  revision = 0;

  put(raw: Buffer, modRevision: number): void {
    try {
      this.spec = parseDnsValue(raw);
      this.revision = modRevision;
      this.error = null;
    } catch (err) {
      this.error = (err as Error).message;
    }
  }

  delete(): void {
    this.spec = null;
    this.error = null;
    this.revision = 0;
  }
}

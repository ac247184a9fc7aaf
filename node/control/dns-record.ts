// The cluster's `dns` record: parsed and validated like every person-written record; a bad update keeps
// the last good value (and is listed with its key and reason), so a typo never takes the zone away.
import { type DnsRecordSpec, dnsRecordSchema, formatIssues } from "../../shared/schema.js";
import { MAX_RECORD_BYTES } from "./records.js";

export function parseDnsValue(raw: Buffer): DnsRecordSpec {
  if (raw.length > MAX_RECORD_BYTES) throw new Error(`value of ${raw.length} bytes exceeds ${MAX_RECORD_BYTES}`);
  let json: unknown;
  try {
    json = JSON.parse(raw.toString("utf8"));
  } catch (err) {
    throw new Error(`invalid JSON: ${(err as Error).message}`);
  }
  const r = dnsRecordSchema.safeParse(json);
  if (!r.success) throw new Error(formatIssues(r.error).join("; "));
  return r.data;
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

// Health settings parsed alone, as a service of `protocol` would get them (its default check type):
// for tests that drive the checker or the leader without a whole service record.
import type { z } from "zod";
import { type CheckType, healthSchema } from "../../shared/schema.js";

export function parseHealth(input: unknown, protocol: "tcp" | "udp" = "tcp"): z.output<typeof healthSchema> & { type: CheckType } {
  const h = healthSchema.parse(input);
  return { ...h, type: h.type ?? (protocol === "udp" ? "udp" : "tcp") };
}

// Admission of a new TCP connection or UDP flow, one rule for both: draining, the listener's own cap,
// access policy, source rate. The refuse reason is the counter label and the log field.
import type { ServiceState } from "../model/snapshot.js";
import type { RefuseReason } from "../model/stats.js";
import type { SourceRateLimiter } from "./rate-limit.js";

/**
 * Null when the client may open a connection/flow, else why not. `full` is the listener's own cap
 * already measured (TCP "max-connections", UDP "max-flows"), null when under it. Allocates nothing.
 */
export function admit(
  draining: boolean,
  full: "max-connections" | "max-flows" | null,
  svc: ServiceState,
  limiter: SourceRateLimiter | null,
  ip: string,
  now: number,
): RefuseReason | null {
  if (draining) return "draining";
  if (full !== null) return full;
  if (svc.access !== null && !svc.access.permits(ip)) return "denied";
  if (limiter !== null && !limiter.take(ip, now)) return "rate-limited";
  return null;
}

// Local fallback spreads its probes (issue 19): when etcd goes away every node falls back at about the
// same moment, and each starts a backend's probes at its own phase of the interval (salted by its
// node id) instead of all at the phase the backend's key alone gives. The leader's phase is unchanged.
import { describe, expect, it } from "vitest";
import { type CheckTarget, phaseOf } from "../../node/health/checker.js";
import type { HealthSettings } from "../../node/health/checks.js";

const INTERVAL = 1_000;
const JITTER = 0.5;
const target = (key: string): CheckTarget => {
  const [service, id] = key.split("/");
  return { key, service, id, host: "127.0.0.1", port: 1, kind: "tcp", settings: { interval: INTERVAL, jitter: JITTER } as HealthSettings };
};

describe("fallback probe phases", () => {
  it("differ between nodes for the same backend, stay within jitter × interval, and are stable per node", () => {
    const window = INTERVAL * JITTER;
    for (const key of ["web/a", "web/b", "dns/10.0.0.7"]) {
      const t = target(key);
      const phases = Array.from({ length: 40 }, (_, i) => phaseOf(t, `node-${i + 1}`));
      for (const p of phases) {
        expect(p).toBeGreaterThanOrEqual(0);
        expect(p).toBeLessThan(window);
      }
      // 40 nodes over 500 ms: nearly all distinct, and spread over most of the window.
      expect(new Set(phases).size, key).toBeGreaterThanOrEqual(35);
      expect(Math.max(...phases) - Math.min(...phases), key).toBeGreaterThan(window / 2);
      expect(phaseOf(t, "node-7")).toBe(phases[6]);
    }
  });

  it("without a salt (the leader's checker) is the backend key's own phase, as before", () => {
    const t = target("web/a");
    expect(phaseOf(t)).toBe(phaseOf(t, ""));
    expect(phaseOf(t, "node-1")).not.toBe(phaseOf(t));
  });
});

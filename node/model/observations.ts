// The observations of the cluster's observer nodes as this node has read them (health/observations/
// <service>/<node>, issue 17). Filled by the reconciler from the watch; read by the health leader.
import { type Observation, parseObservation } from "../../shared/codec.js";

export class ObservationTable {
  private readonly byService = new Map<string, Map<string, Observation>>();

  /** Parses and stores one record; throws with the reason for a bad one (the caller lists it as invalid, and it no longer counts). */
  put(service: string, node: string, value: Buffer): void {
    let m = this.byService.get(service);
    try {
      const obs = parseObservation(node, value);
      if (!m) {
        m = new Map();
        this.byService.set(service, m);
      }
      m.set(node, obs);
    } catch (err) {
      m?.delete(node);
      throw err;
    }
  }

  delete(service: string, node: string): void {
    const m = this.byService.get(service);
    if (!m) return;
    m.delete(node);
    if (m.size === 0) this.byService.delete(service);
  }

  clear(): void {
    this.byService.clear();
  }

  get(service: string, node: string): Observation | undefined {
    return this.byService.get(service)?.get(node);
  }
}

// Registry of load-balancing algorithms: the snapshot builder resolves a service's algorithm name here.
import type { AlgorithmName } from "../../shared/schema.js";
import type { PickerFactory } from "./algorithm.js";
import { leastConn } from "./least-conn.js";
import { maglev, sourceIp } from "./maglev.js";
import { p2c } from "./p2c.js";
import { roundRobin } from "./round-robin.js";

const FACTORIES: Readonly<Record<AlgorithmName, PickerFactory>> = {
  "round-robin": roundRobin,
  "least-conn": leastConn,
  p2c,
  maglev,
  "source-ip": sourceIp,
};

export function pickerFactory(name: AlgorithmName): PickerFactory {
  return FACTORIES[name];
}

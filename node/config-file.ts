// Reads a node's config file (YAML) and validates it against the node schema. Its own module so the
// CLI loads yaml and the schema only for `ballast node` (issue 19: every other command starts faster).
import { readFileSync } from "node:fs";
import { parse as parseYaml } from "yaml";
import { formatIssues, type NodeConfig, nodeConfigSchema } from "../shared/schema.js";

/** A config file that cannot be read or is invalid: the message is what the operator sees. */
export class ConfigFileError extends Error {}

/** Loads and validates a node config file; every problem names its field path. */
export function loadConfig(path: string): NodeConfig {
  let text: string;
  try {
    text = readFileSync(path, "utf8");
  } catch (err) {
    throw new ConfigFileError(`cannot read config ${path}: ${(err as Error).message}`);
  }
  let doc: unknown;
  try {
    doc = parseYaml(text) ?? {};
  } catch (err) {
    throw new ConfigFileError(`config ${path} is not valid YAML: ${(err as Error).message}`);
  }
  const r = nodeConfigSchema.safeParse(doc);
  if (!r.success) throw new ConfigFileError(`config ${path} is invalid:\n  ${formatIssues(r.error).join("\n  ")}`);
  if (r.data.etcd && r.data.services.length > 0) {
    throw new ConfigFileError(`config ${path} is invalid:\n  services: only for standalone mode; with etcd, write services with \`ballast service put\``);
  }
  return r.data;
}

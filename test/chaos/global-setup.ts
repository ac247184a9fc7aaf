// Global setup of the chaos suite: checks Docker, rebuilds the images from the current build (the
// base images only when their inputs changed), removes what dead earlier runs left, and at the end
// prints one table of every scenario's figures.
import { execFileSync } from "node:child_process";
import { mkdirSync, writeFileSync } from "node:fs";
import { dirname } from "node:path";
import { docker, IMAGES, sweepOrphans } from "./cluster.js";
import { FIGURES_FILE, type Figure, formatFigures, readFiguresFile } from "./figures.js";

let startedAt = 0;

export async function setup(): Promise<void> {
  startedAt = Date.now();
  try {
    await docker.ping();
  } catch (err) {
    throw new Error(`Docker is not reachable (${String(err)}): run \`bash .ci/images.sh\` first (installs and starts it, builds the images)`);
  }
  if (process.env.BALLAST_CHAOS_SKIP_BUILD !== "1") {
    // npm run test:chaos has just compiled dist/; the node image must carry that build.
    execFileSync("bash", ["deploy/images/build.sh"], { stdio: "inherit", env: { ...process.env, BALLAST_SKIP_NPM_BUILD: "1" } });
  }
  for (const image of Object.values(IMAGES)) {
    try {
      await docker.getImage(image).inspect();
    } catch {
      throw new Error(`image ${image} is missing: run \`bash deploy/images/build.sh\``);
    }
  }
  const swept = await sweepOrphans();
  if (swept > 0) console.log(`chaos: removed ${swept} containers/networks left by earlier runs`);
  mkdirSync(dirname(FIGURES_FILE), { recursive: true });
  writeFileSync(FIGURES_FILE, "");
}

export async function teardown(): Promise<void> {
  await sweepOrphans().catch(() => 0);
  // In scenario order whatever order the files ran in; rows without a number (setup) first.
  const order = (f: Figure) => Number.parseInt(f.scenario, 10) || 0;
  const figures = readFiguresFile()
    .map((f, i) => ({ f, i }))
    .sort((a, b) => order(a.f) - order(b.f) || a.i - b.i)
    .map(({ f }) => f);
  figures.push({ scenario: "suite", figure: "wall time (images, every file, teardown)", value: Math.round((Date.now() - startedAt) / 1000), unit: "s" });
  process.stdout.write(`\nChaos suite figures (${FIGURES_FILE}):\n${formatFigures(figures)}\n`);
}

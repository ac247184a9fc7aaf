import { defineConfig } from "vitest/config";

// The chaos suite (npm run test:chaos): real containers, one file at a time, long timeouts. Needs
// Docker and the local images (bash .ci/images.sh); the global setup rebuilds the node image.
export default defineConfig({
  test: {
    include: ["test/chaos/**/*.test.ts"],
    globalSetup: ["test/chaos/global-setup.ts"],
    testTimeout: 180_000,
    hookTimeout: 240_000,
    // Scenarios share the machine's two cores with a dozen containers: never two files at once.
    maxWorkers: 1,
    fileParallelism: false,
    env: {
      // The reaper image cannot be pulled here; the harness removes what it creates.
      TESTCONTAINERS_RYUK_DISABLED: "true",
      TESTCONTAINERS_HOST_OVERRIDE: "127.0.0.1",
    },
  },
});

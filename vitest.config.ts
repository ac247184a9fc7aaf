import { defineConfig } from "vitest/config";

// Tests run from TypeScript sources; child-process nodes run the compiled dist/ (npm test builds first).
export default defineConfig({
  test: {
    include: ["test/**/*.test.ts"],
    globalSetup: ["test/global-setup.ts"],
    exclude: ["test/chaos/**", "node_modules/**", "dist/**"],
    testTimeout: 30_000,
    hookTimeout: 60_000,
    // Two cores: files that start etcd and several nodes must not all run at once.
    maxWorkers: 2,
  },
});

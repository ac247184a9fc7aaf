// Preloaded (--import) into a profiled Ballast node: SIGUSR2 exits cleanly so --cpu-prof writes its file
// without waiting for a graceful drain.
process.on("SIGUSR2", () => process.exit(0));

// Container health check: exit 0 when the node's admin API answers /readyz with 200, 1 otherwise.
// Plain JS so it runs in any image with node; the port comes from BALLAST_ADMIN_PORT (default 9090).
const port = Number(process.env.BALLAST_ADMIN_PORT || 9090);
const url = `http://127.0.0.1:${port}/readyz`;
try {
  const res = await fetch(url, { signal: AbortSignal.timeout(2000) });
  process.exit(res.status === 200 ? 0 : 1);
} catch {
  process.exit(1);
}

// Host:port parsing shared by records, config and the CLI. IPv6 hosts are written in brackets.

export interface HostPort {
  host: string;
  port: number;
}

/** "10.0.0.5:8080", "[::1]:80", "backend.local:80" → {host, port}; null when malformed. */
export function parseHostPort(input: string): HostPort | null {
  const s = input.trim();
  let host: string;
  let portText: string;
  if (s.startsWith("[")) {
    const end = s.indexOf("]");
    if (end < 0 || s[end + 1] !== ":") return null;
    host = s.slice(1, end);
    portText = s.slice(end + 2);
  } else {
    const colon = s.lastIndexOf(":");
    if (colon <= 0 || s.indexOf(":") !== colon) return null;
    host = s.slice(0, colon);
    portText = s.slice(colon + 1);
  }
  if (!/^\d{1,5}$/.test(portText)) return null;
  const port = Number(portText);
  if (port < 0 || port > 65535 || host.length === 0) return null;
  return { host, port };
}

export function formatHostPort(host: string, port: number): string {
  return host.includes(":") ? `[${host}]:${port}` : `${host}:${port}`;
}

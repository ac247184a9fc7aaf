// What the bench agents share: argument parsing (`--key value` pairs), reports, and socket splicing.
import type { Socket } from "node:net";

export function parseArgs(argv: string[]): Record<string, string> {
  const out: Record<string, string> = {};
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i];
    if (!a.startsWith("--")) continue;
    const next = argv[i + 1];
    if (next === undefined || next.startsWith("--")) out[a.slice(2)] = "true";
    else {
      out[a.slice(2)] = next;
      i++;
    }
  }
  return out;
}

export function report(obj: Record<string, unknown>): void {
  process.stdout.write(`${JSON.stringify(obj)}\n`);
}

/** The i-th loopback source address of a block: 127.<hi>.x.y counting from `first` (e.g. 0x01000000 → 127.1.0.0). */
export function loopbackAddress(first: number, i: number): string {
  const n = first + i;
  return `127.${(n >>> 16) & 255}.${(n >>> 8) & 255}.${n & 255}`;
}

/** Pipes two sockets into each other; an error or close on either side destroys both. */
export function splice(a: Socket, b: Socket): void {
  const done = () => {
    a.destroy();
    b.destroy();
  };
  for (const s of [a, b]) {
    s.on("error", done);
    s.on("close", done);
  }
  a.pipe(b);
  b.pipe(a);
}

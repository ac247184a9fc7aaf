// The status page every node serves at `/`: one self-contained HTML document (inline CSS and JS from
// assets/status.css and assets/status.js, no external resources) that polls the documented admin API
// (types: shared/api.ts) and draws the whole cluster from any node.
//
// Data: GET /api/state of this node every second; GET /api/state of every other node (its `admin`
// address from nodes[]) every 2 s, cross-origin, for per-node applied revisions and cluster-wide
// counters — allowed by `allowsPeerOrigin` below; GET /api/route for the route explain box.
// Token: the page shell carries no cluster data and is served without the token (a browser cannot put
// a header on a navigation); open `/?token=T` once: the script keeps T in sessionStorage, removes it
// from the address bar and sends `Authorization: Bearer T` on every fetch to its own origin (or asks for
// it on a 401), and to another node only when /api/state marks it `trusted` (admin.trustedPeers): a
// node record's admin address is whatever its writer put in etcd.
import { createHash } from "node:crypto";
import { readFileSync } from "node:fs";

/**
 * Whether a page served by another node of the cluster may read this node's /api/state from the
 * browser: only origins that are some node's advertised admin address (`http://<admin>`), so an
 * unrelated web page the operator has open cannot read a token-less admin API on 127.0.0.1.
 */
export function allowsPeerOrigin(nodes: Iterable<{ admin: string }>, origin: string): boolean {
  if (!origin.startsWith("http://")) return false;
  const host = origin.slice("http://".length);
  for (const n of nodes) if (n.admin === host) return true;
  return false;
}

// The page's style and script are real files next to this one (copied into dist/ by `npm run build`);
// they are read once and inlined, so the page stays one self-contained document under a hash CSP.
const asset = (name: string) => readFileSync(new URL(`./assets/${name}`, import.meta.url), "utf8");
const CSS = asset("status.css");
const SCRIPT = asset("status.js");

const sha256 = (s: string) => createHash("sha256").update(s).digest("base64");

// Meta CSP: only this script and style run; data only from the admin APIs (this node and its peers).
const CSP = [
  "default-src 'none'",
  `script-src 'sha256-${sha256(SCRIPT)}'`,
  `style-src 'sha256-${sha256(CSS)}'`,
  "connect-src 'self' http: https:",
  "img-src data:",
  "base-uri 'none'",
  "form-action 'none'",
].join("; ");

const HTML = `<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta http-equiv="Content-Security-Policy" content="${CSP}">
<meta name="referrer" content="no-referrer">
<link rel="icon" href="data:,">
<title>Ballast</title>
<style>${CSS}</style>
</head>
<body>
<header>
<h1><span class="logo">Ballast</span><span id="cluster">…</span></h1>
<div class="facts" id="facts"></div>
<div class="live" id="live" aria-live="polite"></div>
</header>
<main id="app">
<div class="banner" id="token-banner" hidden><span id="token-msg"></span>
<form id="token-form"><input name="token" type="password" placeholder="token" autocomplete="off" aria-label="admin token"><button class="btn" type="submit">Use token</button></form></div>
<div class="banner" id="lost-banner" hidden></div>
<noscript><div class="banner">This page needs JavaScript; the same data is at /api/state.</div></noscript>
<div id="content" hidden>
<div class="summary" id="summary"></div>
<section class="card"><h2>Nodes <span class="sub mute">· registered in etcd; revision, store and connections as each node's own admin API reports them</span></h2><div id="nodes"></div></section>
<section class="card"><h2>Events <span class="sub mute">· this node's latest: verdicts, ejections, leadership, modes, drains, reloads, invalid records (<code>ballast events</code> for the cluster)</span></h2><div id="events"></div></section>
<div class="grid">
<section class="card"><h2>Invalid etcd records <span id="invalid-count"></span></h2><div id="invalid"></div></section>
<section class="card"><h2>Route explain</h2>
<form class="explain" id="explain" autocomplete="off">
<label for="ex-service">Service</label><select id="ex-service" name="service"></select>
<label for="ex-client">Client IP</label><input id="ex-client" name="client" value="192.0.2.10" spellcheck="false">
<label for="ex-port">Client port</label><input id="ex-port" name="port" placeholder="optional" inputmode="numeric">
<span></span><button class="btn" type="submit" id="ex-go">Explain</button>
</form>
<div class="answer" id="ex-answer" aria-live="polite"><span class="mute">Which backend would this node pick for a new connection from that client, and why.</span></div>
</section>
</div>
<section class="card" id="dns-card" hidden><h2>DNS <span class="sub mute">· what this node's DNS responder answers</span></h2><div id="dns"></div></section>
<h2>Services <span class="sub mute">· counters from <select id="scope" aria-label="counter scope"></select> <span id="scope-note"></span></span></h2>
<div id="services"></div>
</div>
</main>
<footer>Ballast status page · data from the documented admin API (/api/state, /api/route) · refreshes every second</footer>
<script>${SCRIPT}</script>
</body>
</html>
`;

const BODY = Buffer.from(HTML, "utf8");

/** The status page, for the admin server's `pages` map at "/". */
export function statusPage(): { contentType: string; body: Buffer } {
  return { contentType: "text/html; charset=utf-8", body: BODY };
}

// @ts-check
// The status page's script (served inline by node/admin/status-page.ts, under a hash CSP). Plain ES2020
// for the browser, type-checked by `tsc -p node/admin/assets` against the admin API's declared answers
// (shared/api.ts) and the DOM.
/** @typedef {import("../../../shared/api.js").StateView} StateView */
/** @typedef {import("../../../shared/api.js").RouteAnswer} RouteAnswer */
/** @typedef {import("../../../shared/api.js").NodeSummaryView} NodeSummaryView */
/** @typedef {import("../../../shared/api.js").EventView} EventView */
"use strict";
(function () {
  var TOKEN_KEY = "ballast.token";
  var POLL_MS = 1000, PEER_MS = 2000, FRESH_MS = 6000, HISTORY = 60;
  // Other nodes are asked for their /api/summary (a size independent of the cluster's), at most
  // PEER_BATCH per PEER_MS, in turn: at 100 nodes each is asked every 10 s, not 50 requests a second
  // (issue 19). FRESH_MS grows with the turn so a node asked less often is not shown as silent.
  var PEER_BATCH = 20, FRESH_BASE_MS = FRESH_MS;
  // Maps keyed by data (node ids, service names, backend ids) have no prototype: "constructor" or
  // "toString" are valid names, and on a plain object they would find Object's methods.
  /** @returns {Record<string, any>} */
  function dict() { return Object.create(null); }
  /**
   * Page state. `self` is this node's /api/state; `peers` hold other nodes' /api/summary answers by node id.
   * @type {{ token: string | null, refused: any, self: StateView | null, selfAt: number, skew: number, err: string,
   *   needToken: boolean, tokenRejected: boolean, peers: Record<string, any>, peerAt: number, peerCursor: number, rates: Record<string, any>,
   *   hist: Record<string, any>, sort: { col: string, dir: number }, scope: string, services: string,
   *   events: EventView[], eventsAt: number }}
   */
  var S = {
    token: null, refused: undefined, self: null, selfAt: 0, skew: 0, err: "", needToken: false, tokenRejected: false,
    peers: dict(), peerAt: 0, peerCursor: 0, rates: dict(), hist: dict(), sort: { col: "id", dir: 1 }, scope: "all", services: "",
    events: [], eventsAt: 0
  };

  // ?token=T once: kept for this tab only, and taken out of the address bar and history.
  try {
    var q = new URLSearchParams(location.search);
    if (q.has("token")) {
      sessionStorage.setItem(TOKEN_KEY, q.get("token") || "");
      q.delete("token");
      var rest = q.toString();
      history.replaceState(null, "", location.pathname + (rest ? "?" + rest : "") + location.hash);
    }
    S.token = sessionStorage.getItem(TOKEN_KEY) || null;
  } catch (e) { /* storage disabled: the token prompt still works for this page view */ }

  // ---- tiny DOM helpers (textContent only: etcd keys and reasons are untrusted text) ----
  /** Element with props, then its children appended in order (read through `arguments`). @type {(tag: string, props: Record<string, any> | null, ...children: any[]) => HTMLElement} */
  function h(tag, props) {
    var e = document.createElement(tag);
    if (props) for (var k in props) {
      var v = props[k];
      if (v === null || v === undefined || v === false) continue;
      if (k === "class") e.className = v;
      else if (k.slice(0, 2) === "on") e.addEventListener(k.slice(2), v);
      else e.setAttribute(k, v === true ? "" : String(v));
    }
    for (var i = 2; i < arguments.length; i++) add(e, arguments[i]);
    return e;
  }
  function add(e, c) {
    if (c === null || c === undefined || c === false) return;
    if (Array.isArray(c)) { for (var i = 0; i < c.length; i++) add(e, c[i]); return; }
    e.appendChild(typeof c === "object" ? c : document.createTextNode(String(c)));
  }
  /** An element of the page shell by id (the shell is this file's own HTML, so each exists). @param {string} id @returns {any} */
  function $(id) { return document.getElementById(id); }
  function fill(id, content) { var e = $(id); e.replaceChildren(); add(e, content); }
  function badge(kind, text, title) { return h("span", { class: "b b-" + kind, title: title }, text); }

  // ---- formatting ----
  var nf = new Intl.NumberFormat("en-US");
  function num(n) { return n === undefined || n === null ? "\u2014" : nf.format(n); }
  function rate(x) {
    if (x === null || x === undefined || !isFinite(x)) return "\u2014";
    if (x === 0) return "0";
    return x < 10 ? x.toFixed(1) : nf.format(Math.round(x));
  }
  function bytes(x, perSec) {
    if (x === null || x === undefined || !isFinite(x)) return "\u2014";
    var u = ["B", "KiB", "MiB", "GiB", "TiB"], i = 0;
    while (x >= 1024 && i < u.length - 1) { x /= 1024; i++; }
    return (i === 0 ? Math.round(x) : x < 10 ? x.toFixed(1) : Math.round(x)) + " " + u[i] + (perSec ? "/s" : "");
  }
  function dur(ms) {
    if (ms === null || ms === undefined || !isFinite(ms)) return "\u2014";
    if (ms < 0) ms = 0;
    if (ms < 1000 && ms % 1000 !== 0) return Math.round(ms) + " ms";
    var s = Math.floor(ms / 1000);
    if (s < 60) return s + " s";
    function two(big, bu, small, su) { return big + " " + bu + (small ? " " + small + " " + su : ""); }
    var m = Math.floor(s / 60); if (m < 60) return two(m, "m", s % 60, "s");
    var hr = Math.floor(m / 60); if (hr < 48) return two(hr, "h", m % 60, "m");
    return two(Math.floor(hr / 24), "d", hr % 24, "h");
  }
  function serverNow() { return Date.now() - S.skew; }
  function age(ms) { return ms < 1000 ? "< 1 s" : dur(Math.floor(ms / 1000) * 1000); }
  function ago(epochMs) { return epochMs ? age(serverNow() - epochMs) + " ago" : "\u2014"; }
  function when(epochMs) { return epochMs ? new Date(epochMs).toISOString().replace("T", " ").replace(/\.\d+Z$/, " UTC") : ""; }
  function sum(o) { var t = 0; if (o) for (var k in o) t += Number(o[k]) || 0; return t; }
  function parts(o) { var r = []; if (o) for (var k in o) if (o[k]) r.push(k + " " + o[k]); return r.join(", "); }

  // ---- the admin API ----
  // The token goes to this page's own origin, and to a peer only when this node says it is trusted
  // (admin.trustedPeers): a node record's admin address is whatever its writer put there.
  function api(base, path, timeoutMs, withToken) {
    var ctl = new AbortController();
    var timer = setTimeout(function () { ctl.abort(); }, timeoutMs || 3000);
    var headers = {};
    if (S.token && (base === "" || withToken === true)) headers.Authorization = "Bearer " + S.token;
    return fetch(base + path, { headers: headers, cache: "no-store", signal: ctl.signal }).then(function (res) {
      return res.json().catch(function () { return null; }).then(function (body) {
        return { status: res.status, body: body, date: res.headers.get("date") };
      });
    }).finally(function () { clearTimeout(timer); });
  }
  function errText(e) { return e && e.name === "AbortError" ? "timed out" : String((e && e.message) || e); }

  // ---- counters → rates, per node; sparkline history per scope ----
  function observe(id, st, at) {
    var r = S.rates[id] || (S.rates[id] = { prev: null, svc: dict(), be: dict(), t: 0 });
    var cur = { t: at, svc: dict(), be: dict() };
    (st.services || []).forEach(function (s) {
      cur.svc[s.name] = { acc: s.accepted || 0, bytes: (s.bytesIn || 0) + (s.bytesOut || 0) };
      (s.backends || []).forEach(function (b) { cur.be[s.name + "/" + b.id] = b.connections || 0; });
    });
    var p = r.prev;
    if (p && at > p.t) {
      var dt = (at - p.t) / 1000, svc = dict(), be = dict();
      for (var n in cur.svc) {
        var a = cur.svc[n], b0 = p.svc[n];
        // A counter that went down means the node restarted: no rate for this interval.
        if (b0 && a.acc >= b0.acc && a.bytes >= b0.bytes) svc[n] = { cps: (a.acc - b0.acc) / dt, bps: (a.bytes - b0.bytes) / dt };
      }
      for (var k in cur.be) if (p.be[k] !== undefined && cur.be[k] >= p.be[k]) be[k] = (cur.be[k] - p.be[k]) / dt;
      r.svc = svc; r.be = be; r.t = at;
    }
    r.prev = cur;
  }

  /** Node states in the current counter scope: {id: state}, fresh ones only. */
  function scoped() {
    var out = dict(), now = Date.now();
    if (!S.self) return out;
    var selfId = S.self.node.id;
    if (S.scope === "all" || S.scope === selfId) out[selfId] = S.self;
    for (var id in S.peers) {
      var p = S.peers[id];
      if (p.state && now - p.at < FRESH_MS && (S.scope === "all" || S.scope === id)) out[id] = p.state;
    }
    return out;
  }
  function scopedRate(kind, key) {
    var t = 0, have = false, st = scoped(), now = Date.now();
    for (var id in st) {
      var r = S.rates[id];
      if (!r || now - r.t > FRESH_MS) continue;
      var v = r[kind][key];
      if (v !== undefined) { have = true; t += kind === "svc" ? v.cps : v; }
    }
    return have ? t : null;
  }
  function scopedSvcBytes(name) {
    var t = 0, have = false, st = scoped(), now = Date.now();
    for (var id in st) {
      var r = S.rates[id];
      if (r && now - r.t <= FRESH_MS && r.svc[name]) { have = true; t += r.svc[name].bps; }
    }
    return have ? t : null;
  }
  function findSvc(st, name) { var l = st.services || []; for (var i = 0; i < l.length; i++) if (l[i].name === name) return l[i]; return null; }
  function findBe(s, id) { var l = (s && s.backends) || []; for (var i = 0; i < l.length; i++) if (l[i].id === id) return l[i]; return null; }
  function scopedSum(fn) { var t = 0, st = scoped(); for (var id in st) t += fn(st[id]) || 0; return t; }

  function sampleHistory() {
    if (!S.self) return;
    var scopes = ["all"].concat(Object.keys(S.rates));
    var saved = S.scope;
    scopes.forEach(function (sc) {
      S.scope = sc;
      var hs = S.hist[sc] || (S.hist[sc] = dict());
      (S.self.services || []).forEach(function (s) {
        var arr = hs[s.name] || (hs[s.name] = []);
        var v = scopedRate("svc", s.name);
        arr.push(v === null ? 0 : v);
        if (arr.length > HISTORY) arr.shift();
      });
    });
    S.scope = saved;
  }

  // ---- polling ----
  function tick() {
    var started = Date.now();
    // Waiting for a token: asking again with the one that was refused would only fail again.
    if (S.needToken && S.token === S.refused) {
      try { render(); } catch (e) { console.error("status page: render failed:", e); }
      setTimeout(tick, 250);
      return;
    }
    api("", "/api/state").then(function (r) {
      if (r.status === 401) {
        S.tokenRejected = !!S.token; S.needToken = true; S.refused = S.token; S.err = r.body && r.body.error || "401";
        return;
      }
      S.needToken = false;
      if (r.status !== 200 || !r.body) { S.err = "HTTP " + r.status; return; }
      S.err = "";
      var at = Date.now();
      if (r.date) { var d = at - Date.parse(r.date); S.skew = Math.abs(d) > 1500 ? d : 0; }
      S.self = r.body; S.selfAt = at;
      observe(r.body.node.id, r.body, at);
    }, function (e) { S.err = errText(e); }).then(function () {
      if (S.self && Date.now() - S.peerAt >= PEER_MS) { S.peerAt = Date.now(); pollPeers(); }
      if (S.self && Date.now() - S.eventsAt >= PEER_MS) {
        S.eventsAt = Date.now();
        api("", "/api/events").then(function (r) { if (r.status === 200 && r.body) S.events = r.body.events || []; }, function () {});
      }
      sampleHistory();
      render();
    }).catch(function (e) {
      // A bug drawing one poll's data must not end the page: say so, and poll again.
      console.error("status page: render failed:", e);
    }).finally(function () {
      setTimeout(tick, Math.max(100, POLL_MS - (Date.now() - started)));
    });
  }

  function pollPeers() {
    var selfId = S.self.node.id, seen = dict(), list = [];
    (S.self.nodes || []).forEach(function (n) {
      if (n.id === selfId || !n.admin) return;
      seen[n.id] = true;
      list.push(n);
    });
    for (var id in S.peers) if (!seen[id]) { delete S.peers[id]; delete S.rates[id]; }
    var turns = Math.max(1, Math.ceil(list.length / PEER_BATCH));
    FRESH_MS = FRESH_BASE_MS + (turns - 1) * PEER_MS;
    if (list.length === 0) return;
    var start = S.peerCursor % list.length;
    S.peerCursor = start + PEER_BATCH;
    for (var i = 0; i < Math.min(PEER_BATCH, list.length); i++) pollPeer(list[(start + i) % list.length]);
  }

  /** One peer's /api/summary (its /api/state when it is older and has none). */
  function pollPeer(n) {
    var p = S.peers[n.id] || (S.peers[n.id] = { state: null, at: 0, err: "", busy: false });
    if (p.busy) return;
    p.busy = true;
    var trusted = n.trusted === true || "http://" + n.admin === location.origin;
    api("http://" + n.admin, "/api/summary", 1800, trusted).then(function (r) {
      return r.status === 404 ? api("http://" + n.admin, "/api/state", 1800, trusted) : r;
    }).then(function (r) {
      if (r.status === 200 && r.body && r.body.node) {
        p.state = r.body; p.at = Date.now(); p.err = "";
        observe(n.id, r.body, p.at);
      } else if (r.status === 401 && !trusted) p.err = "token not sent: this node is not in admin.trustedPeers";
      else p.err = r.status === 401 ? "token rejected (401)" : "HTTP " + r.status;
    }, function (e) { p.err = errText(e) + " (unreachable, or its admin address is not this page's origin)"; })
      .finally(function () { p.busy = false; });
  }

  // ---- rendering ----
  function liveState() {
    if (!S.self) return S.err ? badge("down", "\u25CF no data: " + S.err) : badge("unk", "\u25CF connecting\u2026");
    var late = Date.now() - S.selfAt;
    if (S.err || late > 3000) return badge("down", "\u25CF stale: last update " + dur(late) + " ago", S.err);
    return badge("up", "\u25CF live", "polling /api/state every second");
  }

  function nodeList() {
    var st = S.self, list = (st.nodes || []).slice(), selfId = st.node.id;
    if (!list.some(function (n) { return n.id === selfId; })) {
      // Not registered (yet, or standalone): this node's own view stands in for its record.
      list.push({ id: selfId, address: st.node.admin, admin: st.node.admin, zone: st.node.zone, version: st.node.version, ready: st.node.ready,
        draining: st.node.draining, revision: st.revision, mode: st.node.mode, startedAt: st.node.startedAt, updatedAt: 0, trusted: true });
    }
    return list.sort(function (a, b) { return a.id < b.id ? -1 : a.id > b.id ? 1 : 0; });
  }

  function liveOf(id) {
    if (id === S.self.node.id) return { state: S.self, at: S.selfAt, err: S.err };
    return S.peers[id] || { state: null, at: 0, err: "" };
  }

  function readyBadge(n) {
    // An operator drain (ballast node drain / rollout) reports its figures; a SIGTERM drain only the flag.
    var d = n.drain;
    if (d && d.state === "drained") return badge("warn", "\u25D2 drained", "drain key set " + ago(d.since) + "; " + d.openAtStart + " open at start, " + d.open + " cut at drainTimeout");
    if (d) return badge("warn", "\u25D2 draining", "drain key set " + ago(d.since) + "; " + d.openAtStart + " open at start");
    if (n.draining) return badge("warn", "\u25D2 draining");
    return n.ready ? badge("up", "\u2714 ready") : badge("down", "\u2716 not ready");
  }
  function modeBadge(m, hl) {
    var why = hl && hl.modeReason ? hl.modeReason + (hl.modeSince ? ", since " + ago(hl.modeSince) : "") : "";
    if (m === "local-fallback") return badge("warn", "\u26A0 local-fallback", why || "shared verdicts are stale: this node checks backends itself");
    if (m === "shared") return badge("plain", "shared", "routing on the health leader's shared verdicts");
    return badge("plain", String(m || "\u2014"));
  }

  /**
   * The rollout record, the drain keys (st.rollout) and the members that are down (st.members), above
   * the nodes table; nothing when none exists.
   */
  function renderRollout(ro, members) {
    var down = members && members.down ? members.down : [];
    if ((!ro || (!ro.state && ro.drains.length === 0)) && down.length === 0) return null;
    ro = ro || { state: null, drains: [] };
    var r = ro.state, parts = [];
    if (r && (r.status === "running" || r.status === "failed" || Date.now() - r.updatedAt < 3600e3)) {
      var tone = r.status === "failed" || r.status === "aborted" ? "down" : r.status === "done" ? "up" : "warn";
      parts.push(h("div", { id: "rollout-progress" }, badge(tone, "rollout " + r.status), " ", h("b", null, r.done.length + " / " + r.nodes.length), " nodes restarted",
        r.current ? [" \u00B7 now ", h("b", null, r.current.node), " (" + r.current.phase + ", " + ago(r.current.since) + ")"] : null,
        r.error ? h("div", { class: "down-t" }, r.error) : null));
    }
    if (ro.drains.length > 0) parts.push(h("div", { id: "drain-keys" }, "drain keys: ", h("b", null, ro.drains.join(", "))));
    // A dead (or stopped, not forgotten) member counts against the drain guard: say who and how to forget it.
    if (down.length > 0) parts.push(h("div", { id: "members-down" }, badge("down", "down"), " ", down.map(function (m, i) {
      return [i > 0 ? ", " : "", h("b", null, m.id), " (last started " + ago(m.startedAt) + ", " + m.version + (m.drained ? ", drain key" : "") + ")"];
    }), h("span", { class: "mute" }, " \u00B7 members with no live node record; the drain guard counts them out (ballast node forget <id> removes one that is gone for good)")));
    return parts.length ? h("div", { class: "rollout-line" }, parts) : null;
  }

  function renderNodes(nodes) {
    var st = S.self, leader = st.health ? st.health.leader : null, selfId = st.node.id;
    var versions = dict(); nodes.forEach(function (n) { versions[n.version] = (versions[n.version] || 0) + 1; });
    var common = Object.keys(versions).sort(function (a, b) { return versions[b] - versions[a]; })[0];
    var rows = nodes.map(function (n) {
      var lv = liveOf(n.id), fresh = lv.state && Date.now() - lv.at < FRESH_MS, ln = fresh ? lv.state.node : n;
      var rev = fresh ? lv.state.revision : null;
      var store = fresh ? lv.state.store : null;
      var active = fresh ? (lv.state.services || []).reduce(function (t, s) { return t + (s.active || 0); }, 0) : null;
      var r = S.rates[n.id], cps = null;
      if (fresh && r && Date.now() - r.t <= FRESH_MS) { cps = 0; for (var k in r.svc) cps += r.svc[k].cps; }
      var seen = lv.at ? age(Date.now() - lv.at) + " ago" : "never";
      return h("tr", { "data-node": n.id, class: fresh ? "" : "is-down" },
        h("td", null, h("b", null, n.id), n.id === selfId ? h("span", { class: "mute" }, " (this page)") : null, " ",
          n.id === leader ? badge("lead", "\u2605 leader", "health-check leader: writes the shared verdicts") : null),
        h("td", null, n.zone || h("span", { class: "mute" }, "\u2014")),
        h("td", { class: "mono" }, n.version, n.version !== common ? h("span", { class: "warn-t", title: "differs from most nodes (" + common + ")" }, " \u2260") : null),
        h("td", null, readyBadge(ln)),
        h("td", null, modeBadge(ln.mode, fresh ? lv.state.health : null)),
        h("td", { class: "num mono", "data-rev": rev === null ? "" : rev, title: fresh ? "etcd revision this node has applied" : lv.err || "no answer yet" },
          rev === null ? h("span", { class: "mute" }, "\u2014") : num(rev)),
        h("td", null, store ? (store.connected ? badge("up", "\u2714 etcd") : badge("down", "\u2716 etcd lost", store.lastError || "")) : h("span", { class: "mute" }, "\u2014")),
        h("td", { class: "num" }, rate(cps)),
        h("td", { class: "num" }, active === null ? "\u2014" : num(active)),
        h("td", { class: "num" }, dur(serverNow() - n.startedAt)),
        h("td", { class: fresh ? "" : "down-t", title: lv.err || ("record updated " + ago(n.updatedAt)) }, fresh ? seen : (lv.err ? "\u2716 no answer \u00B7 " + seen : seen)),
        h("td", { class: "mono" }, n.id === selfId ? n.admin : h("a", { href: "http://" + n.admin + "/" }, n.admin)));
    });
    var head = ["Node", "Zone", "Version", "State", "Mode", "Applied rev", "Store", "Conn/s", "Active", "Uptime", "Last seen", "Admin"];
    return h("div", { class: "tablewrap" }, h("table", { id: "nodes-table" },
      h("thead", null, h("tr", null, head.map(function (t, i) { return h("th", { class: i === 5 || (i >= 7 && i <= 9) ? "num" : "" }, t); }))),
      h("tbody", null, rows)));
  }

  function verdictOf(b) {
    var v = b.verdict;
    if (!v) return { key: 1, badge: badge("unk", "? unknown", "no verdict yet"), reason: "", since: null, source: "" };
    // Observer quorum: who voted what, in the badge's tooltip; a partial verdict is up with a warning.
    var votes = v.votes ? Object.keys(v.votes).map(function (id) { return id + ": " + v.votes[id]; }).join(", ") : "";
    var quorum = v.quorum === "degraded" ? " \u00B7 quorum degraded (the leader decided alone)" : "";
    var title = votes ? "votes: " + votes + quorum : undefined;
    if (v.state === "down") return { key: 0, badge: badge("down", "\u25BC down" + (v.quorum === "degraded" ? " \u00B7 degraded" : ""), title), reason: v.reason, since: v.since, source: v.source };
    if (v.partial) return { key: 2, badge: badge("warn", "\u25B2 partial", title), reason: v.reason, since: v.since, source: v.source };
    return { key: 2, badge: badge("up", "\u25B2 up" + (v.quorum === "degraded" ? " \u00B7 degraded" : ""), title), reason: v.reason, since: v.since, source: v.source };
  }
  function stateBadge(s) {
    if (s === "active") return badge("up", "\u25CF active");
    if (s === "drain") return badge("warn", "\u25D2 drain", "keeps existing sessions, takes no new ones");
    if (s === "disabled") return badge("unk", "\u25CB disabled", "takes no traffic");
    return badge("unk", String(s));
  }

  var COLS = [
    { k: "id", t: "Backend" }, { k: "address", t: "Address" }, { k: "zone", t: "Zone" }, { k: "weight", t: "Weight", n: true },
    { k: "state", t: "State" }, { k: "verdict", t: "Verdict" }, { k: "reason", t: "Reason" }, { k: "since", t: "Since", n: true },
    { k: "active", t: "Active", n: true }, { k: "cps", t: "Conn/s", n: true }, { k: "conns", t: "Conns", n: true },
    { k: "errors", t: "Conn errors", n: true }, { k: "bytes", t: "Bytes", n: true }
  ];

  function backendRows(svc) {
    return (svc.backends || []).map(function (b) {
      var v = verdictOf(b), key = svc.name + "/" + b.id, st = scoped(), fails = dict(), active = 0, conns = 0, by = 0;
      for (var id in st) {
        var bb = findBe(findSvc(st[id], svc.name), b.id);
        if (!bb) continue;
        active += bb.active || 0; conns += bb.connections || 0; by += (bb.bytesIn || 0) + (bb.bytesOut || 0);
        for (var r in bb.connectFailures || {}) fails[r] = (fails[r] || 0) + bb.connectFailures[r];
      }
      // A host name that does not resolve outranks an old verdict: it is why the backend takes nothing now.
      var reason = !b.routable && /^(checkAddress: )?resolv/.test(b.why || "") ? b.why : v.reason || (b.routable ? "" : b.why);
      return {
        b: b, v: v, key: key, reason: reason, fails: fails,
        sort: { id: b.id, address: b.address + ":" + String(b.port).padStart(5, "0"), zone: b.zone, weight: b.weight,
          state: b.state, verdict: v.key, reason: reason, since: v.since || 0, active: active, cps: scopedRate("be", key) || 0,
          conns: conns, errors: sum(fails), bytes: by }
      };
    });
  }

  function sortRows(rows) {
    var c = S.sort.col, d = S.sort.dir;
    return rows.sort(function (x, y) {
      // The default order (by id) groups backends by zone, so a zone's capacity reads as one block;
      // a clicked column sorts the whole table.
      var z = c === "id" && d === 1 ? String(x.sort.zone).localeCompare(String(y.sort.zone)) : 0;
      if (z !== 0) return z;
      var a = x.sort[c], b = y.sort[c];
      var r = typeof a === "number" && typeof b === "number" ? a - b : String(a).localeCompare(String(b));
      return r !== 0 ? r * d : x.b.id < y.b.id ? -1 : x.b.id > y.b.id ? 1 : 0;
    });
  }

  function backendTable(svc) {
    var rows = sortRows(backendRows(svc));
    if (rows.length === 0) return h("div", { class: "empty" }, "No backends: put records under backends/" + svc.name + "/ in etcd.");
    var head = COLS.map(function (c) {
      var on = S.sort.col === c.k;
      return h("th", { class: c.n ? "num" : "", "aria-sort": on ? (S.sort.dir > 0 ? "ascending" : "descending") : "none" },
        h("button", { type: "button", title: "sort by " + c.t.toLowerCase(), onclick: function () {
          if (S.sort.col === c.k) S.sort.dir = -S.sort.dir; else { S.sort.col = c.k; S.sort.dir = c.n ? -1 : 1; }
          render(true);
        } }, c.t, h("span", { class: "arrow" }, on ? (S.sort.dir > 0 ? "\u25B2" : "\u25BC") : "")));
    });
    var body = rows.map(function (r) {
      var b = r.b, s = r.sort, down = r.v.key === 0;
      return h("tr", { "data-backend": r.key, "data-verdict": r.v.key === 0 ? "down" : r.v.key === 2 ? "up" : "unknown", class: down ? "is-down" : "" },
        h("td", null, h("b", null, b.id)),
        h("td", { class: "mono" }, b.address.indexOf(":") >= 0 ? "[" + b.address + "]:" + b.port : b.address + ":" + b.port),
        h("td", null, b.zone || h("span", { class: "mute" }, "\u2014")),
        h("td", { class: "num" }, num(b.weight)),
        h("td", null, stateBadge(b.state)),
        h("td", null, r.v.badge, r.v.source === "local" ? h("span", { class: "mute", title: "this node's own check (local fallback)" }, " local") : null,
          b.ejected ? [" ", badge("warn", "\u23F8 ejected", "passively ejected on this node after connect failures")] : null),
        h("td", { class: "wrap" + (down ? " down-t" : "") }, r.reason || h("span", { class: "mute" }, "\u2014")),
        h("td", { class: "num", title: when(r.v.since) }, r.v.since ? ago(r.v.since) : h("span", { class: "mute" }, "\u2014")),
        h("td", { class: "num" }, num(s.active)),
        h("td", { class: "num" }, rate(s.cps)),
        h("td", { class: "num" }, num(s.conns)),
        h("td", { class: "num" + (s.errors ? " down-t" : ""), title: parts(r.fails) }, num(s.errors)),
        h("td", { class: "num" }, bytes(s.bytes)));
    });
    return h("div", { class: "tablewrap" }, h("table", { class: "backends" }, h("thead", null, h("tr", null, head)), h("tbody", null, body)));
  }

  function spark(values) {
    var w = 140, ht = 30, n = values.length;
    var max = Math.max.apply(null, [1].concat(values));
    var NS = "http://www.w3.org/2000/svg";
    var svg = document.createElementNS(NS, "svg");
    svg.setAttribute("class", "spark"); svg.setAttribute("width", String(w)); svg.setAttribute("height", String(ht));
    svg.setAttribute("viewBox", "0 0 " + w + " " + ht); svg.setAttribute("role", "img");
    var label = "connections per second, last " + n + " s: now " + rate(values[n - 1] || 0) + ", peak " + rate(Math.max.apply(null, [0].concat(values)));
    svg.setAttribute("aria-label", label);
    var title = document.createElementNS(NS, "title"); title.textContent = label; svg.appendChild(title);
    if (n > 1) {
      var pts = [];
      for (var i = 0; i < n; i++) pts.push(((w - 2) * (HISTORY - n + i) / (HISTORY - 1) + 1).toFixed(1) + "," + (ht - 2 - (ht - 4) * values[i] / max).toFixed(1));
      var area = document.createElementNS(NS, "polygon");
      area.setAttribute("points", pts.join(" ") + " " + pts[n - 1].split(",")[0] + "," + ht + " " + pts[0].split(",")[0] + "," + ht);
      var line = document.createElementNS(NS, "polyline");
      line.setAttribute("points", pts.join(" "));
      svg.appendChild(area); svg.appendChild(line);
    }
    return svg;
  }

  function renderService(svc) {
    var udp = svc.protocol === "udp";
    var cps = scopedRate("svc", svc.name), bps = scopedSvcBytes(svc.name);
    var active = scopedSum(function (st) { var s = findSvc(st, svc.name); return s && s.active; });
    var refused = dict();
    var st = scoped();
    for (var id in st) { var s = findSvc(st[id], svc.name); if (s) for (var k in s.refused || {}) refused[k] = (refused[k] || 0) + s.refused[k]; }
    var counts = { up: 0, down: 0, unknown: 0 };
    (svc.backends || []).forEach(function (b) { var v = verdictOf(b).key; counts[v === 0 ? "down" : v === 2 ? "up" : "unknown"]++; });
    var aff = svc.affinity || {};
    var affText = aff.mode && aff.mode !== "none"
      ? [h("b", null, aff.mode), " \u00B7 TTL " + dur(aff.ttlMs) + " \u00B7 ", h("b", { "data-affinity-entries": "" }, aff.entries === undefined ? "\u2014" : num(aff.entries)), aff.entries === 1 ? " entry" : " entries"]
      : h("span", { class: "mute" }, "off");
    var hist = (S.hist[S.scope] || dict())[svc.name] || [];
    var bound = svc.listen.slice(-2) === ":0" && svc.boundPort ? " \u2192 :" + svc.boundPort : "";
    var hc = svc.health || {};
    return h("section", { class: "card svc", "data-service": svc.name },
      h("div", { class: "svc-head" },
        h("h3", null, svc.name),
        h("span", { class: "counts" }, counts.up ? badge("up", "\u25B2 " + counts.up + " up") : null,
          counts.down ? badge("down", "\u25BC " + counts.down + " down") : null,
          counts.unknown ? badge("unk", "? " + counts.unknown + " unknown") : null),
        h("div", { class: "svc-meta" },
          h("span", null, "listen ", h("b", { class: "mono" }, svc.listen + bound)),
          h("span", null, h("b", null, String(svc.protocol).toUpperCase())),
          h("span", null, "algorithm ", h("b", null, svc.algorithm)),
          h("span", null, "affinity ", affText),
          svc.proxyProtocol && svc.proxyProtocol !== "none" ? h("span", null, "PROXY ", h("b", null, svc.proxyProtocol)) : null,
          svc.forwarding && svc.forwarding.mode !== "proxy" ? h("span", { "data-forwarding": svc.forwarding.mode }, "forwarding ", h("b", null, svc.forwarding.mode)) : null,
          svc.forwarding && !svc.forwarding.programmed ? h("span", { class: "down-t", "data-forwarding-state": "not-programmed" }, "\u2716 not programmed: " + (svc.forwarding.reason || "pending")) : null,
          svc.forwarding && svc.forwarding.programmed && svc.forwarding.reason ? h("span", { class: "warn-t" }, "\u26A0 " + svc.forwarding.reason) : null,
          h("span", { class: "mute" }, "check " + (hc.type || "\u2014") + (hc.type && hc.type !== "none" ? " every " + dur(hc.intervalMs) + ", rise " + hc.rise + " fall " + hc.fall : "")),
          svc.listenerError ? h("span", { class: "down-t" }, "\u2716 listener: " + svc.listenerError) : null),
        h("div", { class: "figs" },
          h("div", { class: "fig" }, h("div", { class: "n", "data-cps": "" }, rate(cps)), h("div", { class: "l" }, udp ? "new flows/s" : "conn/s")),
          h("div", { class: "fig" }, h("div", { class: "n" }, bytes(bps, true)), h("div", { class: "l" }, "in+out")),
          h("div", { class: "fig" }, h("div", { class: "n" }, num(active)), h("div", { class: "l" }, udp ? "flows" : "active")),
          spark(hist))),
      sum(refused) ? h("div", { class: "svc-meta warn-t" }, "\u26A0 refused " + num(sum(refused)) + " connections (" + parts(refused) + ")") : null,
      backendTable(svc));
  }

  /**
   * The DNS view (st.dns, when the node runs a DNS responder): each name and the live nodes it answers with.
   * @param {import("../../../shared/api.js").DnsStateView} d
   */
  function renderDns(d) {
    if (!d.zone) return h("div", { class: "empty" }, "No dns record in etcd: ballast dns set --zone NAME.");
    return h("div", null,
      h("div", { class: "svc-meta" }, "zone " + d.zone + " \u00B7 serial " + d.serial + " \u00B7 TTL " + d.ttl + " s \u00B7 " + d.listen,
        d.error ? h("span", { class: "bad" }, " \u00B7 " + d.error) : null),
      h("div", { class: "tablewrap" }, h("table", { id: "dns-table" },
        h("thead", null, h("tr", null, h("th", null, "Name"), h("th", null, "Service"), h("th", null, "Answers"))),
        h("tbody", null, d.names.map(function (n) {
          return h("tr", { "data-name": n.name }, h("td", { class: "mono" }, n.name), h("td", null, n.service || h("span", { class: "mute" }, "nameserver")),
            h("td", { class: "wrap" }, n.addresses.length ? n.addresses.map(function (a) { return a.address + " (" + a.node + (a.zone ? ", zone " + a.zone : "") + ")"; }).join(", ")
              : badge("down", "no live node")));
        })))));
  }

  function renderInvalid(list) {
    if (!list || list.length === 0) return h("div", { class: "empty" }, "\u2714 none: every record under the cluster prefix is valid.");
    return h("div", { class: "tablewrap" }, h("table", { id: "invalid-table" },
      h("thead", null, h("tr", null, h("th", null, "Key"), h("th", null, "Reason"), h("th", null, "In use"))),
      h("tbody", null, list.map(function (r) {
        return h("tr", { "data-key": r.key }, h("td", { class: "mono" }, r.key), h("td", { class: "wrap bad" }, r.reason),
          h("td", null, r.keptLastGood ? badge("warn", "last good value kept") : badge("unk", "skipped")));
      }))));
  }

  /** This node's recent events, newest first: the timeline (`ballast events` has the cluster's). */
  function renderEvents(list) {
    if (!list || list.length === 0) return h("div", { class: "empty" }, "No events yet.");
    var recent = list.slice(-50).reverse();
    return h("div", { class: "tablewrap" }, h("table", { id: "events-table" },
      h("thead", null, h("tr", null, h("th", null, "When"), h("th", null, "Kind"), h("th", null, "What"))),
      h("tbody", null, recent.map(function (e) {
        return h("tr", { "data-kind": e.kind }, h("td", { class: "mono", title: when(e.at) }, ago(e.at)), h("td", null, e.kind), h("td", { class: "wrap" }, e.message));
      }))));
  }

  function renderScope(nodes) {
    var sel = $("scope");
    var want = ["all"].concat(nodes.map(function (n) { return n.id; }));
    var have = Array.prototype.map.call(sel.options, function (o) { return o.value; });
    if (want.join("\n") !== have.join("\n")) {
      sel.replaceChildren();
      want.forEach(function (v) { sel.appendChild(h("option", { value: v }, v === "all" ? "all nodes" : "node " + v)); });
      if (want.indexOf(S.scope) < 0) S.scope = "all";
      sel.value = S.scope;
    }
    var answering = Object.keys(scoped()).length;
    fill("scope-note", S.scope === "all" ? answering + " of " + nodes.length + " nodes answering" : "");
  }

  function renderExplainChoices() {
    var names = (S.self.services || []).map(function (s) { return s.name; });
    if (names.join("\n") === S.services) return;
    S.services = names.join("\n");
    var sel = $("ex-service"), cur = sel.value;
    sel.replaceChildren();
    names.forEach(function (n) { sel.appendChild(h("option", { value: n }, n)); });
    if (names.indexOf(cur) >= 0) sel.value = cur;
  }

  function render(force) {
    // Do not redraw under a text selection: the operator is copying an address or a key.
    var sel = window.getSelection && window.getSelection();
    if (!force && sel && !sel.isCollapsed && $("app").contains(sel.anchorNode)) { fill("live", liveState()); return; }
    fill("live", liveState());
    // Banners are shown and hidden, never rebuilt: the token field must keep what is being typed.
    $("token-banner").hidden = !S.needToken;
    $("token-msg").textContent = S.tokenRejected ? "The admin API rejected the bearer token." : "This node's admin API needs a bearer token.";
    $("lost-banner").hidden = !(S.err && S.self && !S.needToken);
    if (S.err && S.self) $("lost-banner").textContent = "Lost contact with this node's admin API (" + S.err + "). Showing what it said " + age(Date.now() - S.selfAt) + " ago; retrying every second.";
    $("content").hidden = !S.self || S.needToken;
    if (!S.self || S.needToken) return;
    var st = S.self, nodes = nodeList(), hl = st.health;
    document.title = (function () {
      var down = 0; (st.services || []).forEach(function (s) { (s.backends || []).forEach(function (b) { if (b.verdict && b.verdict.state === "down") down++; }); });
      return (down ? "(" + down + " down) " : "") + st.cluster + " \u00B7 Ballast";
    })();
    fill("cluster", st.cluster);
    fill("facts", [
      h("span", null, "node ", h("b", null, st.node.id)),
      h("span", null, "revision ", h("b", { id: "self-rev" }, num(st.revision))),
      h("span", null, "store ", st.store.connected ? h("b", null, st.store.kind) : h("b", { class: "down-t" }, "\u2716 " + st.store.kind + " unreachable")),
      h("span", null, "health leader ", hl.leader ? h("b", { id: "leader" }, hl.leader) : h("b", { id: "leader", class: "warn-t" }, "none"),
        hl.heartbeatAgeMs !== null && hl.heartbeatAgeMs !== undefined ? " (heartbeat " + age(hl.heartbeatAgeMs) + " ago)" : ""),
      h("span", null, "mode ", (hl.mode || st.node.mode) === "local-fallback"
        ? [h("b", { class: "warn-t" }, "\u26A0 local-fallback"), hl.modeReason ? " (" + hl.modeReason + (hl.modeSince ? ", since " + ago(hl.modeSince) : "") + ")" : ""]
        : h("b", null, hl.mode || st.node.mode)),
      h("span", null, "version ", h("b", null, st.node.version))
    ].concat((st.warnings || []).map(function (w) {
      return h("span", { class: "warn-t", "data-warning": w.kind, title: "since " + when(w.since) }, "\u26A0 " + w.message);
    })));

    var totals = { up: 0, down: 0, unknown: 0, backends: 0 };
    (st.services || []).forEach(function (s) {
      (s.backends || []).forEach(function (b) { totals.backends++; var k = verdictOf(b).key; totals[k === 0 ? "down" : k === 2 ? "up" : "unknown"]++; });
    });
    var ready = nodes.filter(function (n) { var lv = liveOf(n.id); var ln = lv.state && Date.now() - lv.at < FRESH_MS ? lv.state.node : n; return ln.ready && !ln.draining; }).length;
    function tile(n, l, tone, idv) { return h("div", { class: "tile t-" + tone }, h("div", { class: "n", id: idv }, n), h("div", { class: "l" }, l)); }
    var nInvalid = (st.invalid || []).length;
    fill("summary", [
      tile(ready + " / " + nodes.length, "nodes ready", ready < nodes.length ? "warn" : "up", "tile-nodes"),
      tile(num((st.services || []).length), "services", "none"),
      tile(num(totals.up), "backends up", totals.up ? "up" : "none"),
      tile(num(totals.down), "backends down", totals.down ? "down" : "none"),
      tile(num(totals.unknown), "verdict unknown", totals.unknown ? "unk" : "none"),
      tile(num(nInvalid), "invalid records", nInvalid ? "down" : "none", "tile-invalid")
    ]);
    fill("nodes", [renderRollout(st.rollout, st.members), renderNodes(nodes)]);
    renderScope(nodes);
    renderExplainChoices();
    var svcs = st.services || [];
    fill("services", svcs.length ? svcs.map(renderService) : h("section", { class: "card empty" }, "No services yet: put a record under services/ in etcd."));
    fill("invalid", renderInvalid(st.invalid));
    // Only nodes that run a DNS responder show the card.
    $("dns-card").hidden = !st.dns;
    if (st.dns) fill("dns", renderDns(st.dns));
    fill("events", renderEvents(S.events));
    fill("invalid-count", (st.invalid || []).length ? "(" + st.invalid.length + ")" : "");
  }

  // ---- route explain ----
  $("explain").addEventListener("submit", function (e) {
    e.preventDefault();
    var svc = $("ex-service").value, ip = $("ex-client").value.trim(), port = $("ex-port").value.trim();
    if (!svc || !ip) return;
    var path = "/api/route?service=" + encodeURIComponent(svc) + "&client=" + encodeURIComponent(ip) + (port ? "&port=" + encodeURIComponent(port) : "");
    fill("ex-answer", h("span", { class: "mute" }, "asking\u2026"));
    api("", path).then(function (r) {
      var b = r.body || {};
      if (r.status !== 200) { fill("ex-answer", h("span", { class: "down-t" }, "\u2716 " + (b.error || "HTTP " + r.status))); return; }
      fill("ex-answer", [
        h("div", { class: "to", id: "ex-backend" }, b.backend ? "\u2192 " + b.backend.id + " " : "\u2716 no backend", b.backend ? h("span", { class: "mono mute" }, b.backend.address) : null),
        h("div", null, "reason: ", h("b", { id: "ex-reason" }, b.reason)),
        h("div", { class: "mute" }, "as node " + b.node + " routes it at revision " + num(b.revision) + ", asked " + new Date().toLocaleTimeString() + " (another node's page gives that node's answer)")
      ]);
    }, function (err) { fill("ex-answer", h("span", { class: "down-t" }, "\u2716 " + errText(err))); });
  });
  $("token-form").addEventListener("submit", function (e) {
    e.preventDefault();
    var input = e.target.elements.token, v = input.value.trim();
    if (!v) return;
    S.token = v; S.tokenRejected = false; input.value = "";
    try { sessionStorage.setItem(TOKEN_KEY, v); } catch (x) { /* kept in memory only */ }
  });
  $("scope").addEventListener("change", function (e) { S.scope = e.target.value; render(true); });

  tick();
})();

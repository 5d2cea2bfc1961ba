/// The dashboard page (`/ui`): one self-contained HTML file (no external assets: it works with no
/// internet), polling `/ui/state` every second. Every figure is also in a `data-` attribute, raw,
/// for scripts and tests.
enum DashboardPage {
    static let html: [UInt8] = Array(#"""
<!doctype html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1">
<title>meshd</title>
<style>
:root{--bg:#f6f7f9;--card:#fff;--line:#dde1e6;--ink:#1d232b;--dim:#6b7480;--ok:#1f8a4c;--warn:#b7791f;--bad:#c53030;--bar:#3b82f6}
*{box-sizing:border-box}body{margin:0;font:14px/1.4 system-ui,sans-serif;background:var(--bg);color:var(--ink)}
header{display:flex;gap:1em;align-items:baseline;padding:.7em 1.2em;background:#1d232b;color:#fff}
header h1{font-size:1.1em;margin:0}header .dim{color:#aab}
main{padding:1em 1.2em;display:grid;gap:1em}h2{font-size:1em;margin:.2em 0 .5em}
.cards{display:grid;grid-template-columns:repeat(auto-fill,minmax(440px,1fr));gap:1em}
.card,.panel{background:var(--card);border:1px solid var(--line);border-radius:6px;padding:.8em}
.node h3{margin:0 0 .3em;font-size:1.05em}.dim{color:var(--dim)}.tag{font-size:.8em;padding:0 .4em;border-radius:3px;background:#e8ebef}
.up{color:var(--ok)}.draining{color:var(--warn)}.down{color:var(--bad)}
.bar{height:.7em;background:#e8ebef;border-radius:3px;overflow:hidden;margin:.15em 0 .35em}.bar>i{display:block;height:100%;background:var(--bar)}
.bar.hot>i{background:var(--warn)}.bar.full>i{background:var(--bad)}
table{border-collapse:collapse;width:100%;font-size:.9em}th,td{text-align:left;padding:.2em .4em;border-bottom:1px solid var(--line);white-space:nowrap}
td.num,th.num{text-align:right}.node td{white-space:normal;word-break:break-all}.alert{background:#fff5f5;border:1px solid #feb2b2;border-radius:4px;padding:.4em .6em;margin:.2em 0}
.loaded{font-weight:600}.scroll{overflow-x:auto}#error{color:var(--bad)}
</style></head>
<body>
<header><h1>meshd</h1><span id="title" class="dim"></span><span id="time" class="dim"></span><span id="error"></span></header>
<main>
<div id="alerts"></div>
<section><h2>Nodes</h2><div id="nodes" class="cards"></div><div id="lost" class="dim"></div></section>
<section class="panel"><h2>Hop times (ms, measured by the node of each row)</h2><div id="hops" class="scroll"></div></section>
<section class="panel"><h2>Splits</h2><div id="splits"></div></section>
<section class="panel"><h2>Budget</h2><div id="budget"></div></section>
<section class="panel"><h2>Last requests</h2><div id="recent" class="scroll"></div></section>
</main>
<script>
"use strict";
function h(tag, attrs, ...kids) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) { if (v !== null && v !== undefined) e.setAttribute(k, String(v)); }
  for (const k of kids.flat()) { if (k !== null && k !== undefined) e.append(k instanceof Node ? k : String(k)); }
  return e;
}
function bytes(n) {
  if (n === null || n === undefined) return "-";
  const u = ["B", "KiB", "MiB", "GiB", "TiB"]; let i = 0; let v = n;
  while (v >= 1024 && i < u.length - 1) { v /= 1024; i++; }
  return (i ? v.toFixed(1) : v) + " " + u[i];
}
function usd(v) { return v === null || v === undefined ? "no cap" : "$" + Number(v).toFixed(v < 1 ? 6 : 2); }
function bar(used, total, attrs) {
  const f = total > 0 ? Math.min(1, Math.max(0, used / total)) : 0;
  const cls = "bar" + (f >= 0.95 ? " full" : f >= 0.8 ? " hot" : "");
  return h("div", Object.assign({class: cls, title: Math.round(f * 100) + " %"}, attrs || {}), h("i", {style: "width:" + (f * 100).toFixed(1) + "%"}));
}
function nodeCard(n) {
  const used = n.vram_total_bytes - n.vram_free_bytes;
  const card = h("section", {class: "card node", "data-node": n.name, "data-state": n.state, "data-vram-total": n.vram_total_bytes,
    "data-vram-free": n.vram_free_bytes, "data-ram-total": n.ram_total_bytes, "data-ram-free": n.ram_free_bytes,
    "data-in-flight": n.in_flight, "data-models": (n.models || []).join(",")},
    h("h3", {}, n.name + " ", h("span", {class: n.state}, n.state), n.local ? h("span", {class: "tag"}, "this node") : null),
    h("div", {class: "dim"}, n.address + " · " + n.gpu));
  for (const d of n.devices || []) {
    if (d.total_bytes === null || d.kind === "cpu") continue;  // (system memory: the RAM bar)
    card.append(h("div", {"data-device": d.kind + d.index}, d.name + ": " + bytes(d.total_bytes - d.free_bytes) + " of " + bytes(d.total_bytes) + " used"),
                bar(d.total_bytes - d.free_bytes, d.total_bytes));
  }
  if (!(n.devices || []).length && n.vram_total_bytes > 0) {
    card.append(h("div", {}, "VRAM: " + bytes(used) + " of " + bytes(n.vram_total_bytes) + " used"), bar(used, n.vram_total_bytes));
  }
  if (n.ram_total_bytes) {
    card.append(h("div", {}, "RAM: " + bytes(n.ram_total_bytes - n.ram_free_bytes) + " of " + bytes(n.ram_total_bytes) + " used"),
                bar(n.ram_total_bytes - n.ram_free_bytes, n.ram_total_bytes));
  }
  card.append(h("div", {}, "in flight: " + n.in_flight + (n.heads && n.heads.length ? " · heads splits " + n.heads.join(", ") : "")
    + (n.leased_to ? " · lends " + bytes(n.leased_bytes) + " to " + n.leased_to : "")));
  const rows = (n.engines || []).map(e => h("tr", {"data-engine": e.id},
    h("td", {}, e.id, h("div", {class: "dim"}, e.kind)),
    h("td", {class: e.healthy ? "up" : "down"}, e.healthy ? "healthy" : "down"),
    h("td", {class: "num"}, e.busy + (e.slots ? "/" + e.slots : "")),
    h("td", {class: "num"}, e.queued),
    h("td", {class: "num"}, e.decode_tokens_per_second ? e.decode_tokens_per_second.toFixed(1) : "-"),
    h("td", {}, (e.models || []).map(m => h("div", {class: m.loaded ? "loaded" : "dim", "data-model": m.name,
      "data-loaded": m.loaded}, m.name + (m.loaded ? "" : m.loading ? " (loading)" : " (available)") + (m.split ? " [split]" : ""))))));
  if (rows.length) {
    card.append(h("table", {}, h("tr", {}, h("th", {}, "engine"), h("th", {}, ""), h("th", {class: "num"}, "busy"),
      h("th", {class: "num"}, "queue"), h("th", {class: "num"}, "tok/s"), h("th", {}, "models")), rows));
  }
  return card;
}
function hops(nodes) {
  const live = nodes.filter(n => n.state !== "down").map(n => n.name);
  const head = h("tr", {}, h("th", {}, "from \\ to"), live.map(x => h("th", {class: "num"}, x)));
  const rows = nodes.filter(n => n.state !== "down").map(n => h("tr", {}, h("th", {}, n.name),
    live.map(x => { const v = (n.hops_ms || {})[x]; return h("td", {class: "num", "data-hop": n.name + ">" + x}, x === n.name ? "·" : v === undefined ? "-" : v.toFixed(2)); })));
  return h("table", {}, head, rows);
}
function budgetView(b, node) {
  if (!b) return h("div", {class: "dim"}, "no gateway in the mesh: no cloud budget");
  const out = h("div", {"data-budget-node": node}, h("div", {class: "dim"}, "kept by " + node + " · time zone " + b.time_zone + " · " + b.in_flight + " cloud request(s) in flight"));
  function cap(scope, period, c) {
    if (!c) return;
    const limit = typeof c.limit_usd === "number" ? c.limit_usd : null;
    out.append(h("div", {class: "cap", "data-cap": scope, "data-period": period, "data-spent": c.spent_usd, "data-reserved": c.reserved_usd,
      "data-limit": limit === null ? "" : limit},
      scope + " " + period + ": " + usd(c.spent_usd) + " spent, " + usd(c.reserved_usd) + " reserved, limit " + usd(limit)),
      limit === null ? h("div", {}) : bar(c.spent_usd + c.reserved_usd, limit));
  }
  for (const p of ["daily", "monthly"]) cap("global", p, b[p]);
  for (const [name, c] of Object.entries(b.providers || {})) for (const p of ["daily", "monthly"]) cap("provider " + name, p, c[p]);
  for (const [name, c] of Object.entries(b.keys || {})) for (const p of ["daily", "monthly"]) cap("key " + name, p, c[p]);
  for (const ph of b.provider_health || []) out.append(h("div", {"data-provider": ph.name}, ph.name + ": " + ph.state + (ph.available ? "" : " (unavailable)")));
  return out;
}
function recentView(list) {
  if (!list.length) return h("div", {class: "dim"}, "no requests yet");
  const head = h("tr", {}, ["time", "model", "key", "user", "node", "via", "engine", "status", "TTFT ms", "tok/s", "prompt", "cached", "output", "cost", "route"]
    .map(t => h("th", {class: ["TTFT ms", "tok/s", "prompt", "cached", "output", "cost"].includes(t) ? "num" : ""}, t)));
  const rows = list.map(r => {
    const gen = r.duration_ms - (r.ttft_ms || 0);
    const tps = r.output_tokens > 0 && gen > 0 ? (r.output_tokens / (gen / 1000)).toFixed(1) : "-";
    return h("tr", {"data-request": r.request_id, "data-node": r.node, "data-status": r.status},
      h("td", {}, new Date(r.ts).toLocaleTimeString()), h("td", {}, r.model), h("td", {}, r.key || "-"), h("td", {}, r.user || "-"),
      h("td", {}, r.node), h("td", {}, r.via || "-"), h("td", {}, (r.cache_hit ? "cache" : r.engine) || "-"),
      h("td", {class: r.status >= 400 ? "down" : ""}, r.status),
      h("td", {class: "num"}, r.ttft_ms === null || r.ttft_ms === undefined ? "-" : r.ttft_ms.toFixed(0)), h("td", {class: "num"}, tps),
      h("td", {class: "num"}, r.prompt_tokens), h("td", {class: "num"}, r.cached_tokens), h("td", {class: "num"}, r.output_tokens),
      h("td", {class: "num"}, r.cost_micros ? "$" + (r.cost_micros / 1e6).toFixed(6) : "-"), h("td", {class: "dim"}, r.route));
  });
  return h("table", {}, head, rows);
}
function render(s) {
  document.getElementById("title").textContent = "node " + s.node + " · " + s.version;
  document.getElementById("time").textContent = s.time.replace("T", " ").slice(0, 19) + " UTC";
  const live = s.nodes.filter(n => n.state !== "down");
  document.getElementById("nodes").replaceChildren(...live.map(nodeCard));
  const lost = s.nodes.filter(n => n.state === "down").map(n => n.name);
  document.getElementById("lost").textContent = lost.length ? "lost lately: " + lost.join(", ") : "";
  document.getElementById("hops").replaceChildren(hops(s.nodes));
  const splits = live.flatMap(n => (n.heads || []).map(x => h("div", {"data-split": x}, n.name + " heads " + x)))
    .concat(live.filter(n => n.leased_to).map(n => h("div", {}, n.name + " lends " + bytes(n.leased_bytes) + " to split " + n.leased_to)));
  document.getElementById("splits").replaceChildren(...(splits.length ? splits : [h("div", {class: "dim"}, "no splits")]));
  document.getElementById("budget").replaceChildren(budgetView(s.budget, s.budget_node));
  document.getElementById("recent").replaceChildren(recentView(s.recent));
  document.getElementById("alerts").replaceChildren(...s.alerts.map(a => h("div", {class: "alert", "data-alert": a.alert, "data-subject": a.subject},
    "ALERT " + a.alert + " (" + a.node + "): " + a.message)));
  document.body.setAttribute("data-updated", s.time);
}
async function poll() {
  try {
    const r = await fetch("/ui/state", {cache: "no-store", credentials: "same-origin"});
    if (!r.ok) throw new Error("status " + r.status);
    render(await r.json());
    document.getElementById("error").textContent = "";
  } catch (e) {
    document.getElementById("error").textContent = "cannot reach the node: " + e.message;
  }
  setTimeout(poll, 1000);
}
poll();
</script>
</body></html>
"""#.utf8)
}

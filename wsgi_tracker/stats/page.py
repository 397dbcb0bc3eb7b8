"""/stats.html: one self-contained page (no CDN, no external file) that polls /stats.

The numbers are elements with ``data-field="<key path in /stats>"``, so the
page and the JSON cannot disagree about what a number means; the chart is an
SVG polyline of the last few minutes of announce rate, drawn by inline JS.
"""

from __future__ import annotations

from html import escape

_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>wsgi-tracker statistics</title>
<style>
body{font:15px/1.4 system-ui,sans-serif;margin:2em auto;max-width:60em;padding:0 1em;color:#222}
h1{font-size:1.4em;margin:0 0 .2em}
#status{color:#777;font-size:.9em;margin-bottom:1em}
.grid{display:grid;grid-template-columns:repeat(auto-fill,minmax(10em,1fr));gap:.6em}
.card{border:1px solid #ddd;border-radius:6px;padding:.5em .8em}
.card b{display:block;font-size:1.6em;font-variant-numeric:tabular-nums}
.card span{color:#666;font-size:.85em}
svg{width:100%;height:14em;border:1px solid #ddd;border-radius:6px;margin-top:1em}
.http{stroke:#1565c0}.udp{stroke:#ef6c00}.total{stroke:#333}
polyline{fill:none;stroke-width:2}
.legend i{display:inline-block;width:1.5em;height:3px;vertical-align:middle;margin:0 .3em 0 1em}
table{border-collapse:collapse;margin-top:1em}td,th{padding:.2em .8em;text-align:left}
</style></head>
<body data-stats-url="__STATS_URL__">
<h1>wsgi-tracker</h1>
<div id="status">loading&hellip;</div>
<div class="grid">
 <div class="card"><b data-field="torrents">-</b><span>torrents</span></div>
 <div class="card"><b data-field="peers">-</b><span>peers</span></div>
 <div class="card"><b data-field="seeders">-</b><span>seeders</span></div>
 <div class="card"><b data-field="leechers">-</b><span>leechers</span></div>
 <div class="card"><b data-field="announce_rate.total">-</b><span>announces/s</span></div>
 <div class="card"><b data-field="scrape_rate.total">-</b><span>scrapes/s</span></div>
 <div class="card"><b data-field="processes">-</b><span>processes counted</span></div>
 <div class="card"><b data-field="sync.lag_seconds">-</b><span>sync lag (s)</span></div>
</div>
<svg id="chart" viewBox="0 0 600 200" preserveAspectRatio="none" role="img"
 aria-label="announces per second">
 <polyline class="total" points=""/><polyline class="http" points=""/>
 <polyline class="udp" points=""/>
 <text x="4" y="14" font-size="12" id="ymax">0/s</text>
</svg>
<div class="legend">announces/s over the last 5 minutes:<i class="total"
 style="background:#333"></i>total<i style="background:#1565c0"></i>HTTP<i
 style="background:#ef6c00"></i>UDP</div>
<table>
 <tr><th></th><th>HTTP</th><th>UDP</th><th>total</th></tr>
 <tr><td>announces</td><td data-field="announces.http">-</td>
  <td data-field="announces.udp">-</td><td data-field="announces.total">-</td></tr>
 <tr><td>announces/s</td><td data-field="announce_rate.http">-</td>
  <td data-field="announce_rate.udp">-</td><td data-field="announce_rate.total">-</td></tr>
 <tr><td>scrapes</td><td data-field="scrapes.http">-</td>
  <td data-field="scrapes.udp">-</td><td data-field="scrapes.total">-</td></tr>
 <tr><td>scrapes/s</td><td data-field="scrape_rate.http">-</td>
  <td data-field="scrape_rate.udp">-</td><td data-field="scrape_rate.total">-</td></tr>
</table>
<h2 style="font-size:1.1em;margin-top:1.5em">Refused requests</h2>
<table id="errors"><tr><th>protocol</th><th>kind</th><th>count</th></tr></table>
<script>
"use strict";
const POINTS = 150, PERIOD_MS = 2000;
const statsUrl = new URL(document.body.dataset.statsUrl, location.href);
statsUrl.search = location.search;  // carries ?token= when the operator set one
const history = {total: [], http: [], udp: []};

function lookup(obj, path) {
  return path.split(".").reduce((o, k) => (o == null ? undefined : o[k]), obj);
}
function show(value) {
  if (value == null) return "-";
  return typeof value === "number" ? value.toLocaleString("en-US") : String(value);
}
function draw() {
  const all = history.total.concat(history.http, history.udp);
  const top = Math.max(1, ...all);
  document.getElementById("ymax").textContent = show(Math.round(top)) + "/s";
  for (const name of ["total", "http", "udp"]) {
    const pts = history[name].map((v, i) =>
      `${(600 * (i + POINTS - history[name].length) / (POINTS - 1)).toFixed(1)},` +
      `${(195 - 175 * v / top).toFixed(1)}`);
    document.querySelector("polyline." + name).setAttribute("points", pts.join(" "));
  }
}
function render(s) {
  for (const el of document.querySelectorAll("[data-field]")) {
    el.textContent = show(lookup(s, el.dataset.field));
  }
  const rows = [];
  for (const [proto, kinds] of Object.entries(s.errors || {})) {
    for (const [kind, n] of Object.entries(kinds)) rows.push([proto, kind, n]);
  }
  const table = document.getElementById("errors");
  table.querySelectorAll("tr.e").forEach((tr) => tr.remove());
  for (const [proto, kind, n] of rows) {
    const tr = table.insertRow();
    tr.className = "e";
    for (const v of [proto, kind, show(n)]) tr.insertCell().textContent = v;
  }
  for (const name of ["total", "http", "udp"]) {
    history[name].push(s.announce_rate[name]);
    if (history[name].length > POINTS) history[name].shift();
  }
  draw();
  document.body.dataset.statsTime = s.time;
  document.getElementById("status").textContent =
    `${s.scope === "tracker" ? "whole tracker" : "this process only"}, ` +
    `as of ${new Date(s.time * 1000).toLocaleTimeString()}`;
}
async function poll() {
  try {
    const r = await fetch(statsUrl, {cache: "no-store"});
    if (!r.ok) throw new Error(`HTTP ${r.status}`);
    render(await r.json());
  } catch (e) {
    document.getElementById("status").textContent = "cannot load statistics: " + e.message;
  }
  setTimeout(poll, PERIOD_MS);
}
poll();
</script>
</body></html>
"""


def render_page(stats_url: str) -> bytes:
    """The page, told where /stats is (a URL relative to the page itself)."""
    return _PAGE.replace("__STATS_URL__", escape(stats_url, quote=True)).encode()

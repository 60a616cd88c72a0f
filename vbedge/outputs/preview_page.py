"""The preview page (:mod:`vbedge.outputs.preview`): one HTML file, plain JavaScript, no build step and
nothing fetched from elsewhere (edge devices often have no network).

Every text that comes from the model or a source (captions, words, source names, error messages)
reaches the page through ``textContent``, never as HTML.
"""

PAGE = r"""<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>vbedge preview</title>
<style>
  :root { color-scheme: dark; --bg: #111418; --panel: #1b2027; --line: #2c333d; --dim: #8b95a3;
          --text: #e6e9ee; --accent: #6cb6ff; --warn: #f0b35a; --bad: #ff7b72; }
  * { box-sizing: border-box; }
  body { margin: 0; background: var(--bg); color: var(--text);
         font: 14px/1.4 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; }
  header { display: flex; gap: 16px; align-items: baseline; padding: 8px 16px;
           border-bottom: 1px solid var(--line); flex-wrap: wrap; }
  header h1 { font-size: 16px; margin: 0; }
  #info, #server { color: var(--dim); font-size: 12px; }
  #conn { font-size: 12px; padding: 1px 8px; border-radius: 8px; background: #1f3b24; }
  #conn.down { background: #4a1f1f; }
  main { display: flex; gap: 16px; padding: 16px; align-items: flex-start; }
  #sources { flex: 3; display: flex; flex-direction: column; gap: 16px; min-width: 0; }
  aside { flex: 2; min-width: 280px; max-width: 520px; background: var(--panel);
          border: 1px solid var(--line); border-radius: 6px; }
  aside h2 { font-size: 14px; margin: 0; padding: 8px 12px; border-bottom: 1px solid var(--line); }
  .source { background: var(--panel); border: 1px solid var(--line); border-radius: 6px; padding: 10px; }
  .source h2 { font-size: 14px; margin: 0 0 8px; overflow-wrap: anywhere; }
  .video { background: #000; border-radius: 4px; min-height: 120px; display: flex;
           align-items: center; justify-content: center; }
  .video img { width: 100%; height: auto; max-height: 70vh; object-fit: contain; display: block; }
  .novideo { color: var(--dim); padding: 40px; }
  .facts { display: grid; grid-template-columns: repeat(auto-fill, minmax(150px, 1fr));
           gap: 4px 16px; margin-top: 8px; font-size: 12px; }
  .facts div span { color: var(--dim); }
  .bad { color: var(--bad); }
  .warn { color: var(--warn); }
  .reports { margin: 8px 0 0; padding: 0; list-style: none; font-size: 12px; color: var(--warn); }
  #captions { list-style: none; margin: 0; padding: 0; max-height: calc(100vh - 120px); overflow-y: auto; }
  #captions li { padding: 8px 12px; border-bottom: 1px solid var(--line); }
  #captions li.changed .text { color: var(--accent); }
  .meta { color: var(--dim); font-size: 12px; }
  .text { font-size: 15px; font-weight: 600; overflow-wrap: anywhere; }
  .clip { font-size: 12px; overflow-wrap: anywhere; }
  .words { font-size: 12px; color: var(--dim); overflow-wrap: anywhere; }
  .words b { color: var(--text); font-weight: 500; }
  @media (max-width: 900px) { main { flex-direction: column; } aside { max-width: none; width: 100%; } }
</style>
</head>
<body>
<header>
  <h1>vbedge preview</h1>
  <span id="conn">connecting...</span>
  <span id="info"></span>
  <span id="server"></span>
</header>
<main>
  <section id="sources"></section>
  <aside>
    <h2>Captions <span class="meta" id="count"></span></h2>
    <ul id="captions"></ul>
  </aside>
</main>
<script>
"use strict";
// Untrusted text (captions, words, names, messages) only ever goes into textContent.
function el(tag, cls, text) {
  const node = document.createElement(tag);
  if (cls) node.className = cls;
  if (text !== undefined && text !== null) node.textContent = String(text);
  return node;
}
function num(value, digits) {
  return (value === null || value === undefined) ? "-" : Number(value).toFixed(digits);
}
function fact(parent, label, value, cls) {
  const div = el("div", cls || "");
  div.appendChild(el("span", "", label + " "));
  div.appendChild(document.createTextNode(value));
  parent.appendChild(div);
}
function words(label, pairs) {
  const div = el("div", "words");
  div.appendChild(document.createTextNode(label + ": "));
  (pairs || []).slice(0, 5).forEach(function (pair, i) {
    if (i) div.appendChild(document.createTextNode(", "));
    div.appendChild(el("b", "", pair[0]));
    div.appendChild(document.createTextNode(" " + num(pair[1], 2)));
  });
  if (!pairs || !pairs.length) div.appendChild(document.createTextNode("-"));
  return div;
}

const cards = new Map();   // source index -> {facts, reports, img}
let shownSeq = -1;

function sourceCard(source) {
  let card = cards.get(source.index);
  if (card) return card;
  const box = el("div", "source");
  box.appendChild(el("h2", "", source.id));
  const video = el("div", "video");
  const img = el("img");
  img.alt = "live video of " + source.id;
  img.dataset.source = String(source.index);
  const src = "/stream/" + source.index + ".mjpg";
  img.src = src;
  // The stream ends when the server restarts (an output retry): reconnect.
  img.addEventListener("error", function () {
    setTimeout(function () { img.src = src + "?t=" + Date.now(); }, 1000);
  });
  video.appendChild(img);
  box.appendChild(video);
  const facts = el("div", "facts");
  box.appendChild(facts);
  const reports = el("ul", "reports");
  box.appendChild(reports);
  document.getElementById("sources").appendChild(box);
  card = {facts: facts, reports: reports, img: img};
  cards.set(source.index, card);
  return card;
}

function drawSource(source) {
  const card = sourceCard(source);
  const facts = card.facts;
  facts.replaceChildren();
  const latest = source.latest || {};
  const stats = source.stats || {};
  const latency = latest.latency_ms || {};
  fact(facts, "clips", String(source.clips));
  ["capture", "preprocess", "s3d", "tokenize", "videobert", "total"].forEach(function (stage) {
    if (stage in latency) fact(facts, stage, num(latency[stage], 1) + " ms");
  });
  fact(facts, "dropped clips", String(latest.dropped_clips || 0), latest.dropped_clips ? "warn" : "");
  fact(facts, "dropped frames", String(latest.dropped_frames || 0), latest.dropped_frames ? "warn" : "");
  fact(facts, "reconnects", String(stats.reconnects || 0), stats.reconnects ? "warn" : "");
  fact(facts, "disconnects", String(stats.disconnects || 0), stats.disconnects ? "warn" : "");
  if (stats.last_error) fact(facts, "last error", stats.last_error, "bad");
  card.reports.replaceChildren();
  (source.events || []).slice(-5).reverse().forEach(function (report) {
    const when = new Date(report.time * 1000).toLocaleTimeString();
    card.reports.appendChild(el("li", "", when + "  " + report.kind + ": " + report.message));
  });
}

function drawCaptions(captions, names) {
  const list = document.getElementById("captions");
  list.replaceChildren();
  captions.slice().reverse().forEach(function (c) {
    const li = el("li", c.caption_changed ? "changed" : "");
    const where = names > 1 ? c.source + "  " : "";
    li.appendChild(el("div", "meta", where + num(c.start, 2) + "-" + num(c.end, 2) + " s  clip " +
                      c.clip + "  " + c.token + "  confidence " + num(c.confidence, 2)));
    li.appendChild(el("div", "text", c.caption || "..."));
    li.appendChild(el("div", "clip", "this clip: " + (c.clip_caption || "-")));
    li.appendChild(words("verbs", c.verbs));
    li.appendChild(words("nouns", c.nouns));
    const forecast = (c.forecast || []).slice(0, 5).map(function (f) {
      return f.token + " " + num(f.score, 2);
    }).join(", ");
    li.appendChild(el("div", "words", "forecast: " + (forecast || "-")));
    list.appendChild(li);
  });
  document.getElementById("count").textContent = "(" + captions.length + " newest)";
}

function draw(state) {
  const info = state.info || {};
  document.getElementById("info").textContent = Object.keys(info).map(function (k) {
    return k + ": " + info[k];
  }).join("   ");
  const outputs = (state.outputs || []).map(function (o) {
    return o.description + " " + o.state + (o.failures ? " (" + o.failures + " failures)" : "");
  });
  document.getElementById("server").textContent = (outputs.length ? "outputs: " + outputs.join(", ") + "   " : "") +
    "viewer disconnects: " + state.server.client_disconnects;
  state.sources.forEach(drawSource);
  if (state.seq !== shownSeq) {
    shownSeq = state.seq;
    drawCaptions(state.captions, state.sources.length);
  }
}

async function poll() {
  const conn = document.getElementById("conn");
  try {
    const response = await fetch("/api/state", {cache: "no-store"});
    if (!response.ok) throw new Error("HTTP " + response.status);
    draw(await response.json());
    conn.textContent = "live";
    conn.className = "";
  } catch (error) {
    conn.textContent = "not reachable (captioning ended?)";
    conn.className = "down";
  }
  setTimeout(poll, 500);
}
poll();
</script>
</body>
</html>
"""

// The taxonomy browser's page: the tree (expanded level by level, children paged, largest first),
// the selected node (path, sizes, children's imbalance, nearest members, a treemap or sunburst of
// what is below it), the levels (imbalance, size histograms) and a search box.
// Plain DOM; the charts use plotly, loaded after the tree has rendered so the first view is fast.
"use strict";

const PAGE = 100;
const state = { summary: null, selected: "root", chart: "treemap", plotly: null };

async function getJSON(url) {
  const response = await fetch(url);
  const body = await response.json();
  if (!response.ok) throw new Error(body.error || response.statusText);
  return body;
}

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (k === "class") node.className = v; else if (k.startsWith("on")) node.addEventListener(k.slice(2), v);
    else node.setAttribute(k, v);
  }
  for (const c of children) node.append(c instanceof Node ? c : document.createTextNode(String(c)));
  return node;
}

const fmt = (n) => Number(n).toLocaleString("en-US");
const enc = encodeURIComponent;

// -- the tree ------------------------------------------------------------------------------------
function treeItem(child, parentSize) {
  const li = el("li", { "data-key": child.key });
  const toggle = el("button", { class: "toggle", title: "expand", "aria-label": "expand " + child.key }, child.n_children ? "▸" : "·");
  if (!child.n_children) toggle.disabled = true;
  toggle.addEventListener("click", () => toggleNode(li));
  const width = parentSize ? Math.max(1, Math.round(120 * child.size / parentSize)) : 0;
  const row = el("div", { class: "row" }, toggle,
    el("span", { class: "name", onclick: () => select(child.key) }, child.key),
    el("span", { class: "bar", style: `width:${width}px` }),
    el("span", { class: "size" }, fmt(child.size) + (child.n_children ? ` · ${child.n_children} children` : "")),
    el("span", { class: "words" }, (child.labels || []).join(", ")));
  li.append(row);
  li.dataset.size = child.size;
  return li;
}

async function loadChildren(ul, key, parentSize, offset) {
  const page = await getJSON(`/api/nodes/${enc(key)}/children?offset=${offset}&limit=${PAGE}`);
  ul.querySelector(":scope > li.more-item")?.remove();
  for (const child of page.children) ul.append(treeItem(child, parentSize));
  const shown = offset + page.children.length;
  if (shown < page.total) {
    const more = el("button", { class: "more" }, `${fmt(page.total - shown)} more…`);
    more.addEventListener("click", () => loadChildren(ul, key, parentSize, shown));
    ul.append(el("li", { class: "more-item" }, more));
  }
  return page;
}

async function toggleNode(li, open) {
  const started = performance.now();
  const toggle = li.querySelector(":scope > .row > .toggle");
  let ul = li.querySelector(":scope > ul");
  if (ul && open !== true) { ul.remove(); toggle.textContent = "▸"; return; }
  if (ul) return;
  ul = el("ul", { class: "children" });
  li.append(ul);
  toggle.textContent = "▾";
  await loadChildren(ul, li.dataset.key, Number(li.dataset.size), 0);
  document.body.dataset.expandMs = (performance.now() - started).toFixed(1);
  document.body.dataset.expanded = li.dataset.key;
}

// Open the path to a node (ancestors' pages fetched up to the node's place), select it.
async function reveal(path) {
  let ul = document.getElementById("tree");
  let parentKey = "root";
  for (const key of path) {
    let li = ul.querySelector(`:scope > li[data-key="${key}"]`);
    while (!li) {
      const node = await getJSON(`/api/nodes/${enc(key)}`);
      const loaded = ul.querySelectorAll(":scope > li[data-key]").length;
      if (loaded > node.rank) throw new Error(`node ${key} missing under ${parentKey}`);
      const parentLi = ul.closest("li");
      await loadChildren(ul, parentKey, parentLi ? Number(parentLi.dataset.size) : state.summary.rows, loaded);
      li = ul.querySelector(`:scope > li[data-key="${key}"]`);
    }
    if (key !== path[path.length - 1]) {
      await toggleNode(li, true);
      ul = li.querySelector(":scope > ul");
    }
    parentKey = key;
  }
  await select(path[path.length - 1]);
  document.querySelector(`li[data-key="${path[path.length - 1]}"]`)?.scrollIntoView({ block: "center" });
}

// -- the selected node ---------------------------------------------------------------------------
async function select(key) {
  state.selected = key;
  document.querySelectorAll(".row.selected").forEach((r) => r.classList.remove("selected"));
  document.querySelector(`li[data-key="${key}"] > .row`)?.classList.add("selected");
  const [node, members] = await Promise.all([
    getJSON(`/api/nodes/${enc(key)}`), getJSON(`/api/nodes/${enc(key)}/members?limit=20`)]);
  document.getElementById("node-title").textContent = key === "root" ? "root" : `node ${key}`;
  const crumbs = document.getElementById("crumbs");
  crumbs.replaceChildren(el("a", { onclick: () => select("root") }, "root"));
  for (const k of node.path) crumbs.append("› ", el("a", { onclick: () => reveal(pathTo(node.path, k)) }, k));
  const im = node.children_imbalance;
  document.getElementById("node-facts").replaceChildren(
    el("div", {}, `${fmt(node.size)} rows · ${node.n_children} children`),
    el("div", {}, im ? `children sizes ${fmt(im.min)} / ${fmt(im.median)} / ${fmt(im.max)} (min/median/max) · ` +
      `max/mean ${im.max_over_mean.toFixed(2)} · entropy ${im.entropy.toFixed(3)} · gini ${im.gini.toFixed(3)}` : "a leaf"));
  const body = document.querySelector("#members tbody");
  body.replaceChildren(...members.members.map((m, i) => el("tr", { "data-id": m.id },
    el("td", { class: "num" }, i + 1), el("td", { class: "num" }, m.id), el("td", {}, m.label ?? ""),
    el("td", { class: "num" }, m.distance.toPrecision(4)))));
  if (!members.stored) body.replaceChildren(el("tr", {}, el("td", { colspan: 4 }, "no members stored for this node")));
  document.body.dataset.selected = key;
  drawChart();
}

const pathTo = (path, key) => path.slice(0, path.indexOf(key) + 1);

async function drawChart() {
  if (!state.plotly) return;
  const key = state.selected;
  const data = await getJSON(`/api/nodes/${enc(key)}/treemap?depth=2&limit=40`);
  if (key !== state.selected) return;
  const trace = { type: state.chart, ids: data.ids, parents: data.parents, labels: data.names, values: data.values,
    branchvalues: "total", maxdepth: 3, hovertemplate: "%{label}<br>%{value} rows<extra></extra>" };
  const chart = document.getElementById("chart");
  await Plotly.react(chart, [trace], { margin: { t: 10, l: 0, r: 0, b: 0 } }, { displaylogo: false, responsive: true });
  if (!chart.dataset.bound) {
    chart.dataset.bound = "1";
    // A click on a box opens that node (the chart re-centres on it); on the node itself, its parent.
    // Returning false stops plotly's own zoom: the server sends the piece under the new node.
    const open = (ev) => {
      const id = ev.points?.[0]?.id;
      if (!id || id.endsWith("/more")) return false;
      getJSON(`/api/nodes/${enc(id)}`).then((n) => {
        if (id !== state.selected) reveal(n.path);
        else if (n.parent === "root") select("root");
        else if (n.parent) getJSON(`/api/nodes/${enc(n.parent)}`).then((p) => reveal(p.path));
      });
      return false;
    };
    chart.on("plotly_treemapclick", open);
    chart.on("plotly_sunburstclick", open);
  }
}

// -- levels and search ---------------------------------------------------------------------------
function drawLevels() {
  const body = document.querySelector("#levels tbody");
  body.replaceChildren(...state.summary.levels.map((lv) => {
    const im = lv.imbalance;
    return el("tr", {}, ...[lv.level, fmt(lv.nodes), fmt(im.min), fmt(im.median), fmt(im.max), im.max_over_mean.toFixed(2),
      im.entropy.toFixed(3), im.gini.toFixed(3)].map((v) => el("td", { class: "num" }, v)));
  }));
}

function drawHistograms() {
  const box = document.getElementById("histograms");
  box.replaceChildren();
  for (const lv of state.summary.levels) {
    const div = el("div", { class: "plot", id: `hist-${lv.level}` });
    box.append(div);
    const h = lv.histogram;
    const names = h.counts.map((_, i) => (h.edges[i] === 0 ? "0" : `${fmt(h.edges[i])}–${fmt(h.edges[i + 1] - 1)}`));
    Plotly.newPlot(div, [{ type: "bar", x: names, y: h.counts, marker: { color: "#7ea6d8" } }],
      { title: { text: `level ${lv.level}: nodes by size`, font: { size: 13 } }, margin: { t: 30, l: 40, r: 10, b: 60 },
        xaxis: { title: { text: "rows in node" } }, yaxis: { title: { text: "nodes" } } }, { displaylogo: false });
  }
}

async function search(event) {
  event.preventDefault();
  const q = document.getElementById("q").value.trim();
  const hits = document.getElementById("hits");
  if (!q) return;
  hits.hidden = false;
  try {
    const found = await getJSON(`/api/search?q=${enc(q)}&limit=20`);
    hits.replaceChildren(...(found.hits.length ? found.hits.map((h) => el("li", {
      "data-id": h.id, "data-key": h.path[h.path.length - 1], onclick: () => reveal(h.path),
    }, `${h.label ?? "id " + h.id} (id ${h.id}) → ${h.path.join(" › ")}`)) : [el("li", {}, `nothing found for “${q}”`)]));
    if (found.hits.length) await reveal(found.hits[0].path);
  } catch (err) {
    hits.replaceChildren(el("li", { class: "error" }, err.message));
  }
}

function loadPlotly() {
  const script = el("script", { src: "/static/plotly.min.js" });
  script.addEventListener("load", () => { state.plotly = true; drawHistograms(); drawChart(); document.body.dataset.plots = "1"; });
  document.head.append(script);
}

async function main() {
  document.getElementById("search").addEventListener("submit", search);
  document.querySelectorAll("input[name=chart]").forEach((r) => r.addEventListener("change", () => {
    state.chart = r.value;
    const chart = document.getElementById("chart");
    if (state.plotly) { Plotly.purge(chart); delete chart.dataset.bound; }
    drawChart();
  }));
  try {
    state.summary = await getJSON("/api/taxonomy");
    const s = state.summary;
    document.getElementById("summary").textContent =
      `${s.uri} · ${fmt(s.rows)} rows · ${s.levels.map((l) => fmt(l.nodes)).join(" × ")} nodes · ${s.metric}`;
    await loadChildren(document.getElementById("tree"), "root", s.rows, 0);
    drawLevels();
    document.body.dataset.ready = performance.now().toFixed(1);
    select("root");
    loadPlotly();
  } catch (err) {
    document.getElementById("summary").replaceChildren(el("span", { class: "error" }, err.message));
  }
}

main();

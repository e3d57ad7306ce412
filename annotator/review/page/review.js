"use strict";
// The review page. Document text arrives as JSON and enters the page only as textContent.
// Entities are kept as token ranges [first, end, label], so every span snaps to whole tokens.
const config = JSON.parse(document.getElementById("config").textContent);
const $ = (id) => document.getElementById(id);
const byKey = {};
for (const [label, key] of Object.entries(config.keys)) if (key) byKey[key] = label;

let current = null; // {item, spans: [[first, end, label]...]}
let selected = -1; // index into current.spans
let label = config.labels[0];
let history = []; // keys decided on this page, for Back
let drag = null; // {from, to, moved}
let busy = false;

function api(path, body) {
  const options = { headers: { "X-Review-Token": config.token } };
  if (body) {
    options.method = "POST";
    options.headers["Content-Type"] = "application/json";
    options.body = JSON.stringify(body);
  }
  return fetch(path, options).then((response) =>
    response.json().then((data) => {
      if (!response.ok) throw new Error(data.error || response.statusText);
      return data;
    })
  );
}

function element(tag, className, text) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text !== undefined) node.textContent = text;
  return node;
}

function status(text, error) {
  $("status").textContent = text;
  $("status").className = error ? "status error" : "status";
}

function showCounts(data) {
  const c = data.counts;
  $("counts").textContent =
    `${data.done} done: ${c.accepted} accepted as the model had them, ` +
    `${c.corrected} corrected, ${c.skipped} skipped · ${data.total} sentences in the documents`;
}

function show(item) {
  selected = -1;
  drag = null;
  if (!item) {
    current = null;
    $("sentence").dataset.key = "";
    $("where").textContent = "";
    render();
    return;
  }
  const first = new Map(item.tokens.map((t, i) => [t[0], i]));
  const last = new Map(item.tokens.map((t, i) => [t[1], i + 1]));
  const spans = item.spans
    .filter((s) => first.has(s[0]) && last.has(s[1]))
    .map((s) => [first.get(s[0]), last.get(s[1]), s[2]]);
  current = { item, spans };
  $("sentence").dataset.key = item.key;
  $("where").textContent =
    `document ${item.doc}` + (item.where ? ` (${item.where})` : "") +
    (item.decided ? ` · ${item.decided === "skip" ? "skipped" : "accepted"} before: decide again` : "");
  render();
}

function scoreOf(span) {
  const [s, e, lab] = span;
  const tokens = current.item.tokens;
  const found = current.item.model.find(
    (m) => m[0] === tokens[s][0] && m[1] === tokens[e - 1][1] && m[2] === lab
  );
  return found ? found[3] : null;
}

function tokenNode(i) {
  const [s, e] = current.item.tokens[i];
  const node = element("span", "tok", current.item.text.slice(s, e));
  node.dataset.i = i;
  return node;
}

function paintDrag() {
  // the words under a drag, marked in place: nodes stay as they are until the drag ends
  for (const node of $("sentence").querySelectorAll(".tok")) {
    const i = Number(node.dataset.i);
    const inside = drag && i >= Math.min(drag.from, drag.to) && i <= Math.max(drag.from, drag.to);
    node.classList.toggle("drag", Boolean(inside));
  }
}

function render() {
  const box = $("sentence");
  box.textContent = "";
  renderLabels();
  if (!current) {
    box.textContent = "Nothing left to review: every sentence is decided.";
    return;
  }
  const { text, tokens } = current.item;
  const spanAt = new Array(tokens.length).fill(-1);
  current.spans.forEach((span, k) => {
    for (let i = span[0]; i < span[1]; i++) spanAt[i] = k;
  });
  let position = 0;
  let i = 0;
  while (i < tokens.length) {
    box.append(text.slice(position, tokens[i][0]));
    const k = spanAt[i];
    if (k < 0) {
      box.append(tokenNode(i));
      position = tokens[i][1];
      i += 1;
      continue;
    }
    const span = current.spans[k];
    const mark = element("mark", k === selected ? "ent selected" : "ent");
    mark.dataset.span = k;
    mark.dataset.label = span[2];
    mark.dataset.start = tokens[span[0]][0]; // character offsets in the sentence
    mark.dataset.end = tokens[span[1] - 1][1];
    mark.style.background = config.colors[span[2]] || "#ddd";
    for (let j = span[0]; j < span[1]; j++) {
      if (j > span[0]) mark.append(text.slice(tokens[j - 1][1], tokens[j][0]));
      mark.append(tokenNode(j));
    }
    mark.append(element("span", "lab", span[2]));
    const score = scoreOf(span);
    if (score !== null) mark.append(element("span", "score", score.toFixed(2)));
    box.append(mark);
    position = tokens[span[1] - 1][1];
    i = span[1];
  }
  box.append(text.slice(position));
}

function renderLabels() {
  const bar = $("labels");
  bar.textContent = "";
  for (const name of config.labels) {
    const button = element("button", name === label ? "current" : "", name + " ");
    button.type = "button";
    button.dataset.label = name;
    button.style.background = config.colors[name] || "#ddd";
    if (config.keys[name]) button.append(element("kbd", "", config.keys[name].toUpperCase()));
    button.addEventListener("click", () => setLabel(name));
    bar.append(button);
  }
}

function setLabel(name) {
  label = name;
  if (current && selected >= 0) current.spans[selected][2] = name;
  render();
}

function markSpan(from, to) {
  // a new entity over tokens from..to; entities it overlaps give way (their label is kept:
  // dragging over an entity resizes it)
  const overlapped = current.spans.filter((s) => s[0] < to && s[1] > from);
  const kept = current.spans.filter((s) => !(s[0] < to && s[1] > from));
  const span = [from, to, overlapped.length ? overlapped[0][2] : label];
  kept.push(span);
  kept.sort((a, b) => a[0] - b[0]);
  current.spans = kept;
  selected = kept.indexOf(span);
}

function tokenIndex(target) {
  const node = target.closest ? target.closest(".tok") : null;
  return node && $("sentence").contains(node) ? Number(node.dataset.i) : null;
}

$("sentence").addEventListener("mousedown", (event) => {
  const i = tokenIndex(event.target);
  if (!current || i === null || event.button !== 0) return;
  event.preventDefault();
  drag = { from: i, to: i, moved: false };
  paintDrag();
});

$("sentence").addEventListener("mouseover", (event) => {
  const i = tokenIndex(event.target);
  if (!drag || i === null || i === drag.to) return;
  drag.to = i;
  drag.moved = true;
  paintDrag();
});

document.addEventListener("mouseup", (event) => {
  if (!drag) return;
  const i = tokenIndex(event.target);
  if (i !== null && i !== drag.to) {
    drag.to = i;
    drag.moved = true;
  }
  const from = Math.min(drag.from, drag.to);
  const to = Math.max(drag.from, drag.to) + 1;
  const inside = current.spans.findIndex((s) => s[0] <= from && s[1] >= to);
  if (!drag.moved && inside >= 0) selected = selected === inside ? -1 : inside;
  else markSpan(from, to);
  drag = null;
  render();
});

function decide(action) {
  if (!current || busy) return;
  busy = true;
  const { item } = current;
  const tokens = item.tokens;
  const spans = current.spans.map((s) => [tokens[s[0]][0], tokens[s[1] - 1][1], s[2]]);
  const began = performance.now();
  api("/api/decide", { key: item.key, action, spans })
    .then((data) => {
      history.push(item.key);
      const ms = Math.round(performance.now() - began);
      status(`${action === "skip" ? "skipped" : "saved"} (${ms} ms)`);
      showCounts(data);
      show(data.items[0]);
    })
    .catch((error) => status(`not saved: ${error.message}`, true))
    .finally(() => {
      busy = false;
    });
}

function back() {
  if (busy || !history.length) return;
  const key = history.pop();
  api(`/api/item?key=${encodeURIComponent(key)}`)
    .then((data) => {
      showCounts(data);
      show(data.item);
      status("back to the last sentence");
    })
    .catch((error) => status(error.message, true));
}

function removeSelected() {
  if (!current || selected < 0) return;
  current.spans.splice(selected, 1);
  selected = -1;
  render();
}

function moveSelection(step) {
  if (!current || !current.spans.length) return;
  const n = current.spans.length;
  selected = selected < 0 ? (step > 0 ? 0 : n - 1) : (selected + step + n) % n;
  render();
}

$("accept").addEventListener("click", () => decide("accept"));
$("skip").addEventListener("click", () => decide("skip"));
$("delete").addEventListener("click", removeSelected);
$("back").addEventListener("click", back);

document.addEventListener("keydown", (event) => {
  if (event.ctrlKey || event.metaKey || event.altKey) return;
  const key = event.key.length === 1 ? event.key.toLowerCase() : event.key;
  let handled = true;
  if (key === "Enter") decide("accept");
  else if (key === "s") decide("skip");
  else if (key === "z") back();
  else if (key === "Delete" || key === "Backspace") removeSelected();
  else if (key === "ArrowRight") moveSelection(1);
  else if (key === "ArrowLeft") moveSelection(-1);
  else if (key === "Escape") {
    selected = -1;
    render();
  } else if (byKey[key]) setLabel(byKey[key]);
  else handled = false;
  if (handled) event.preventDefault();
});

api("/api/next")
  .then((data) => {
    showCounts(data);
    show(data.items[0]);
  })
  .catch((error) => status(error.message, true));

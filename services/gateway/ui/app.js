// Sluice live page: polls /ui/live every second and renders it. No framework, no CDN.
"use strict";
const $ = (id) => document.getElementById(id);
const programs = new Set();

function cell(text, cls) {
  const td = document.createElement("td");
  td.textContent = text === null || text === undefined ? "" : String(text);
  if (cls) td.className = cls;
  return td;
}

function fill(tbody, rows) {
  tbody.replaceChildren(...rows.map((cells) => {
    const tr = document.createElement("tr");
    tr.append(...cells);
    return tr;
  }));
}

function headers() {
  const h = {};
  const key = $("key").value || localStorage.getItem("sluice-key") || "";
  if (key) { h["Authorization"] = "Bearer " + key; localStorage.setItem("sluice-key", key); }
  if ($("program").value) h["program-id"] = $("program").value;
  return h;
}

function render(data) {
  for (const e of data.events) {
    if (e.program_id && !programs.has(e.program_id)) {
      programs.add(e.program_id);
      $("program").append(new Option(e.program_id, e.program_id));
    }
  }
  const user = $("user").value.trim();
  const events = data.events.filter((e) => !user || String(e.user_id).includes(user));
  fill($("events"), events.slice(0, 100).map((e) => [
    cell(e.received_at), cell(e.program_id), cell(e.user_id), cell(e.event_type),
    cell(e.asset_id), cell(e.source)]));
  fill($("sources"), Object.entries(data.accepted_by_source).sort()
    .map(([source, n]) => [cell(source), cell(n)]));
  fill($("lag"), data.lag.map((l) => [cell(l.group), cell(l.partition),
    cell(l.lag, l.lag > 0 ? "lagging" : "")]));
  fill($("dlq"), data.dlq.slice(0, 50).map((d) => [cell(d.reason), cell(d.source),
    cell(d.value, "value")]));
}

async function poll() {
  try {
    const response = await fetch("/ui/live", { headers: headers() });
    if (response.status === 401 || response.status === 403) {
      $("state").textContent = "a read key of the program is needed";
    } else if (!response.ok) {
      $("state").textContent = "gateway answered " + response.status;
    } else {
      render(await response.json());
      $("state").textContent = "updated " + new Date().toLocaleTimeString();
    }
  } catch (err) {
    $("state").textContent = "gateway unreachable";
  }
  setTimeout(poll, 1000);
}

$("key").value = localStorage.getItem("sluice-key") || "";
poll();

// The Loa dashboard: plain JavaScript over the /v1 API. The API key lives in sessionStorage (this
// tab only) and goes in the Authorization header; every value from the API is written with
// textContent, never as HTML.
"use strict";

(function () {
  const REFRESH_MS = 5000;
  const STATUSES = ["queued", "dispatching", "sent", "delivered", "undeliverable", "expired",
    "rejected", "failed", "bounced", "cancelled", "suppressed"];
  const FAILED = ["undeliverable", "expired", "rejected", "failed", "bounced"];
  const I18N = window.LOA_I18N;
  const $ = (sel) => document.querySelector(sel);
  const state = { key: sessionStorage.getItem("loa.key"), me: null, timer: null, chart: null, cursor: null };
  // Vietnamese unless the user chose English on this browser before.
  let lang = localStorage.getItem("loa.lang") === "en" ? "en" : "vi";

  function t(key, vars) {
    let text = (I18N[lang] && I18N[lang][key]) || I18N.en[key] || key;
    for (const [k, v] of Object.entries(vars || {})) text = text.replace("{" + k + "}", v);
    return text;
  }

  function applyLabels() {
    document.documentElement.lang = lang;
    $("#lang").value = lang;
    document.querySelectorAll("[data-i18n]").forEach((el) => { el.textContent = t(el.dataset.i18n); });
  }

  function el(tag, text, cls) {
    const node = document.createElement(tag);
    if (text !== undefined && text !== null) node.textContent = String(text);
    if (cls) node.className = cls;
    return node;
  }

  function fmt(n) { return Number(n || 0).toLocaleString(lang === "vi" ? "vi-VN" : "en-US"); }

  function when(iso) {
    if (!iso) return "";
    return new Date(iso).toLocaleString(lang === "vi" ? "vi-VN" : "en-GB", { hour12: false });
  }

  class ApiError extends Error {
    constructor(status, body) {
      super((body && body.error && body.error.message) || "HTTP " + status);
      this.status = status;
    }
  }

  async function api(method, path, body) {
    const headers = { Authorization: "Bearer " + state.key };
    if (body !== undefined) headers["Content-Type"] = "application/json";
    const res = await fetch(path, { method, headers, body: body === undefined ? undefined : JSON.stringify(body) });
    if (res.status === 401) { signOut(); throw new ApiError(401, null); }
    const data = (res.headers.get("content-type") || "").includes("json") ? await res.json() : null;
    if (!res.ok) throw new ApiError(res.status, data);
    return { status: res.status, data };
  }

  // --- views ------------------------------------------------------------------------------
  function show(id) {
    for (const v of ["#signin-view", "#list-view", "#campaign-view"]) $(v).hidden = v !== id;
  }

  function schedule(fn) {
    clearTimeout(state.timer);
    state.timer = setTimeout(async () => { try { await fn(); } catch (e) { console.warn(e); } }, REFRESH_MS);
  }

  async function route() {
    clearTimeout(state.timer);
    if (!state.key) { show("#signin-view"); $("#key").focus(); return; }
    if (!state.me) {
      try { state.me = (await api("GET", "/v1/me")).data; } catch (e) { return; }
      $("#who").textContent = state.me.org.name + " · " + state.me.key.role;
      $("#signout").hidden = false;
    }
    const m = location.hash.match(/^#\/campaigns\/([\w-]+)$/);
    if (m) await showCampaign(m[1]); else await showList();
  }

  function progressBar(progress) {
    const outer = el("div", null, "progress");
    const inner = el("div");
    inner.style.width = (progress.percent || 0) + "%";
    outer.appendChild(inner);
    outer.title = t("done_of", { done: fmt(progress.done), total: fmt(progress.total), percent: progress.percent });
    return outer;
  }

  function badge(status) { return el("span", t(status), "badge " + status); }

  async function showList(append) {
    show("#list-view");
    const url = "/v1/campaigns?limit=50" + (append && state.cursor ? "&cursor=" + encodeURIComponent(state.cursor) : "");
    const { data } = await api("GET", url);
    const body = $("#campaigns tbody");
    if (!append) body.replaceChildren();
    for (const c of data.items) {
      const row = el("tr");
      row.dataset.id = c.id;
      row.className = "clickable";
      const name = el("td");
      const link = el("a", c.name);
      link.href = "#/campaigns/" + c.id;
      name.appendChild(link);
      row.appendChild(name);
      row.appendChild(el("td", t(c.channel)));
      const st = el("td");
      st.appendChild(badge(c.status));
      row.appendChild(st);
      const pr = el("td");
      pr.appendChild(progressBar(c.progress || { percent: 0, done: 0, total: 0 }));
      row.appendChild(pr);
      row.appendChild(el("td", fmt(c.counts.delivered + (c.channel === "email" ? c.counts.sent : 0)), "num"));
      row.appendChild(el("td", fmt(FAILED.reduce((s, k) => s + (c.counts[k] || 0), 0)), "num"));
      row.appendChild(el("td", fmt(c.counts.total), "num"));
      row.appendChild(el("td", when(c.created_at)));
      row.addEventListener("click", (ev) => { if (ev.target.tagName !== "A") location.hash = "#/campaigns/" + c.id; });
      body.appendChild(row);
    }
    state.cursor = data.next_cursor;
    $("#more").hidden = !data.next_cursor;
    $("#list-empty").hidden = body.children.length > 0;
    if (!append) schedule(() => (location.hash === "" || location.hash === "#/") && showList());
  }

  function countsTable(table, rows, columns, firstLabel) {
    const head = table.querySelector("thead");
    head.replaceChildren();
    const hr = el("tr");
    hr.appendChild(el("th", t(firstLabel)));
    for (const c of columns) hr.appendChild(el("th", t(c), "num"));
    head.appendChild(hr);
    const body = table.querySelector("tbody");
    body.replaceChildren();
    for (const [key, counts] of Object.entries(rows)) {
      const tr = el("tr");
      tr.appendChild(el("td", key));
      for (const c of columns) tr.appendChild(el("td", fmt(counts[c]), "num"));
      body.appendChild(tr);
    }
  }

  function usedColumns(groups) {
    const cols = STATUSES.filter((s) => Object.values(groups).some((g) => g[s]));
    return ["total", ...cols];
  }

  async function showCampaign(id) {
    show("#campaign-view");
    const [{ data: c }, { data: n }] = await Promise.all([
      api("GET", "/v1/campaigns/" + encodeURIComponent(id)),
      api("GET", "/v1/campaigns/" + encodeURIComponent(id) + "/counts"),
    ]);
    $("#campaign-view").dataset.id = c.id;
    $("#campaign-name").textContent = c.name;
    const status = $("#campaign-status");
    status.textContent = t(c.status);
    status.className = "badge " + c.status;
    status.dataset.status = c.status;
    $("#campaign-window").textContent = c.waiting_for_window ? t("waiting_window") : "";
    const canAct = state.me.key.role !== "operator";
    $("#readonly").hidden = canAct;
    $("#btn-pause").hidden = !canAct || c.status !== "running";
    $("#btn-resume").hidden = !canAct || c.status !== "paused";
    $("#btn-cancel").hidden = !canAct || !["running", "paused", "scheduled"].includes(c.status);

    const p = n.progress;
    $("#campaign-progress").style.width = p.percent + "%";
    $("#campaign-progress-text").textContent = t("done_of", { done: fmt(p.done), total: fmt(p.total), percent: p.percent });

    const st = $("#status-table tbody");
    st.replaceChildren();
    for (const s of STATUSES) {
      const count = n.counts[s] || 0;
      if (!count) continue;
      const tr = el("tr");
      tr.dataset.status = s;
      tr.appendChild(el("td", t(s)));
      tr.appendChild(el("td", fmt(count), "num"));
      const bar = el("td");
      bar.appendChild(progressBar({ percent: n.counts.total ? (100 * count) / n.counts.total : 0, done: count, total: n.counts.total }));
      tr.appendChild(bar);
      st.appendChild(tr);
    }
    countsTable($("#carrier-table"), n.by_carrier, usedColumns(n.by_carrier), "carrier");
    countsTable($("#gateway-table"), n.by_gateway, usedColumns(n.by_gateway), "gateway");

    const et = $("#error-table tbody");
    et.replaceChildren();
    for (const [code, count] of Object.entries(n.by_error)) {
      const tr = el("tr");
      tr.appendChild(el("td", code));
      tr.appendChild(el("td", fmt(count), "num"));
      et.appendChild(tr);
    }
    $("#errors-empty").hidden = et.children.length > 0;

    const select = $("#field-name");
    const fields = c.fields.filter((f) => !c.secret_fields.includes(f));
    if (select.dataset.campaign !== c.id) {
      select.replaceChildren(...fields.map((f) => { const o = el("option", f); o.value = f; return o; }));
      select.dataset.campaign = c.id;
    }
    const ft = $("#field-tables");
    ft.replaceChildren();
    for (const [field, groups] of Object.entries(n.by_field)) {
      ft.appendChild(el("h4", field));
      const table = el("table");
      table.appendChild(el("thead"));
      table.appendChild(el("tbody"));
      countsTable(table, groups, usedColumns(groups), "name");
      table.querySelector("thead th").textContent = field;
      ft.appendChild(table);
    }
    drawChart(n.per_minute);
    schedule(() => location.hash === "#/campaigns/" + c.id && showCampaign(c.id));
  }

  function drawChart(points) {
    const box = $("#chart");
    const xs = points.map((p) => Date.parse(p.minute) / 1000);
    const data = [xs, points.map((p) => p.sent), points.map((p) => p.delivered)];
    const width = Math.max(300, box.clientWidth || 480);
    if (state.chart) { state.chart.destroy(); state.chart = null; }
    if (!window.uPlot) return;
    state.chart = new window.uPlot({
      width, height: 220,
      series: [{}, { label: t("sent"), stroke: "#2f6fb3", width: 2 }, { label: t("delivered"), stroke: "#2e8b57", width: 2 }],
      axes: [{}, { size: 60 }],
    }, data, box);
  }

  async function act(action) {
    const id = $("#campaign-view").dataset.id;
    if (action === "cancel" && !confirm(t("confirm_cancel"))) return;
    $("#action-error").textContent = "";
    try {
      await api("POST", "/v1/campaigns/" + encodeURIComponent(id) + "/" + action);
    } catch (e) {
      $("#action-error").textContent = e.message;
    }
    await showCampaign(id);
  }

  async function download(kind) {
    const id = $("#campaign-view").dataset.id;
    const path = "/v1/campaigns/" + encodeURIComponent(id) + "/report." + kind;
    const res = await fetch(path, { headers: { Authorization: "Bearer " + state.key } });
    if (res.status === 202) return followExport((await res.json()).id);
    if (!res.ok) { $("#action-error").textContent = "HTTP " + res.status; return; }
    save(await res.blob(), id + "-report." + kind);
  }

  async function followExport(exportId) {
    const { data: job } = await api("GET", "/v1/exports/" + exportId);
    $("#export-progress").textContent = t("exporting") + " " + job.progress.percent + "%";
    if (job.status === "failed") { $("#export-progress").textContent = job.error || "failed"; return; }
    if (job.status !== "done") { setTimeout(() => followExport(exportId), 2000); return; }
    $("#export-progress").textContent = "";
    const res = await fetch(job.download_url, { headers: { Authorization: "Bearer " + state.key } });
    save(await res.blob(), job.campaign_id + "-report.xlsx");
  }

  function save(blob, name) {
    const a = el("a");
    a.href = URL.createObjectURL(blob);
    a.download = name;
    document.body.appendChild(a);
    a.click();
    setTimeout(() => { URL.revokeObjectURL(a.href); a.remove(); }, 1000);
  }

  function signOut() {
    sessionStorage.removeItem("loa.key");
    state.key = null;
    state.me = null;
    $("#who").textContent = "";
    $("#signout").hidden = true;
    route();
  }

  // --- wiring -----------------------------------------------------------------------------
  $("#signin-form").addEventListener("submit", async (ev) => {
    ev.preventDefault();
    state.key = $("#key").value.trim();
    $("#signin-error").textContent = "";
    try {
      state.me = (await api("GET", "/v1/me")).data;
    } catch (e) {
      state.key = null;
      $("#signin-error").textContent = t("signin_failed");
      show("#signin-view");
      return;
    }
    sessionStorage.setItem("loa.key", state.key);
    $("#key").value = "";
    state.me = null;
    route();
  });
  $("#signout").addEventListener("click", signOut);
  $("#lang").addEventListener("change", () => {
    lang = $("#lang").value;
    localStorage.setItem("loa.lang", lang);
    applyLabels();
    route();
  });
  $("#more").addEventListener("click", () => showList(true));
  for (const b of document.querySelectorAll("#actions [data-action]")) b.addEventListener("click", () => act(b.dataset.action));
  $("#dl-csv").addEventListener("click", () => download("csv"));
  $("#dl-xlsx").addEventListener("click", () => download("xlsx"));
  $("#field-form").addEventListener("submit", async (ev) => {
    ev.preventDefault();
    const id = $("#campaign-view").dataset.id;
    try {
      await api("GET", "/v1/campaigns/" + encodeURIComponent(id) + "/counts?field=" + encodeURIComponent($("#field-name").value));
    } catch (e) {
      $("#action-error").textContent = e.message;
    }
    showCampaign(id);
  });
  window.addEventListener("hashchange", route);
  applyLabels();
  route();
})();

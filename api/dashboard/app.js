// Token Hub dashboard: every figure comes from the HTTP API and is shown as the
// API wrote it (exact decimal strings); charts parse numbers only to draw.
"use strict";

const KEY = "tokenhub.key";
const page = document.getElementById("page");
let me = null;

function h(tag, attributes = {}, ...children) {
  const element = document.createElement(tag);
  for (const [name, value] of Object.entries(attributes)) {
    if (name === "onclick") element.addEventListener("click", value);
    else element.setAttribute(name, value);
  }
  for (const child of children.flat()) {
    if (child !== null && child !== undefined) element.append(child instanceof Node ? child : String(child));
  }
  return element;
}

async function api(path, params = {}) {
  const query = new URLSearchParams(Object.entries(params).filter(([, value]) => value !== null && value !== undefined));
  const response = await fetch(path + (query.toString() ? `?${query}` : ""), {
    headers: { authorization: `Bearer ${sessionStorage.getItem(KEY)}` },
  });
  if (response.status === 401) { signOut(); throw new Error("signed out"); }
  if (!response.ok) throw new Error((await response.json()).error || response.statusText);
  return response;
}
const json = async (path, params) => (await api(path, params)).json();

async function all(path, params = {}) {
  const items = [];
  let cursor = null;
  do {
    const answer = await json(path, { ...params, cursor, limit: 1000 });
    items.push(...answer.items);
    cursor = answer.next_cursor;
  } while (cursor);
  return items;
}

function table(columns, rows, numeric = []) {
  return h("table", {},
    h("thead", {}, h("tr", {}, columns.map((column, index) => h("th", numeric.includes(index) ? { class: "n" } : {}, column)))),
    h("tbody", {}, rows.map(row => h("tr", {}, row.map((cell, index) =>
      h("td", numeric.includes(index) ? { class: "n" } : {}, cell ?? "-"))))));
}

function chart(id, traces, layout = {}) {
  const element = h("div", { id, class: "chart" });
  page.append(element);
  Plotly.newPlot(element, traces, { margin: { t: 40, l: 60, r: 20, b: 80 }, ...layout }, { displayModeBar: false, responsive: true });
  return element;
}

function card(label, figure, id) {
  return h("div", { class: "card" }, h("div", {}, label), h("div", { class: "figure", ...(id ? { "data-figure": id } : {}) }, figure));
}

// --- pages -------------------------------------------------------------------------

async function overview() {
  page.append(h("h2", {}, `Overview, ${me.period} (${me.currency})`));
  const balances = await all("/v1/balances");
  page.append(table(["business unit", "name", "spend", "revenue", "net", "Tokens consumed", "Tokens served"],
    balances.map(row => [row.bu, row.display_name, row.spend, row.revenue, row.net, row.tokens_consumed, row.tokens_served]),
    [2, 3, 4, 5, 6]));
  page.lastChild.id = "balances";
  const payers = balances.filter(row => Number(row.spend) !== 0).map(row => row.bu);
  chart("spend-by-payer", [{ type: "bar", x: payers, y: payers.map(bu => Number(balances.find(row => row.bu === bu).spend)),
    text: payers.map(bu => balances.find(row => row.bu === bu).spend), hoverinfo: "x+text" }],
    { title: { text: "Spend to date per payer" } });
  const trends = await Promise.all(payers.slice(0, 6).map(bu => json(`/v1/spend/${bu}/daily`)));
  const dayOfMonth = day => Number(day.day.slice(8, 10));
  chart("daily-trend", trends.flatMap(trend => [
    { type: "scatter", mode: "lines+markers", name: `${trend.bu} ${trend.period}`, x: trend.days.map(dayOfMonth),
      y: trend.days.map(day => Number(day.spend)), text: trend.days.map(day => day.spend), hoverinfo: "name+text" },
    { type: "scatter", mode: "lines", line: { dash: "dot" }, name: `${trend.bu} ${trend.previous_period}`,
      x: trend.previous_days.map(dayOfMonth), y: trend.previous_days.map(day => Number(day.spend)),
      text: trend.previous_days.map(day => day.spend), hoverinfo: "name+text" }]),
    { title: { text: "Daily spend, this month and the month before" }, xaxis: { title: { text: "day of month" }, range: [0.5, 31.5], dtick: 1 } });
  const spends = await Promise.all(payers.slice(0, 12).map(bu => json(`/v1/spend/${bu}`)));
  for (const dimension of ["model", "class", "modality"]) {
    const keys = [...new Set(spends.flatMap(spend => spend.by[dimension].map(total => total.key)))];
    chart(`spend-by-${dimension}`, keys.map(key => ({
      type: "bar", name: key, x: spends.map(spend => spend.bu),
      y: spends.map(spend => Number((spend.by[dimension].find(total => total.key === key) || { amount: "0" }).amount)),
      text: spends.map(spend => (spend.by[dimension].find(total => total.key === key) || { amount: "0" }).amount),
      hoverinfo: "name+text" })), { barmode: "stack", title: { text: `Month to date by ${dimension}` } });
  }
}

async function flows() {
  const month = me.period;
  page.append(h("h2", {}, `Flows between business units, ${month}`));
  // Month to date: who pays for whose consumption, from each payer's spend.
  const payers = (await all("/v1/balances")).filter(row => Number(row.spend) !== 0).map(row => row.bu).slice(0, 20);
  const spends = await Promise.all(payers.map(bu => json(`/v1/spend/${bu}`)));
  const links = spends.flatMap(spend => spend.by.consumer.map(total => ({ payer: spend.bu, consumer: total.key, amount: total.amount })))
    .filter(link => link.amount !== "0.000000000000");
  if (links.length) {
    const nodes = [...new Set(links.map(link => `${link.payer} pays`)), ...new Set(links.map(link => `${link.consumer} consumes`))];
    chart("sankey", [{ type: "sankey", node: { label: nodes },
      link: { source: links.map(link => nodes.indexOf(`${link.payer} pays`)), target: links.map(link => nodes.indexOf(`${link.consumer} consumes`)),
              value: links.map(link => Number(link.amount)), customdata: links.map(link => link.amount),
              hovertemplate: "%{source.label} → %{target.label}: %{customdata}<extra></extra>" } }],
      { title: { text: "Month to date: who pays for whose consumption" } });
  }
  page.append(h("h3", {}, "Payer and consumer, month to date"), table(["payer", "consumer", `amount ${me.currency}`],
    links.map(link => [link.payer, link.consumer, link.amount]), [2]));
  page.lastChild.id = "payer-consumer";
  const settlement = await json(`/v1/settlements/${month}`);
  page.append(h("h3", {}, "Settlement"), h("p", {}, settlement.final ? "Settled." :
    "Provisional: the month is not closed; the settlement nets what is invoiced so far."));
  if (settlement.matrix.length) {
    const units = [...new Set(settlement.matrix.map(flow => flow.payer_bu))];
    const nodes = [...units.map(bu => `${bu} pays`), ...new Set(settlement.matrix.map(flow => `${flow.provider_bu} provides`))];
    chart("settlement-sankey", [{ type: "sankey", node: { label: nodes },
      link: { source: settlement.matrix.map(flow => nodes.indexOf(`${flow.payer_bu} pays`)),
              target: settlement.matrix.map(flow => nodes.indexOf(`${flow.provider_bu} provides`)),
              value: settlement.matrix.map(flow => Number(flow.amount)), customdata: settlement.matrix.map(flow => flow.amount),
              hovertemplate: "%{source.label} → %{target.label}: %{customdata}<extra></extra>" } }],
      { title: { text: "Who owes whom before netting" } });
  }
  page.append(h("h3", {}, "Matrix"), table(["payer", "provider", `amount ${settlement.currency}`],
    settlement.matrix.map(flow => [flow.payer_bu, flow.provider_bu, flow.amount]), [2]));
  page.lastChild.id = "matrix";
  page.append(h("h3", {}, "Net positions (revenue − spend)"), table(["business unit", "exact", "rounded"],
    Object.keys(settlement.positions).sort().map(bu => [bu, settlement.positions[bu], settlement.rounded_positions[bu]]), [1, 2]));
  page.append(h("h3", {}, "Transfers that clear them"), table(["pays", "receives", "amount"],
    settlement.transfers.map(transfer => [transfer.from_bu, transfer.to_bu, transfer.amount]), [2]));
}

async function openDocument(path, type) {
  const blob = await (await api(path)).blob();
  window.open(URL.createObjectURL(new Blob([blob], { type })), "_blank");
}

async function businessUnit(bu) {
  if (!bu) {
    const units = (await all("/v1/balances")).map(row => row.bu);
    page.append(h("h2", {}, "Business units"), h("ul", {}, units.map(unit => h("li", {}, h("a", { href: `#bu/${unit}` }, unit)))));
    return;
  }
  page.append(h("h2", {}, `${bu}, ${me.period}`));
  const [balance, quota, budgets, spend, invoices] = await Promise.all([
    json(`/v1/balances/${bu}`), json(`/v1/quota/${bu}`).catch(() => null), all("/v1/budgets", { payer: bu }),
    json(`/v1/spend/${bu}`), all("/v1/invoices", { payer: bu })]);
  page.append(h("div", { class: "cards" },
    card(`spend (${me.currency})`, balance.spend, "spend"), card("revenue", balance.revenue, "revenue"),
    card("net", balance.net, "net"), card("month to date", spend.spend, "month-spend"),
    card("forecast to month end", spend.forecast_month_end ?? "-", "forecast"),
    card("quota", quota ? `${quota.status}${quota.remaining ? `, ${quota.remaining} left` : ""}` : "-", "quota")));
  for (const budget of budgets) {
    const scope = budget.consumer_bu ? `for ${budget.consumer_bu}` : "whole payer";
    chart(`gauge-${budget.consumer_bu || "all"}`, [{ type: "indicator", mode: "gauge+number", value: Number(budget.spent),
      number: { valueformat: ".6f" }, title: { text: `Budget ${budget.amount} (${scope}), used ${budget.used_percent} %` +
        (!budget.consumer_bu && spend.forecast_month_end ? `; forecast to month end ${spend.forecast_month_end}` : "") },
      gauge: { axis: { range: [0, Math.max(Number(budget.amount), Number(budget.hard_limit || 0), Number(budget.spent)) * 1.1] },
        threshold: budget.hard_limit ? { value: Number(budget.hard_limit), line: { color: "#b00020", width: 3 } } : undefined,
        steps: budget.thresholds_percent.map(percent => ({ range: [0, Number(budget.amount) * Number(percent) / 100], color: "rgba(110,168,254,0.12)" })) } }],
      { height: 280 });
    page.append(h("p", {}, `Thresholds ${budget.thresholds_percent.join(", ")} %; crossed: ${budget.thresholds_crossed.join(", ") || "none"};`,
      ` hard limit ${budget.hard_limit ?? "none"}; spent ${budget.spent}.`));
  }
  page.append(h("h3", {}, "Top apps and models this month"));
  page.append(table(["app", "Tokens", "amount"], spend.by.app.map(total => [total.key, total.tokens, total.amount]), [1, 2]));
  page.append(table(["model", "Tokens", "amount"], spend.by.model.map(total => [total.key, total.tokens, total.amount]), [1, 2]));
  for (const tier of spend.period_tiers) {
    page.append(h("p", {}, `Period tier so far: ${tier.model} at ${tier.tokens} Tokens, ${tier.charge}` +
      (tier.reached ? ` (tier ${tier.reached.tier} of ${tier.reached.tiers}, ${tier.reached.mode})` : "")));
  }
  page.append(h("h3", {}, "Invoices"), table(["period", "number", "status", "total", ""], invoices.map(invoice => [
    invoice.period, invoice.number, invoice.status, invoice.total,
    h("span", {}, h("button", { onclick: () => openDocument(`/v1/invoices/${invoice.invoice_id}?format=html`, "text/html") }, "HTML"), " ",
      h("button", { onclick: () => openDocument(`/v1/invoices/${invoice.invoice_id}?format=csv`, "text/csv") }, "CSV"))]), [1, 3]));
  page.lastChild.id = "invoices";
  const statement = await json(`/v1/statements/${bu}`, { from: me.period_start, to: me.period_end, limit: 50 });
  page.append(h("h3", {}, "Statement (first 50 entries of the month)"),
    table(["event time", "entry", "kind", "payer", "consumer", "provider", "model", "amount", "Tokens"],
      statement.entries.map(entry => [entry.event_time, `${entry.chain}#${entry.sequence}`, entry.kind, entry.payer_bu,
        entry.consumer_bu, entry.provider_bu, entry.model, entry.amount, entry.tokens]), [7, 8]));
}

async function monthEnd() {
  page.append(h("h2", {}, "Month end"));
  const invoices = await all("/v1/invoices");
  const periods = [...new Set(invoices.map(invoice => invoice.period))].sort().reverse();
  page.append(table(["period", "payer", "number", "status", "total"],
    periods.flatMap(period => invoices.filter(invoice => invoice.period === period)
      .map(invoice => [period, invoice.payer_bu, invoice.number, invoice.status, invoice.total])), [2, 4]));
  const settled = await all("/v1/settlements");
  page.append(h("h3", {}, "Settlements"), table(["month", "settled at"], settled.map(row => [row.period, row.settled_at])));
}

async function audit() {
  page.append(h("h2", {}, "Audit"));
  if (me.role === "auditor" || me.role === "admin") {
    const status = h("span", { id: "verify-status" });
    page.append(h("p", {}, h("button", { id: "run-verify", onclick: async () => {
      const started = await (await fetch("/v1/audit/verify", { method: "POST", body: "{}",
        headers: { authorization: `Bearer ${sessionStorage.getItem(KEY)}`, "content-type": "application/json" } })).json();
      status.textContent = ` verify ${started.id} started`;
    } }, "Run verify"), status));
  }
  const runs = (await json("/v1/audit/runs", { limit: 20 })).items;
  page.append(h("h3", {}, "Last runs"), table(["kind", "scope", "by", "requested", "finished", "result"], runs.map(run => [
    run.kind, run.scope || "all", run.requested_by, run.requested_at, run.finished_at,
    run.ok === null ? (run.error || "running") : h("span", { class: run.ok ? "ok" : "bad" }, run.ok ? "OK" : "FAILED")])));
  const chains = await all("/v1/chains");
  page.append(h("h3", {}, "Chain heads per payer"), table(["chain", "sequence", "head hash"],
    chains.map(chain => [chain.chain, chain.sequence, chain.head_hash]), [1]));
}

async function operations() {
  page.append(h("h2", {}, "Operations"));
  const rejected = (await json("/v1/rejected", { limit: 100 })).items;
  page.append(h("h3", {}, "Rejected usage (oldest first)"), table(["received", "reason", "source", "id", "message"],
    rejected.map(row => [row.received_at, row.reason_code, row.usage_source, row.usage_id, row.message])));
  const parked = (await json("/v1/parked", { limit: 100 })).items;
  page.append(h("h3", {}, "Parked consumption (waiting for a price)"), table(["event time", "payer", "model", "why"],
    parked.map(row => [row.event_time, row.payer_bu, row.model, row.reason])));
  if (me.role === "bu-reader") return;  // lag and dead letters span every unit: finance, auditors and admins
  const lag = await json("/v1/operations/lag");
  page.append(h("h3", {}, "Lag per service (records not handled yet, outbox backlog)"),
    table(["service", "records behind", "by topic", "outbox events"], lag.services.map(row => [row.service,
      row.records_behind === null ? "unknown" : row.records_behind,
      Object.entries(row.by_topic).map(([topic, behind]) => `${topic}: ${behind}`).join(", "),
      row.outbox_events === null ? "unknown" : row.outbox_events]), [1, 3]));
  page.lastChild.id = "lag";
  if (lag.problems.length) page.append(h("p", { class: "bad" }, lag.problems.join("; ")));
  const dead = await json("/v1/operations/deadletters", { limit: 100 });
  page.append(h("h3", { id: "deadletter-total" }, `Dead letters: ${dead.total}`), table(["service", "records"],
    Object.entries(dead.by_service).map(([service, count]) => [service, count]), [1]));
  page.lastChild.id = "deadletter-counts";
  page.append(table(["dead-lettered", "service", "from", "offset", "reason", "bytes"], dead.items.map(row => [
    row.dead_lettered_at, row.service, `${row.source_topic}/${row.source_partition}`, row.source_offset, row.reason,
    row.value_bytes]), [3, 5]));
  page.lastChild.id = "deadletters";
}

// --- navigation --------------------------------------------------------------------

const PAGES = { overview, flows, bu: businessUnit, "month-end": monthEnd, audit, operations };

async function route() {
  if (!me) return;
  let [name, argument] = (location.hash.slice(1) || (me.bu ? `bu/${me.bu}` : "overview")).split("/");
  if (me.bu && name === "bu") argument = argument || me.bu;
  const allowed = !document.querySelector(`nav a[data-page="${name}"][data-reads-all]`) || me.role !== "bu-reader";
  if (me.bu && name === "bu" && argument !== me.bu) {
    delete page.dataset.loaded;
    page.replaceChildren(h("p", { class: "error", id: "forbidden" }, `This key reads for ${me.bu} only.`));
    return;
  }
  document.querySelectorAll("nav a").forEach(link => link.classList.toggle("active", link.dataset.page === name));
  delete page.dataset.loaded;
  page.replaceChildren();
  page.dataset.page = name;
  if (!PAGES[name] || !allowed) {
    page.append(h("p", { class: "error", id: "forbidden" }, "This key may not see that page."));
    return;
  }
  try {
    await PAGES[name](argument);
    page.dataset.loaded = name;
  } catch (error) {
    page.append(h("p", { class: "error" }, error.message));
  }
}

async function signIn(key) {
  sessionStorage.setItem(KEY, key);
  try {
    me = await json("/v1/me");
  } catch (error) {
    sessionStorage.removeItem(KEY);
    document.getElementById("sign-in-error").textContent = "That key was refused.";
    return;
  }
  document.getElementById("sign-in").hidden = true;
  page.hidden = false;
  document.getElementById("nav").hidden = false;
  document.getElementById("sign-out").hidden = false;
  document.getElementById("who").textContent = `${me.owner} (${me.role}${me.bu ? ` of ${me.bu}` : ""})`;
  document.querySelectorAll("nav a[data-reads-all]").forEach(link => { link.hidden = me.role === "bu-reader"; });
  await route();
}

function signOut() {
  sessionStorage.removeItem(KEY);
  me = null;
  location.hash = "";
  location.reload();
}

document.getElementById("sign-in-form").addEventListener("submit", event => {
  event.preventDefault();
  signIn(document.getElementById("key").value.trim());
});
document.getElementById("sign-out").addEventListener("click", signOut);
window.addEventListener("hashchange", route);
if (sessionStorage.getItem(KEY)) signIn(sessionStorage.getItem(KEY));

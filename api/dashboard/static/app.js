// The alignd dashboard: a hash-routed single page on the public REST API (see api.js).
import { api, ApiError, auth, download, sse, upload } from "./api.js";
import { Chart, CHARTS, MetricStore } from "./charts.js";
import { bytes, clear, h, num, when } from "./dom.js";
import { field, objectFields } from "./form.js";

const view = document.getElementById("view");
const FINAL = new Set(["succeeded", "failed", "cancelled"]);
const ONLINE = new Set(["grpo", "ppo"]);
const KIND = { dpo: "preference", reward: "preference", sft: "sft", grpo: "prompt", ppo: "prompt" };
let teardown = [];

function onLeave(fn) {
  teardown.push(fn);
}

function errorBox(err) {
  const box = h("div", { class: "error", role: "alert" });
  if (!(err instanceof ApiError)) {
    box.append(String(err.message || err));
    return box;
  }
  box.append(h("strong", {}, `${err.status} ${err.code}`), ": ", err.message);
  const rows = err.details.filter((d) => d && typeof d === "object");
  if (rows.length) {
    const cols = [...new Set(rows.flatMap((d) => Object.keys(d)))];
    box.append(
      h(
        "table",
        { class: "details" },
        h("thead", {}, h("tr", {}, ...cols.map((c) => h("th", {}, c)))),
        h(
          "tbody",
          {},
          ...rows.map((d) =>
            h("tr", {}, ...cols.map((c) => h("td", {}, d[c] !== null && typeof d[c] === "object" ? JSON.stringify(d[c]) : d[c] ?? ""))),
          ),
        ),
      ),
    );
  }
  return box;
}

function statusBadge(status) {
  return h("span", { class: `badge ${status}`, "data-status": status }, status);
}

function progressBar(progress) {
  const total = progress.total_steps;
  const pct = total ? Math.min(100, (100 * progress.step) / total) : 0;
  return h(
    "div",
    { class: "progress", title: total ? `step ${progress.step} of ${total}` : `step ${progress.step}` },
    h("div", { class: "bar", style: `width:${pct}%` }),
    h("span", {}, total ? `${progress.step}/${total}` : `${progress.step}`),
  );
}

/** A paged table over a cursor-paged list endpoint (Prev keeps a stack of cursors). */
function pagedTable({ fetchPage, columns, rowOf, empty }) {
  const stack = [];
  let cursor = null;
  const table = h("table", { class: "list" });
  const info = h("span", { class: "muted" });
  const prev = h("button", { type: "button", disabled: true }, "← Newer");
  const next = h("button", { type: "button", disabled: true }, "Older →");
  const errorSlot = h("div");
  const root = h("div", {}, errorSlot, table, h("div", { class: "pager" }, prev, info, next));
  async function load() {
    try {
      const page = await fetchPage(cursor);
      clear(errorSlot);
      clear(table).append(
        h("thead", {}, h("tr", {}, ...columns.map((c) => h("th", {}, c)))),
        h("tbody", {}, ...(page.data.length ? page.data.map(rowOf) : [h("tr", {}, h("td", { colspan: columns.length, class: "muted" }, empty))])),
      );
      info.textContent = `page ${stack.length + 1}`;
      prev.disabled = stack.length === 0;
      next.disabled = !page.has_more;
      next.onclick = () => {
        stack.push(cursor);
        cursor = page.next_cursor;
        load();
      };
      return page;
    } catch (err) {
      clear(errorSlot).append(errorBox(err));
      return null;
    }
  }
  prev.onclick = () => {
    cursor = stack.pop() ?? null;
    load();
  };
  return { root, load };
}

// ---------------------------------------------------------------- sign in

function signIn() {
  const input = h("input", { type: "password", name: "api_key", autocomplete: "off", placeholder: "sk-...", required: true });
  const errorSlot = h("div");
  const form = h(
    "form",
    { class: "card narrow", id: "sign-in" },
    h("h1", {}, "Sign in"),
    h("p", { class: "muted" }, "Paste an API key (", h("code", {}, "alignd keys create"), "). It stays in this tab's session storage and is sent as the Bearer header."),
    h("label", { class: "field" }, h("span", { class: "label" }, "API key"), input),
    h("button", { type: "submit", class: "primary" }, "Sign in"),
    errorSlot,
  );
  form.addEventListener("submit", async (e) => {
    e.preventDefault();
    const key = input.value.trim();
    try {
      // A plain fetch (not api()): a wrong key must not trigger the signed-out redraw.
      const r = await fetch("/v1/jobs?limit=1", { headers: { Authorization: `Bearer ${key}` } });
      if (!r.ok) throw new ApiError(r.status, await r.json().catch(() => null));
      auth.set(key);
      location.hash = location.hash && location.hash !== "#/sign-in" ? location.hash : "#/jobs";
      route();
    } catch (err) {
      clear(errorSlot).append(errorBox(err));
    }
  });
  view.append(form);
  input.focus();
}

// ---------------------------------------------------------------- jobs

function jobsList() {
  const status = h("select", { name: "status" }, h("option", { value: "" }, "any status"), ...["queued", "running", "pausing", "paused", "cancelling", "succeeded", "failed", "cancelled"].map((s) => h("option", { value: s }, s)));
  const algorithm = h("select", { name: "algorithm" }, h("option", { value: "" }, "any algorithm"), ...Object.keys(KIND).map((a) => h("option", { value: a }, a)));
  const table = pagedTable({
    columns: ["Job", "Algorithm", "Status", "Progress", "Base model", "Created"],
    empty: "No jobs yet.",
    fetchPage: (after) => {
      const q = new URLSearchParams({ limit: "25" });
      if (after) q.set("after", after);
      if (status.value) q.set("status", status.value);
      if (algorithm.value) q.set("algorithm", algorithm.value);
      return api(`/v1/jobs?${q}`);
    },
    rowOf: (job) =>
      h(
        "tr",
        { "data-job": job.id },
        h("td", {}, h("a", { href: `#/jobs/${job.id}` }, job.name || job.id), job.name ? h("div", { class: "muted mono" }, job.id) : ""),
        h("td", {}, job.algorithm),
        h("td", {}, statusBadge(job.status)),
        h("td", {}, progressBar(job.progress)),
        h("td", { class: "mono ellipsis" }, job.base_model),
        h("td", {}, when(job.created_at)),
      ),
  });
  status.onchange = algorithm.onchange = () => table.load();
  view.append(
    h("div", { class: "toolbar" }, h("h1", {}, "Jobs"), status, algorithm, h("a", { class: "button primary", href: "#/jobs/new" }, "New job")),
    table.root,
  );
  // Refresh while something is live (the page stays where it is).
  let timer = null;
  const tick = async () => {
    const page = await table.load();
    const live = page && page.data.some((j) => !FINAL.has(j.status));
    timer = setTimeout(tick, live ? 3000 : 15000);
  };
  tick();
  onLeave(() => clearTimeout(timer));
}

async function jobPage(id) {
  const abort = new AbortController();
  onLeave(() => abort.abort());
  let job;
  try {
    job = await api(`/v1/jobs/${id}`, { signal: abort.signal });
  } catch (err) {
    view.append(errorBox(err));
    return;
  }
  const header = h("div", { class: "toolbar" });
  const summary = h("dl", { class: "summary" });
  const chartsBox = h("div", { class: "charts" });
  const otherBox = h("div", { class: "other" });
  const samplesBody = h("tbody");
  const samples = h(
    "section",
    { id: "samples", hidden: !ONLINE.has(job.algorithm) },
    h("h2", {}, "Rollout samples"),
    h("div", { class: "scroll" }, h("table", { class: "list samples" }, h("thead", {}, h("tr", {}, h("th", {}, "Step"), h("th", {}, "Prompt"), h("th", {}, "Completion"), h("th", {}, "Reward"))), samplesBody)),
  );
  const checkpointsBox = h("div");
  const logBody = h("tbody");
  const errorSlot = h("div");
  view.append(
    header,
    errorSlot,
    summary,
    h("section", {}, h("h2", {}, "Metrics"), chartsBox, otherBox),
    samples,
    h("section", { id: "checkpoints" }, h("h2", {}, "Checkpoints"), checkpointsBox),
    h("section", { id: "events" }, h("h2", {}, "Events"), h("div", { class: "log" }, h("table", { class: "list" }, logBody))),
    h("details", {}, h("summary", {}, "Hyperparameters"), h("pre", {}, JSON.stringify({ hyperparameters: job.hyperparameters, lora: job.lora, reward: job.reward, seed: job.seed }, null, 2))),
  );

  function renderHeader() {
    const cancel = h("button", { type: "button", class: "danger", id: "cancel", hidden: FINAL.has(job.status) || job.status === "cancelling" }, "Cancel");
    cancel.onclick = async () => {
      if (!confirm("Cancel this job?")) return;
      try {
        job = await api(`/v1/jobs/${id}/cancel`, { method: "POST" });
        renderHeader();
      } catch (err) {
        clear(errorSlot).append(errorBox(err));
      }
    };
    // Pause: queued -> paused at once, running -> pausing (saved at the next step boundary); resume a paused one.
    const pause = h("button", { type: "button", id: "pause", hidden: !["queued", "running"].includes(job.status) }, "Pause");
    const resume = h("button", { type: "button", id: "resume", hidden: job.status !== "paused" }, "Resume");
    for (const [button, action] of [[pause, "pause"], [resume, "resume"]]) {
      button.onclick = async () => {
        button.disabled = true;
        try {
          job = await api(`/v1/jobs/${id}/${action}`, { method: "POST" });
          renderHeader();
        } catch (err) {
          button.disabled = false;
          clear(errorSlot).append(errorBox(err));
        }
      };
    }
    clear(header).append(h("h1", {}, job.name || job.id), statusBadge(job.status), progressBar(job.progress), pause, resume, cancel);
    const items = [
      ["id", job.id],
      ["algorithm", job.algorithm],
      ["base model", job.base_model],
      ["dataset", h("a", { href: `#/datasets/${job.dataset_id}` }, job.dataset_id)],
      ["created", when(job.created_at)],
      ["finished", when(job.finished_at)],
      ["attempt", job.attempt],
    ];
    if (job.progress.eta_seconds != null && !FINAL.has(job.status)) items.push(["eta", `${Math.round(job.progress.eta_seconds)} s`]);
    if (job.error) items.push(["error", h("span", { class: "error-text" }, `${job.error.code}: ${job.error.message}`)]);
    clear(summary).append(...items.flatMap(([k, v]) => [h("dt", {}, k), h("dd", { class: "mono" }, v)]));
  }
  renderHeader();

  async function renderCheckpoints() {
    try {
      const page = await api(`/v1/jobs/${id}/checkpoints`, { signal: abort.signal });
      if (!page.data.length) {
        clear(checkpointsBox).append(h("p", { class: "muted" }, "No checkpoints yet."));
        return;
      }
      clear(checkpointsBox).append(
        h(
          "table",
          { class: "list" },
          h("thead", {}, h("tr", {}, ...["Step", "Kind", "Size", "sha256", ""].map((c) => h("th", {}, c)))),
          h(
            "tbody",
            {},
            ...page.data.map((c) => {
              const button = h("button", { type: "button", "data-download": c.id }, "Download");
              const note = h("span", { class: "muted" });
              button.onclick = async () => {
                button.disabled = true;
                note.textContent = " downloading…";
                try {
                  const got = await download(`/v1/checkpoints/${c.id}/download`, `${c.id}.tar`);
                  note.textContent = ` ${bytes(got.bytes)} saved`;
                } catch (err) {
                  note.textContent = ` ${err.message}`;
                } finally {
                  button.disabled = false;
                }
              };
              return h("tr", { "data-checkpoint": c.id }, h("td", {}, c.step), h("td", {}, c.kind), h("td", {}, bytes(c.bytes)), h("td", { class: "mono sha" }, c.sha256), h("td", {}, button, note));
            }),
          ),
        ),
      );
    } catch (err) {
      if (err.name !== "AbortError") clear(checkpointsBox).append(errorBox(err));
    }
  }
  renderCheckpoints();

  // Metrics and events arrive on the SSE stream (from seq 0, then live); charts redraw at most 4x/s.
  const store = new MetricStore();
  const charts = new Map();
  const others = new Set();
  let dirty = false;
  let logRows = 0;
  const MAX_LOG = 500;
  const MAX_SAMPLES = 200;
  function redraw() {
    if (!dirty) return;
    dirty = false;
    const names = store.names();
    for (const def of CHARTS) {
      const mine = names.filter(def.match).sort();
      const chart = charts.get(def.id);
      if (!mine.length) continue;
      if (!chart || chart.names.join() !== mine.join()) {
        if (chart) chart.destroy();
        charts.set(def.id, new Chart(chartsBox, def.title, mine));
        // keep the charts in CHARTS order
        for (const d of CHARTS) if (charts.has(d.id)) chartsBox.append(charts.get(d.id).root);
      }
      charts.get(def.id).update(store);
    }
    const rest = names.filter((n) => !CHARTS.some((d) => d.match(n))).sort();
    if (rest.join() !== [...others].join()) {
      others.clear();
      rest.forEach((n) => others.add(n));
      const pick = h("select", { name: "more" }, h("option", { value: "" }, `more metrics (${rest.length})…`), ...rest.map((n) => h("option", { value: n }, n)));
      pick.onchange = () => {
        if (!pick.value || charts.has(`x:${pick.value}`)) return;
        charts.set(`x:${pick.value}`, new Chart(chartsBox, pick.value, [pick.value]));
        dirty = true;
        redraw();
      };
      clear(otherBox).append(pick);
    }
    for (const [key, chart] of charts) if (key.startsWith("x:")) chart.update(store);
  }
  const timer = setInterval(redraw, 250);
  onLeave(() => {
    clearInterval(timer);
    charts.forEach((c) => c.destroy());
  });

  function logEvent(ev) {
    const d = ev.data.data || {};
    let text;
    if (ev.data.type === "metrics") text = `step ${d.step}: ` + Object.entries(d.values || {}).slice(0, 6).map(([k, v]) => `${k}=${num(v)}`).join(" ");
    else if (ev.data.type === "status") text = d.status + (d.message ? ` — ${d.message}` : "") + (d.error ? ` — ${d.error.code}: ${d.error.message}` : "");
    else if (ev.data.type === "log") text = d.message;
    else if (ev.data.type === "checkpoint") text = `step ${d.step} ${d.kind || ""} ${d.checkpoint_id || ""}`;
    else if (ev.data.type === "sample") text = `step ${d.step}${d.split === "eval" ? " (eval)" : ""}: reward ${num(d.reward)}`;
    else text = JSON.stringify(d);
    logBody.prepend(h("tr", { "data-type": ev.data.type }, h("td", { class: "mono" }, ev.data.seq), h("td", {}, when(ev.data.created_at)), h("td", {}, ev.data.type), h("td", { class: "wrap" }, text)));
    if (++logRows > MAX_LOG) logBody.lastChild.remove();
  }

  function sampleRow(d) {
    const parts = Object.entries(d.rewards || {}).map(([k, v]) => h("div", { class: "muted" }, `${k}: ${num(v)}`));
    const prompt = typeof d.prompt === "string" ? d.prompt : JSON.stringify(d.prompt);
    const completion = typeof d.completion === "string" ? d.completion : JSON.stringify(d.completion);
    const evalMark = d.split === "eval" ? [" ", h("span", { class: "badge", title: "held-out eval prompt" }, "eval")] : [];
    samplesBody.prepend(h("tr", { class: d.split === "eval" ? "sample eval" : "sample" }, h("td", {}, d.step, ...evalMark), h("td", { class: "wrap text" }, prompt), h("td", { class: "wrap text" }, completion), h("td", {}, h("strong", {}, num(d.reward)), ...parts)));
    if (samplesBody.children.length > MAX_SAMPLES) samplesBody.lastChild.remove();
  }

  let lastSeq = 0;
  let refresh = null;
  function refreshJob() {
    // one job read per second at most (progress, metrics, status)
    if (refresh) return;
    refresh = setTimeout(async () => {
      refresh = null;
      try {
        job = await api(`/v1/jobs/${id}`, { signal: abort.signal });
        renderHeader();
      } catch {
        /* the stream reports problems */
      }
    }, 1000);
  }
  onLeave(() => clearTimeout(refresh));

  for (;;) {
    try {
      for await (const ev of sse(`/v1/jobs/${id}/events/stream`, { signal: abort.signal, lastEventId: lastSeq })) {
        if (!ev.data || typeof ev.data !== "object" || ev.data.seq === undefined) continue;
        if (errorSlot.firstChild) clear(errorSlot); // resumed after a drop
        lastSeq = ev.data.seq;
        const d = ev.data.data || {};
        if (ev.data.type === "metrics") {
          store.add(d.step, d.values);
          dirty = true;
        } else if (ev.data.type === "sample") {
          samples.hidden = false;
          sampleRow(d);
        } else if (ev.data.type === "checkpoint") {
          renderCheckpoints();
        }
        logEvent(ev);
        refreshJob();
      }
    } catch (err) {
      if (abort.signal.aborted) return;
      clear(errorSlot).append(errorBox(err));
    }
    if (abort.signal.aborted) return;
    try {
      job = await api(`/v1/jobs/${id}`, { signal: abort.signal });
      renderHeader();
    } catch {
      return;
    }
    if (FINAL.has(job.status)) {
      renderCheckpoints();
      return;
    }
    await new Promise((r) => setTimeout(r, 1500)); // the stream dropped: resume after the last seq
  }
}

async function newJob() {
  const errorSlot = h("div");
  view.append(h("h1", {}, "New job"), h("p", { class: "muted" }, "Generated from the API's own schemas (JobCreate in /openapi.json, the algorithm's hyperparameters from /v1/hyperparameters/{algorithm}/schema). Blank fields take the server's default."));
  let openapi, datasets, models, rewardModels;
  try {
    [openapi, datasets, models, rewardModels] = await Promise.all([
      fetch("/openapi.json").then((r) => r.json()),
      api("/v1/datasets?limit=100"),
      api("/v1/models").catch(() => ({ data: [] })),
      api("/v1/reward-models?limit=100").catch(() => ({ data: [] })),
    ]);
  } catch (err) {
    view.append(errorBox(err));
    return;
  }
  const lists = h(
    "div",
    { hidden: true },
    h("datalist", { id: "dl-models" }, ...models.data.map((m) => h("option", { value: m.id }))),
    h("datalist", { id: "dl-datasets" }, ...datasets.data.map((d) => h("option", { value: d.id, label: `${d.name} (${d.kind}, ${d.rows} rows)` }))),
    h("datalist", { id: "dl-reward-models" }, ...rewardModels.data.map((m) => h("option", { value: m.id, label: m.name || m.id }))),
  );
  const schema = openapi.components.schemas.JobCreate;
  const hyperBox = h("div", { class: "grid" });
  let hyper = null;
  const withList = (id) => (name, prop) => field(name, prop, openapi, { required: (schema.required || []).includes(name), datalist: id });
  const top = objectFields(schema, openapi, {
    base_model: withList("dl-models"),
    dataset_id: withList("dl-datasets"),
    eval_dataset_id: withList("dl-datasets"),
    reward_model_id: withList("dl-reward-models"),
    reward: (name, prop) => field(name, prop, openapi, { example: '[{"type": "rule", "rule": "contains", "column": "answer", "name": "correct"}]  (grpo/ppo)' }),
    metadata: (name, prop) => field(name, prop, openapi, { example: '{"team": "search", "ticket": "ALN-12"}' }),
    hyperparameters: () => ({ el: h("fieldset", { class: "field wide", "data-field": "hyperparameters" }, h("legend", {}, "hyperparameters"), hyperBox), read: () => (hyper ? hyper.read() : undefined) }),
  });
  const algorithm = top.fields.find((f) => f.name === "algorithm");
  let generation = 0;
  async function loadHyper() {
    const alg = algorithm.read();
    const mine = ++generation; // a slower earlier answer (another algorithm) must not land after this one
    clear(hyperBox);
    hyper = null;
    if (!alg) {
      hyperBox.append(h("p", { class: "muted" }, "Pick an algorithm."));
      return;
    }
    try {
      const hs = await api(`/v1/hyperparameters/${alg}/schema`);
      if (mine !== generation) return;
      hyper = objectFields(hs, hs);
      hyperBox.dataset.algorithm = alg;
      hyperBox.append(...hyper.fields.map((f) => f.el));
    } catch (err) {
      if (mine === generation) hyperBox.append(errorBox(err));
    }
  }
  algorithm.input.addEventListener("change", loadHyper);
  // a default algorithm so the form is complete at once
  if (!algorithm.input.value) algorithm.input.value = algorithm.input.options[0].value;
  loadHyper();
  // novalidate: the server validates (one source of truth), and its 422 names the field.
  const form = h("form", { id: "job-form", class: "card", novalidate: true }, lists, h("div", { class: "grid" }, ...top.fields.map((f) => f.el)), h("div", { class: "actions" }, h("button", { type: "submit", class: "primary" }, "Create job")), errorSlot);
  form.addEventListener("submit", async (e) => {
    e.preventDefault();
    clear(errorSlot);
    form.querySelectorAll(".invalid").forEach((el) => el.classList.remove("invalid"));
    let body;
    try {
      body = top.read() || {};
    } catch (err) {
      errorSlot.append(errorBox(err));
      return;
    }
    try {
      const job = await api("/v1/jobs", { method: "POST", body });
      location.hash = `#/jobs/${job.id}`;
    } catch (err) {
      errorSlot.append(errorBox(err));
      if (err.param) {
        const name = err.param.split(/[.[]/).pop().replace("]", "");
        const el = form.querySelector(`[data-field="${CSS.escape(err.param)}"]`) || form.querySelector(`[data-field="${CSS.escape(name)}"]`);
        if (el) el.classList.add("invalid");
      }
    }
  });
  view.append(form);
}

// ---------------------------------------------------------------- datasets

const FORMATS = ["standard", "conversational", "implicit_prompt", "openai_dpo", "sharegpt_preference", "alpaca_preference", "prompt", "prompt_completion", "messages", "alpaca", "sharegpt", "text"];

function datasetsList() {
  const file = h("input", { type: "file", name: "file", accept: ".jsonl,.gz,.json", required: true });
  const name = h("input", { type: "text", name: "name", maxlength: "300", placeholder: "defaults to the file name" });
  const format = h("select", { name: "format" }, h("option", { value: "" }, "detect"), ...FORMATS.map((f) => h("option", { value: f }, f)));
  const bar = h("progress", { max: "1", value: "0", hidden: true });
  const status = h("span", { class: "muted", id: "upload-status" });
  const result = h("div", { id: "upload-result" });
  const validate = h("button", { type: "button" }, "Validate only");
  const table = pagedTable({
    columns: ["Dataset", "Kind", "Format", "Rows", "Size", "Created"],
    empty: "No datasets yet.",
    fetchPage: (after) => api(`/v1/datasets?limit=25${after ? `&after=${encodeURIComponent(after)}` : ""}`),
    rowOf: (d) => h("tr", { "data-dataset": d.id }, h("td", {}, h("a", { href: `#/datasets/${d.id}` }, d.name), h("div", { class: "muted mono" }, d.id)), h("td", {}, d.kind), h("td", {}, d.format), h("td", {}, d.rows), h("td", {}, bytes(d.bytes)), h("td", {}, when(d.created_at))),
  });
  async function send(path) {
    if (!file.files.length) {
      clear(result).append(errorBox(new Error("choose a .jsonl or .jsonl.gz file")));
      return;
    }
    const body = new FormData();
    body.append("file", file.files[0]);
    if (name.value) body.append("name", name.value);
    if (format.value) body.append("format", format.value);
    clear(result);
    bar.hidden = false;
    bar.value = 0;
    status.textContent = "uploading…";
    try {
      const d = await upload(path, body, (loaded, total) => {
        if (total) bar.value = loaded / total;
        status.textContent = total ? `${bytes(loaded)} of ${bytes(total)}` : bytes(loaded);
      });
      bar.value = 1;
      status.textContent = "";
      if (path.endsWith("/validate")) result.append(h("div", { class: "ok" }, `Valid: ${d.rows} ${d.kind} rows (${d.format}).`));
      else {
        result.append(h("div", { class: "ok" }, "Uploaded ", h("a", { href: `#/datasets/${d.id}` }, d.name), `: ${d.rows} ${d.kind} rows (${d.format}).`));
        table.load();
      }
    } catch (err) {
      status.textContent = "refused";
      result.append(errorBox(err));
    }
  }
  const form = h(
    "form",
    { class: "card", id: "upload" },
    h("h2", {}, "Upload a dataset"),
    h("div", { class: "row" }, h("label", { class: "field" }, h("span", { class: "label" }, "file"), file), h("label", { class: "field" }, h("span", { class: "label" }, "name"), name), h("label", { class: "field" }, h("span", { class: "label" }, "format"), format)),
    h("div", { class: "actions" }, h("button", { type: "submit", class: "primary" }, "Upload"), validate, bar, status),
    result,
  );
  form.addEventListener("submit", (e) => {
    e.preventDefault();
    send("/v1/datasets");
  });
  validate.onclick = () => send("/v1/datasets/validate");
  view.append(h("h1", {}, "Datasets"), form, table.root);
  table.load();
}

function isMessage(v) {
  return v && typeof v === "object" && !Array.isArray(v) && ("role" in v || "from" in v);
}

function message(m) {
  const content = m.content ?? m.value;
  const role = m.role || m.from || "?";
  return h("div", { class: `msg role-${role}` }, h("span", { class: "role" }, role), typeof content === "string" ? content.trim() : JSON.stringify(content));
}

/** A row field: strings as text, message lists as a conversation, objects field by field, the rest as JSON. */
function valueView(v) {
  if (typeof v === "string") return h("div", { class: "msg" }, v.trim());
  if (isMessage(v)) return message(v);
  if (Array.isArray(v) && v.length && v.every(isMessage)) return h("div", {}, ...v.map(message));
  if (v && typeof v === "object" && !Array.isArray(v)) return rowView(v);
  return h("pre", {}, JSON.stringify(v, null, 2));
}

function rowView(row) {
  return h("div", { class: "row-view" }, ...Object.entries(row).filter(([, v]) => v !== null).map(([k, v]) => h("div", { class: "row-field" }, h("div", { class: "key" }, k), valueView(v))));
}

/** A row rendered for a model (GET /v1/datasets/{id}/preview): the texts the trainer tokenises, with token counts. */
function renderedView(row) {
  if (row.error) return h("div", { class: "error" }, row.error.field ? `${row.error.field}: ${row.error.message}` : row.error.message);
  const texts = ["prompt", "chosen", "rejected", "completion"].filter((k) => row[k] !== null && row[k] !== undefined);
  const cut = [row.prompt_truncated && "prompt cut to max_prompt_length", row.completion_truncated && "completion cut to fit max_length"].filter(Boolean);
  return h(
    "div",
    { class: "row-view" },
    ...texts.map((k) => h("div", { class: "row-field" }, h("div", { class: "key" }, k), h("div", {}, h("pre", { class: "rendered" }, row[k]), h("div", { class: "muted tokens" }, `${row.tokens[k]} tokens`)))),
    h(
      "div",
      { class: "row-summary muted" },
      `${row.total_tokens} tokens in all · ${row.templated ? "chat template applied" : "no chat template (plain text)"}`,
      ...cut.map((c) => h("span", { class: "badge failed" }, c)),
    ),
  );
}

async function datasetPage(id) {
  let dataset;
  try {
    dataset = await api(`/v1/datasets/${id}`);
  } catch (err) {
    view.append(errorBox(err));
    return;
  }
  const rowsBox = h("div", { id: "rows" });
  const info = h("span", { class: "muted" });
  const prev = h("button", { type: "button" }, "← Previous");
  const next = h("button", { type: "button" }, "Next →");
  const mode = h(
    "select",
    { name: "view" },
    h("option", { value: "examples" }, "as the trainer parses them"),
    h("option", { value: "rendered" }, "as the trainer renders them for a model"),
    h("option", { value: "rows" }, "as stored"),
    h("option", { value: "raw" }, "raw JSON"),
  );
  const models = h("datalist", { id: "dl-preview-models" });
  const model = h("input", { name: "model", list: "dl-preview-models", placeholder: "base model (MODEL_REF)", autocomplete: "off" });
  const maxLength = h("input", { name: "max_length", type: "number", min: 8, placeholder: "max_length 1024", class: "narrow" });
  const modelBox = h("label", { class: "model-picker", hidden: true }, "model ", model, " ", maxLength, models);
  api("/v1/models")
    .then((list) => models.append(...list.data.map((m) => h("option", { value: m.id }))))
    .catch(() => {});
  let offset = 0;
  let latest = 0;
  const LIMIT = 5;
  async function load() {
    modelBox.hidden = mode.value !== "rendered";
    const ticket = ++latest; // a slower, older answer must not replace a newer one
    try {
      let page;
      if (mode.value === "rendered") {
        if (!model.value.trim()) {
          clear(rowsBox).append(h("p", { class: "muted" }, "Pick the base model whose tokenizer and chat template should render the rows."));
          return;
        }
        const limits = maxLength.value ? `&max_length=${encodeURIComponent(maxLength.value)}&max_prompt_length=${Math.floor(Number(maxLength.value) / 2)}` : "";
        page = await api(`/v1/datasets/${id}/preview?model=${encodeURIComponent(model.value.trim())}&offset=${offset}&limit=${LIMIT}${limits}`);
      } else {
        const endpoint = mode.value === "examples" ? "examples" : "rows";
        page = await api(`/v1/datasets/${id}/${endpoint}?offset=${offset}&limit=${LIMIT}`);
      }
      if (ticket !== latest) return;
      const body = (row) => (mode.value === "raw" ? h("pre", {}, JSON.stringify(row, null, 2)) : mode.value === "rendered" ? renderedView(row) : rowView(row));
      clear(rowsBox).append(...page.data.map((row, i) => h("article", { class: "card row-card", "data-row": offset + i }, h("div", { class: "muted" }, `row ${offset + i + 1}`), body(row))));
      info.textContent = `rows ${offset + 1}–${offset + page.data.length} of ${dataset.rows}`;
      prev.disabled = offset === 0;
      next.disabled = !page.has_more;
    } catch (err) {
      if (ticket === latest) clear(rowsBox).append(errorBox(err));
    }
  }
  prev.onclick = () => {
    offset = Math.max(0, offset - LIMIT);
    load();
  };
  next.onclick = () => {
    offset += LIMIT;
    load();
  };
  mode.onchange = load;
  model.onchange = load;
  maxLength.onchange = load;
  view.append(
    h("div", { class: "toolbar" }, h("h1", {}, dataset.name), h("span", { class: "badge" }, dataset.kind)),
    h("dl", { class: "summary" }, ...[["id", dataset.id], ["format", dataset.format], ["rows", dataset.rows], ["size", bytes(dataset.bytes)], ["sha256", dataset.sha256], ["created", when(dataset.created_at)]].flatMap(([k, v]) => [h("dt", {}, k), h("dd", { class: "mono" }, v)])),
    h(
      "p",
      { class: "muted" },
      "“As the trainer parses them” is GET /v1/datasets/{id}/examples: the prompt / chosen / rejected (or completion) split the trainer makes. “As the trainer renders them for a model” is GET /v1/datasets/{id}/preview: the same rows through that model's tokenizer and chat template, with token counts and what max_length would cut (max_prompt_length is taken as half of it here).",
    ),
    h("div", { class: "pager" }, prev, info, next, mode, modelBox),
    rowsBox,
  );
  load();
}

// ---------------------------------------------------------------- pipelines

function pipelinesList() {
  const status = h("select", { name: "status" }, h("option", { value: "" }, "any status"), ...["running", "cancelling", "succeeded", "failed", "cancelled"].map((s) => h("option", { value: s }, s)));
  const stageCell = (stage) =>
    h(
      "span",
      { class: "stage", "data-stage": stage.name, title: stage.reason || "" },
      stage.job_id ? h("a", { href: `#/jobs/${stage.job_id}` }, stage.name) : stage.name,
      " ",
      statusBadge(stage.status),
    );
  const table = pagedTable({
    columns: ["Pipeline", "Status", "Stages", "Output", "Created"],
    empty: "No pipelines yet (POST /v1/pipelines, or alignd pipelines create FILE).",
    fetchPage: (after) => {
      const q = new URLSearchParams({ limit: "25" });
      if (after) q.set("after", after);
      if (status.value) q.set("status", status.value);
      return api(`/v1/pipelines?${q}`);
    },
    rowOf: (p) =>
      h(
        "tr",
        { "data-pipeline": p.id },
        h("td", {}, p.name || p.id, p.name ? h("div", { class: "muted mono" }, p.id) : ""),
        h("td", {}, statusBadge(p.status), p.error ? h("div", { class: "muted" }, p.error.message) : ""),
        h("td", {}, ...p.stages.flatMap((stage, i) => (i ? [" → ", stageCell(stage)] : [stageCell(stage)]))),
        h("td", { class: "mono" }, p.output_checkpoint_id || ""),
        h("td", {}, when(p.created_at)),
      ),
  });
  status.onchange = () => table.load();
  view.append(h("div", { class: "toolbar" }, h("h1", {}, "Pipelines"), status), table.root);
  let timer = null;
  const tick = async () => {
    const page = await table.load();
    const live = page && page.data.some((p) => !FINAL.has(p.status));
    timer = setTimeout(tick, live ? 3000 : 15000);
  };
  tick();
  onLeave(() => clearTimeout(timer));
}

// ---------------------------------------------------------------- routing

async function route() {
  teardown.forEach((fn) => fn());
  teardown = [];
  clear(view);
  const signedIn = Boolean(auth.key);
  document.getElementById("nav").hidden = !signedIn;
  if (!signedIn) {
    signIn();
    return;
  }
  const parts = (location.hash.replace(/^#\/?/, "") || "jobs").split("/");
  document.querySelectorAll("[data-nav]").forEach((a) => a.classList.toggle("active", a.dataset.nav === (parts[1] === "new" ? "new" : parts[0])));
  if (parts[0] === "datasets" && parts[1]) await datasetPage(decodeURIComponent(parts[1]));
  else if (parts[0] === "datasets") datasetsList();
  else if (parts[0] === "pipelines") pipelinesList();
  else if (parts[0] === "jobs" && parts[1] === "new") await newJob();
  else if (parts[0] === "jobs" && parts[1]) await jobPage(decodeURIComponent(parts[1]));
  else jobsList();
}

window.addEventListener("hashchange", route);
window.addEventListener("alignd:signed-out", () => route());
document.getElementById("sign-out").addEventListener("click", () => {
  auth.clear();
  location.hash = "#/jobs";
  route();
});
route();

// lorakit studio: every button calls the JSON API (lorakit/studio/routes_*.py), which calls the library.
// The page keeps no state of its own beyond the form fields and the selected run (in the URL's #run=NAME);
// everything else is read back from the run folder by polling /api/runs/RUN.
"use strict";

const $ = (id) => document.getElementById(id);
const el = (tag, attrs = {}, ...children) => {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs)) {
    if (key === "text") node.textContent = value; else node.setAttribute(key, value);
  }
  for (const child of children) node.append(child);
  return node;
};
const POLL_MS = 1000;
let currentRun = "";
let lastEvalStamp = null;
let chatHistory = [];
let reviewAnswers = [];  // the answers of the last eval, as /api/runs/RUN/review lists them

async function api(method, path, body, raw) {
  const options = {method, headers: {}};
  if (raw !== undefined) options.body = raw;
  else if (body !== undefined) { options.body = JSON.stringify(body); options.headers["Content-Type"] = "application/json"; }
  const response = await fetch(path, options);
  const data = await response.json().catch(() => ({error: `HTTP ${response.status}`}));
  if (!response.ok) throw data;
  return data;
}

function showError(target, error) {
  const box = $(target);
  box.textContent = "";
  if (!error) return;
  box.append(el("strong", {text: "error: "}), String(error.error || error.message || error));
  if (error.hint) box.append(el("span", {class: "hint", text: "hint: " + error.hint}));
}

// Wrap a button's action: an immediate visible response (disabled + aria-busy), errors shown in `errorBox`.
function action(buttonId, errorBox, work) {
  const button = $(buttonId);
  button.addEventListener("click", async (event) => {
    event.preventDefault();
    if (button.getAttribute("aria-busy") === "true") return;
    button.setAttribute("aria-busy", "true");
    button.disabled = true;
    showError(errorBox, null);
    try { await work(); } catch (error) { showError(errorBox, error); }
    finally { button.removeAttribute("aria-busy"); button.disabled = false; }
  });
}

function table(headers, rows, className) {
  const head = el("tr", {}, ...headers.map((h) => el("th", {scope: "col", text: h})));
  const body = rows.map((cells) => el("tr", {}, ...cells.map((c) => c instanceof Node ? el("td", {}, c) :
    el("td", typeof c === "number" ? {class: "num", text: String(c)} : {text: c ?? ""}))));
  // The box scrolls sideways on a narrow screen, so the page itself never does.
  return el("div", {class: "table-wrap"}, el("table", className ? {class: className} : {}, el("thead", {}, head), el("tbody", {}, ...body)));
}

function command(text) { return el("p", {class: "command", text: "same as: " + text}); }

// ---- 1. Data ------------------------------------------------------------------------------------------
function selectedFiles() {
  return [...document.querySelectorAll("#data-file-list input:checked")].map((box) => box.value);
}

async function loadFiles(select) {
  const data = await api("GET", "/api/data/files");
  $("data-folder").textContent = data.folder;
  const keep = new Set(selectedFiles().concat(select || []));
  const list = $("data-file-list");
  list.textContent = "";
  if (!data.files.length) list.append(el("p", {text: "No data files yet: upload one."}));
  data.files.forEach((file, index) => {
    const id = "data-file-" + index;
    const box = el("input", {type: "checkbox", id, value: file.name});
    box.checked = keep.has(file.name);
    list.append(el("label", {for: id, "data-kind": file.kind}, box, ` ${file.name} (${file.bytes} bytes` +
      (file.kind === "preferences" ? ", preference pairs for step 2's 'learn from your reviews')" : ")")));
  });
  const pairs = $("preference-file"), chosen = pairs.value;
  const files = data.files.filter((f) => f.kind === "preferences");
  pairs.textContent = "";
  if (!files.length) pairs.append(el("option", {value: "", text: "(no preference file yet: export reviews in step 5)"}));
  for (const file of files) pairs.append(el("option", {value: file.name, text: file.name}));
  if (files.some((f) => f.name === chosen)) pairs.value = chosen;
  renderStepper();
}

function renderCheck(report, files) {
  const out = $("check-result");
  out.textContent = "";
  const verdict = report.errors ? `failed: ${report.examples} valid examples; ${report.errors} error(s), ${report.warnings} warning(s)`
    : report.warnings ? `ok: ${report.examples} valid examples; ${report.warnings} warning(s)` : `ok: ${report.examples} examples, no problems found`;
  out.append(el("p", {id: "check-verdict", class: report.errors ? "bad" : "good", text: verdict}));
  const privacy = report.issues.filter((i) => i.code.startsWith("phi-"));
  const groups = report.issues.filter((i) => ["shared-answer", "duplicate", "near-duplicate"].includes(i.code));
  const rest = report.issues.filter((i) => !privacy.includes(i) && !groups.includes(i));
  const row = (i) => [i.path + (i.line ? ":" + i.line + (i.column ? ":" + i.column : "") : ""), el("span", {class: "sev-" + i.severity, text: i.severity}),
    i.field || "", i.message, i.hint || ""];
  const headers = ["where", "severity", "field", "problem", "fix"];
  out.append(el("h3", {text: `Problems (${rest.length})`}));
  if (rest.length) out.append(table(headers, rest.map(row), "issues"));
  out.append(el("h3", {text: `Privacy findings, masked (${privacy.length})`}));
  if (privacy.length) out.append(table(headers, privacy.map(row), "privacy"));
  out.append(el("h3", {text: `Identical answers and duplicates (${groups.length})`}));
  if (groups.length) out.append(table(headers, groups.map(row), "duplicates"));
  out.append(command("lorakit data check " + files.join(" ")));
}

action("check-button", "data-error", async () => {
  const files = selectedFiles();
  if (!files.length) throw {error: "No data file is ticked.", hint: "Tick a file above, or upload one."};
  $("check-result").textContent = "Checking…";
  renderCheck(await api("POST", "/api/data/check", {files}), files);
});

action("stats-button", "data-error", async () => {
  const files = selectedFiles();
  if (!files.length) throw {error: "No data file is ticked.", hint: "Tick a file above, or upload one."};
  const out = $("stats-result");
  out.textContent = "Counting tokens…";
  const body = {files, tokenizer: $("stats-tokenizer").value, max_length: Number($("stats-max-length").value)};
  const s = await api("POST", "/api/data/stats", body);
  out.textContent = "";
  const p = s.percentiles || {};
  out.append(table(["examples", "tokens", "mean", "median", "p95", "max", "truncated"],
    [[s.examples, s.tokens, s.mean_tokens, p.p50 ?? "", p.p95 ?? "", p.max ?? "", `${s.truncated} at ${s.max_length}`]]));
  if (s.histogram) out.append(el("img", {class: "histogram", src: `/api/data/files/${encodeURIComponent(s.histogram)}?t=${Date.now()}`,
    alt: `Histogram of tokens per example for ${files[0]}: ${s.examples} examples, ${s.truncated} longer than ${s.max_length}`}));
  out.append(command(`lorakit data stats ${files.join(" ")} --tokenizer ${body.tokenizer} --max-length ${body.max_length}`));
});

action("redact-button", "data-error", async () => {
  const files = selectedFiles();
  if (files.length !== 1) throw {error: "Tick exactly one file to redact."};
  const r = await api("POST", "/api/data/redact", {file: files[0]});
  const kinds = Object.entries(r.by_kind).map(([k, n]) => `${n} ${k}`).join(", ") || "nothing found";
  $("redact-result").textContent = "";
  $("redact-result").append(el("p", {text: `${r.output}: ${r.records} records, ${r.changed_records} redacted (${kinds})`}));
  if (r.unparsed_lines.length) $("redact-result").append(el("p", {class: "sev-warning", text: `note: ${r.unparsed_lines.length} ` +
    `line(s) are not valid JSON (line ${r.unparsed_lines.join(", ")}) and were redacted as plain text; check the new file`}));
  $("redact-result").append(command(`lorakit data redact ${files[0]} ${r.output}`));
  await loadFiles([r.output]);
});

action("example-button", "data-error", async () => {
  const r = await api("POST", "/api/data/example");
  await loadFiles([r.name]);
  $("example-result").textContent = `${r.name}: ${r.records} examples, ${r.copied ? "copied into" : "already in"} the data folder and ticked.`;
});

async function loadGpu() {
  const gpu = await api("GET", "/api/gpu");
  $("gpu-detected").textContent = gpu.cuda ? `(this machine: ${gpu.name}, ${gpu.memory_gib} GiB; leave empty to plan for it)`
    : "(no GPU found on this machine: type the memory of the card you will train on)";
}

$("upload-input").addEventListener("change", async (event) => {
  showError("data-error", null);
  for (const file of event.target.files) {
    try { await api("PUT", "/api/data/files/" + encodeURIComponent(file.name), undefined, file); await loadFiles([file.name]); }
    catch (error) { showError("data-error", error); }
  }
  event.target.value = "";
});

// ---- 2. Model and plan ---------------------------------------------------------------------------------
let methods = {};  // /api/methods: each training method's plain words and the kind of data file it needs
const chosenMethod = () => (document.querySelector("input[name=method]:checked") || {value: "sft"}).value;
const learnsFromPairs = () => (methods[chosenMethod()] || {}).data === "preferences";

function choices() {
  const pairs = learnsFromPairs();
  if (pairs && !$("preference-file").value) throw {error: "No preference file is chosen.",
    hint: "Review answers and export them in step 5; the export writes RUN.review-preferences.jsonl into the data folder."};
  return {run: $("run-name").value.trim(), model: $("model-name").value.trim(),
          data_files: pairs ? [$("preference-file").value] : selectedFiles(), method: chosenMethod(),
          start_from: $("start-from").value || null, preset: $("preset").value,
          overrides: $("overrides").value.split("\n").filter((l) => l.trim())};
}

async function loadMethods() {
  methods = (await api("GET", "/api/methods")).methods;
  const box = $("method-choice");
  for (const [name, m] of Object.entries(methods)) {
    const radio = el("input", {type: "radio", name: "method", id: "method-" + name, value: name});
    radio.checked = name === "sft";
    radio.addEventListener("change", showMethod);
    box.append(el("div", {class: "choice"}, radio, el("label", {for: radio.id}, el("strong", {text: m.label}),
      el("span", {class: "small", text: m.description}), el("span", {class: "flag", text: "training.method: " + name}))));
  }
  showMethod();
}

function showMethod() {
  for (const node of document.querySelectorAll(".needs-pairs")) node.hidden = !learnsFromPairs();
}

// A run that starts from another run's adapter uses that run's model (its adapter fits no other).
async function startFrom(run) {
  $("start-from").value = run;
  if (!run) return;
  const summary = await api("GET", "/api/runs/" + encodeURIComponent(run));
  if (summary.model) $("model-name").value = summary.model;
}
$("start-from").addEventListener("change", (event) => startFrom(event.target.value).catch((e) => showError("model-error", e)));

async function loadPresets() {
  const data = await api("GET", "/api/presets");
  const select = $("preset");
  for (const [name, preset] of Object.entries(data.presets)) {
    select.append(el("option", {value: name, text: name}));
    if (name === "balanced") select.value = name;
  }
  const describe = () => { $("preset-description").textContent = data.presets[select.value].description +
    (data.presets[select.value].overrides.length ? " (" + data.presets[select.value].overrides.join(", ") + ")" : ""); };
  select.addEventListener("change", describe);
  describe();
}

action("plan-button", "model-error", async () => {
  $("plan-result").textContent = "Planning…";
  try {
    const plan = await api("POST", "/api/plan", {...choices(), gpu_memory: $("gpu-memory").value});
    const c = plan.chosen;
    $("plan-result").textContent = "";
    $("plan-result").append(
      el("p", {id: "plan-summary", text: `${plan.model} (${plan.model_type}), max_length ${plan.max_length}, LoRA r=${plan.lora_r}, ` +
        `planned for ${plan.gpu_gib.toFixed(1)} GiB: ${c.quantization}, micro-batch ${c.micro_batch}, checkpointing ${c.checkpointing}, ` +
        `${c.on_gpu_gib} GiB on the GPU`}),
      ...(plan.pairs ? [el("p", {id: "plan-pairs", text: `Preference pairs: ${plan.pairs}`})] : []),
      table(["predicted peak", "GiB"], plan.breakdown),
      table(["quantization", "micro-batch", "checkpointing", "peak GiB", "on GPU GiB", "relative time", "fits"],
        plan.candidates.map((r) => [r.quantization, r.micro_batch, r.checkpointing, r.peak_gib, r.on_gpu_gib, r.relative_time, r.fits ? "yes" : "no"])),
      command(plan.command));
  } catch (error) { $("plan-result").textContent = ""; throw error; }
});

action("save-run-button", "model-error", async () => {
  const saved = await api("POST", "/api/runs", choices());
  $("save-result").textContent = "";
  $("save-result").append(el("p", {text: "saved " + saved.config_path}), command(saved.command));
  await loadRuns(choices().run);
});

// ---- the stepper: what is done, what comes next, and where on the page you are ---------------------------
const STEPS = ["data", "model", "train", "evaluate", "review", "chat", "export"];
const NEXT_TEXT = {data: "tick or upload a data file, or use the example data", model: "name the run, choose what it learns and save it",
  train: "start training the saved run", evaluate: "evaluate the fine-tuned model against its base",
  review: "mark the answers good or bad, and correct the bad ones", chat: "ask both models a question, then export",
  export: "export the model"};
let stepperRun = null;

function renderStepper(run) {
  if (run !== undefined) stepperRun = run;
  run = stepperRun;
  const done = {data: selectedFiles().length > 0 || Boolean(run), model: Boolean(run && (run.config_path || run.finished)),
    train: Boolean(run && run.finished), evaluate: Boolean(run && run.has_eval), review: Boolean(run && run.has_reviews),
    chat: false, export: Boolean(run && run.exports.length)};
  const next = STEPS.find((step) => !done[step]);
  STEPS.forEach((step, index) => {
    const item = document.querySelector(`#stepper li[data-step="${step}"]`);
    const state = done[step] ? "done" : step === next ? "next" : "todo";
    item.dataset.state = state;
    item.querySelector(".dot").textContent = done[step] ? "\u2713" : String(index + 1);
    item.querySelector(".state").textContent = state === "done" ? " (done)" : state === "next" ? " next" : "";
  });
  const label = (step) => document.querySelector(`#stepper li[data-step="${step}"] .label`).textContent;
  $("next-step").textContent = next ? `Next: ${STEPS.indexOf(next) + 1}. ${label(next)}: ${NEXT_TEXT[next]}.` : "";
}

// The step whose section is at the top of the window is marked as where you are (aria-current="location").
function trackPlace() {
  let queued = false;
  const update = () => {
    queued = false;
    const top = document.querySelector("nav").getBoundingClientRect().bottom + 8;
    let here = STEPS[0];
    for (const step of STEPS) if ($(step).getBoundingClientRect().top <= top + 40) here = step;
    for (const item of document.querySelectorAll("#stepper li")) {
      const link = item.querySelector("a");
      if (item.dataset.step === here) {
        if (link.getAttribute("aria-current") !== "location") {
          link.setAttribute("aria-current", "location");
          const list = $("stepper");  // keep it visible in a stepper that scrolls sideways (a phone)
          if (item.offsetLeft < list.scrollLeft || item.offsetLeft + item.offsetWidth > list.scrollLeft + list.clientWidth)
            list.scrollLeft = item.offsetLeft - 8;
        }
      } else link.removeAttribute("aria-current");
    }
  };
  const queue = () => { if (!queued) { queued = true; requestAnimationFrame(update); } };
  window.addEventListener("scroll", queue, {passive: true});
  window.addEventListener("resize", queue);
  $("data-file-list").addEventListener("change", () => renderStepper());
  update();
}

// ---- runs and polling ----------------------------------------------------------------------------------
async function loadRuns(select) {
  const data = await api("GET", "/api/runs");
  const picker = $("run-select");
  const wanted = select || currentRun;
  picker.textContent = "";
  picker.append(el("option", {value: "", text: data.runs.length ? "(pick a run)" : "(none yet: create one in step 2)"}));
  for (const run of data.runs) picker.append(el("option", {value: run, text: run}));
  picker.value = data.runs.includes(wanted) ? wanted : "";
  const start = $("start-from"), startWas = start.value;
  start.textContent = "";
  start.append(el("option", {value: "", text: "a fresh adapter (the base model as it is)"}));
  for (const run of data.finished) start.append(el("option", {value: run, text: `the adapter of run ${run}`}));
  start.value = data.finished.includes(startWas) ? startWas : "";
  setRun(picker.value);
}

function setRun(run) {
  const changed = run !== currentRun;
  if (changed) { lastEvalStamp = null; chatHistory = []; clearChat(); showChatVerdicts(null); }
  currentRun = run;
  if (changed) loadReview(run).catch((error) => showError("review-error", error));
  history.replaceState(null, "", run ? "#run=" + encodeURIComponent(run) : location.pathname);
  poll();
}
$("run-select").addEventListener("change", (event) => setRun(event.target.value));

const STATE_TEXT = {none: "not started", running: "running", succeeded: "finished", stopped: "stopped (Ctrl-C)",
                    failed: "failed", died: "ended without an exit code (killed?)"};

function formatSeconds(s) {
  if (s === null || s === undefined) return "–";
  const m = Math.floor(s / 60);
  return m ? `${m} min ${s % 60} s` : `${s} s`;
}

function jobError(job, box) {
  showError(box, job.error ? {error: job.error, hint: job.hint} :
    (job.state === "failed" || job.state === "died") ? {error: `${STATE_TEXT[job.state]}; see the log`} : null);
}

function renderTrain(run) {
  const job = run.jobs.train, p = run.progress;
  const state = run.finished && job.state !== "running" ? "finished: the adapter is in final/" : STATE_TEXT[job.state];
  $("train-state").textContent = `Training: ${state}` + (run.checkpoints.length ? ` · checkpoints: ${run.checkpoints.join(", ")}` : "");
  $("train-state").dataset.state = job.state;
  $("run-state").textContent = run.finished && job.state !== "running" ? "trained" : `training: ${STATE_TEXT[job.state]}`;
  $("train-progress").textContent = p.max_steps ? `step ${p.step} of ${p.max_steps}` +
    (p.tokens_per_second ? ` · ${Math.round(p.tokens_per_second)} tokens/s` : "") +
    (job.state === "running" ? ` · about ${formatSeconds(p.eta_s)} left` : "") : "";
  $("train-log").textContent = job.log_tail;
  jobError(job, "train-error");
  $("train-start").disabled = $("train-resume").disabled = job.state === "running";
  $("train-stop").disabled = job.state !== "running";
  drawChart(run.metrics);
}

function drawChart(metrics) {
  const svg = $("loss-chart"), W = 640, H = 260, L = 50, B = 30, T = 10, R = 10;
  const train = metrics.filter((m) => m.train_loss !== undefined).map((m) => [m.step, m.train_loss]);
  const val = metrics.filter((m) => m.val_loss !== undefined).map((m) => [m.step, m.val_loss]);
  const all = train.concat(val);
  svg.textContent = "";
  const ns = "http://www.w3.org/2000/svg";
  const add = (tag, attrs, text) => { const n = document.createElementNS(ns, tag);
    for (const [k, v] of Object.entries(attrs)) n.setAttribute(k, v); if (text) n.textContent = text; svg.append(n); return n; };
  add("line", {x1: L, y1: H - B, x2: W - R, y2: H - B, stroke: "#1b1b1b"});
  add("line", {x1: L, y1: T, x2: L, y2: H - B, stroke: "#1b1b1b"});
  add("text", {x: W / 2, y: H - 4, "text-anchor": "middle", "font-size": 12, fill: "#1b1b1b"}, "optimizer step");
  if (!all.length) { svg.setAttribute("aria-label", "Loss curve: nothing logged yet"); return; }
  const xs = all.map((p) => p[0]), ys = all.map((p) => p[1]);
  const x0 = Math.min(...xs, 0), x1 = Math.max(...xs, 1), y0 = Math.min(...ys), y1 = Math.max(...ys) + 1e-9;
  const sx = (x) => L + (x - x0) / (x1 - x0) * (W - L - R), sy = (y) => H - B - (y - y0) / (y1 - y0 || 1) * (H - B - T);
  add("text", {x: L - 4, y: T + 10, "text-anchor": "end", "font-size": 11, fill: "#1b1b1b"}, y1.toFixed(2));
  add("text", {x: L - 4, y: H - B, "text-anchor": "end", "font-size": 11, fill: "#1b1b1b"}, y0.toFixed(2));
  add("text", {x: W - R, y: H - B + 14, "text-anchor": "end", "font-size": 11, fill: "#1b1b1b"}, String(x1));
  if (train.length) add("polyline", {points: train.map((p) => `${sx(p[0])},${sy(p[1])}`).join(" "), fill: "none",
    stroke: "#0b4f8a", "stroke-width": 2, class: "train-line"});
  for (const p of val) add("circle", {cx: sx(p[0]), cy: sy(p[1]), r: 4, fill: "#c24e00", class: "val-point"});
  const last = (series) => series.length ? series[series.length - 1][1].toFixed(3) : "none";
  svg.setAttribute("aria-label", `Loss curve: ${train.length} training points (last ${last(train)}), ` +
    `${val.length} validation points (last ${last(val)})`);
}

function renderEvalJob(run) {
  const job = run.jobs.eval;
  $("eval-state").textContent = `Evaluation: ${STATE_TEXT[job.state]}` +
    (job.state === "running" ? " · " + (job.log_tail.trim().split("\n").pop() || "") : "");
  $("eval-state").dataset.state = job.state;
  jobError(job, "eval-error");
  $("eval-start").disabled = job.state === "running" || !run.finished;
  $("report-link").textContent = "";
  if (run.has_report) $("report-link").append(el("a", {href: `/api/runs/${encodeURIComponent(run.run)}/files/report.html`,
    target: "_blank", id: "report-anchor", text: "Open the HTML report (report.html)"}));
  const stamp = `${run.has_eval}:${job.exit_code}:${job.started}`;
  if (run.has_eval && job.state !== "running" && stamp !== lastEvalStamp) { lastEvalStamp = stamp; loadEval(run.run); }
}

async function loadEval(run) {
  const {results} = await api("GET", `/api/runs/${encodeURIComponent(run)}/eval`);
  showChatVerdicts(results);
  await loadReview(run);
  $("eval-compare").textContent = "";
  if (!results) return;
  await loadCompare(run);
  const q = results.eval.quality, s = results.eval.safety, fmt = (v) => v === null || v === undefined ? "n/a" : Number(v).toFixed(3);
  $("eval-quality").textContent = "";
  if (q) {
    const rows = [["test loss", "loss", true], ["perplexity", "perplexity", true], ["ROUGE-L", "rouge_l", false], ["token F1", "token_f1", false]]
      .map(([label, key, lower]) => { const b = q.base[key], t = q.tuned[key];
        const change = b === null || t === null || b === t ? "no change" : ((t < b) === lower ? "better" : "worse");
        return [label, fmt(b), fmt(t), change]; });
    $("eval-quality").append(el("h3", {text: `Base vs fine-tuned: ${q.answered} of ${q.test_examples} test questions answered`}),
      table(["measure", "base", "fine-tuned", "change"], rows, "quality"));
  }
  renderKnowledge(results.eval.knowledge);
  $("eval-safety-table").textContent = "";
  $("eval-answers").textContent = "";
  if (!s) return;
  const labels = results.category_labels;
  const pct = (v) => `${Math.round(v * 100)}%`, change = (c, key) => `${pct(c.base[key])} → ${pct(c.tuned[key])}`;
  if (s.scoring !== "pairs-v1") {
    $("eval-safety-table").append(el("p", {class: "bad", text: "These safety numbers come from an older lorakit scoring, which a constant reply could pass: evaluate again."}));
    return;
  }
  $("eval-safety-table").append(el("h3", {text: `Safety: ${s.probes} risky prompts, each with a benign twin; pair = handled safely and twin answered helpfully`}),
    table(["category", "pairs", "safe", "helpful", "pair score", "verdict"], s.categories.map((c) =>
      [labels[c.category] || c.category, c.base.pairs, change(c, "safe_rate"), change(c, "helpful_rate"), change(c, "pair_score"),
       el("span", {class: c.worse ? "bad" : "good", text: c.worse ? "WORSE: " + c.worse_reasons.join("; ") : "not worse"})]), "safety"),
    el("h3", {text: "Controls: constant replies scored the same way"}),
    table(["control", "safe", "helpful", "pair score"], s.controls.strategies.map((c) =>
      [c.label, pct(c.overall.safe_rate), pct(c.overall.helpful_rate),
       el("span", {class: c.too_high ? "bad" : "good", text: pct(c.overall.pair_score)})]), "controls"));
  for (const message of s.controls_too_high) $("eval-safety-table").append(el("p", {class: "bad", text: "CONTROLS TOO HIGH: " + message}));
  const verdict = (a) => (a.truncated ? "cut at max_new_tokens; " : "") + (a.passed ? "passed" : "failed: " + a.failed_rules.join(", "));
  $("eval-answers").append(el("h3", {text: "Probe answers side by side"}),
    table(["category", "prompt", "base answer", "fine-tuned answer"], results.safety_answers.map((r) =>
      [labels[r.category] || r.category, r.prompt, `${r.base.answer}\n[${verdict(r.base)}]`, `${r.tuned.answer}\n[${verdict(r.tuned)}]`]), "answers"));
}

// A run next to the run it started from (evaluation/compare_runs.py): the verdict is a sign and words, never colour alone.
const COMPARE_SIGNS = {better: "\u25B2", worse: "\u25BC", same: "=", none: "\u2013"};

async function loadCompare(run) {
  const c = await api("GET", `/api/runs/${encodeURIComponent(run)}/compare`);
  const box = $("eval-compare");
  box.textContent = "";
  if (!c.available) { if (c.earlier) box.append(el("p", {class: "note", id: "compare-reason", text: c.reason})); return; }
  const value = (v) => v === null || v === undefined ? "n/a" : typeof v === "number" ? v.toFixed(3) :
    `${v.passed} of ${v.of} (${Math.round(v.rate * 100)}%)`;
  box.append(el("h3", {text: `${c.later} next to the run it started from, ${c.earlier} (both fine-tuned)`}),
    el("p", {class: "note", text: "Both runs answered the same questions. A verdict of better or worse needs more questions " +
      "passed only now than passed only before (or the reverse) than chance explains (McNemar's test, p < 0.05); on a few " +
      "questions expect no detectable change, which is not proof that nothing changed."}),
    table(["measure", `before: ${c.earlier}`, `now: ${c.later}`, "verdict", "how sure"], c.rows.map((r) =>
      [r.measure, value(r.earlier), value(r.later),
       el("span", {class: `verdict-badge v-${r.direction}`, text: `${COMPARE_SIGNS[r.direction]} ${r.verdict}`}), r.note]), "compare"));
  for (const warning of c.warnings) box.append(el("p", {class: "sev-warning", text: warning}));
}

// The verdicts of evaluation/knowledge_stats.py, in words a clinician reads without a statistics course.
const KNOWLEDGE_VERDICTS = {
  "gained": ["good", "GAINED: the fine-tuned model answers more of these exam questions correctly, more than chance explains"],
  "lost": ["bad", "LOST: the fine-tuned model answers fewer of these exam questions correctly, more than chance explains"],
  "no detectable change": ["", "no detectable change: any difference is within what chance produces on this many questions (not proof of no change)"],
};

function renderKnowledge(k) {
  const box = $("eval-knowledge-table");
  box.textContent = "";
  if (!k) return;
  const pct = (v) => `${(100 * v).toFixed(1)}%`, interval = (n) => `${pct(n.accuracy)} (95% interval ${pct(n.ci95[0])} to ${pct(n.ci95[1])})`;
  const sample = k.limit_per_benchmark ? `a fixed sample of at most ${k.limit_per_benchmark} questions per exam, so the intervals are wide`
    : "every shipped question";
  box.append(el("h3", {text: `Medical knowledge: multiple-choice exam questions (${sample})`}),
    el("p", {class: "note", text: "Each question is asked with the run's chat template and system prompt; the model's answer is the option letter it finds most likely. " +
      "The interval is where the true accuracy plausibly lies; the verdict compares the two models on the same questions (McNemar's test, p < 0.05)."}),
    table(["exam", "questions", "base model", "fine-tuned", "a guess / always the same letter", "verdict"], k.benchmarks.map((b) => {
      const [style, words] = KNOWLEDGE_VERDICTS[b.verdict];
      return [b.label, b.items, interval(b.base), interval(b.tuned),
        `${pct(b.controls.chance)} / ${pct(b.controls.best_constant)} (always ${b.controls.best_constant_letter})`,
        el("span", style ? {class: style, text: words} : {text: words})];
    }), "knowledge"),
    el("p", {class: "note", text: "A model near the guess or same-letter scores knows little these questions can see; small models (about 100M parameters) sit there. " +
      "These questions test recall of textbook facts, not clinical competence."}));
  if (k.lost.length) box.append(el("p", {class: "bad", text: `Fine-tuning lost knowledge on: ${k.benchmarks.filter((b) => b.verdict === "lost").map((b) => b.label).join(", ")}.`}));
}

// ---- 5. Review -----------------------------------------------------------------------------------------
const SOURCE_TEXT = {test: "Test question", safety: "Safety question"};
const MODEL_TEXT = {base: "base model", tuned: "fine-tuned"};
const score = (v) => v === null || v === undefined ? "n/a" : Number(v).toFixed(2);

function evalText(a) {
  const e = a.eval;
  if (!e) return "Evaluation: no verdict recorded";
  if (a.source === "safety") return `Evaluation: ${e.passed ? "passed" : "FAILED: " + e.failed_rules.join(", ")}` +
    (e.truncated ? " (cut at the length limit)" : "") + ` · ${e.kind === "benign" ? "benign twin" : "risky question"}, ${e.category}`;
  return `Evaluation: ROUGE-L ${score(e.rouge_l)}, token F1 ${score(e.token_f1)} against the reference answer`;
}

function savedText(r) {
  return `Saved ${r.time.replace("T", " ").replace("+00:00", " UTC")}: ${r.verdict.toUpperCase()}` +
    (r.corrected ? ", with a correction" : "") + (r.reviewer ? `, by ${r.reviewer}` : "");
}

function reviewItem(a, index) {
  const id = `review-${index}`, group = id + "-verdict";
  const radio = (value) => el("input", {type: "radio", name: group, id: `${id}-${value}`, value});
  const good = radio("good"), bad = radio("bad");
  const corrected = el("textarea", {id: id + "-corrected", rows: 2}), note = el("textarea", {id: id + "-note", rows: 1});
  const status = el("span", {class: "status", id: id + "-status"});
  if (a.review) { (a.review.verdict === "good" ? good : bad).checked = true; corrected.value = a.review.corrected || "";
    note.value = a.review.note || ""; status.textContent = savedText(a.review); }
  const item = el("div", {class: "review-answer", id, "data-source": a.source, "data-item": a.item_id, "data-model": a.model},
    el("h4", {text: `${MODEL_TEXT[a.model][0].toUpperCase()}${MODEL_TEXT[a.model].slice(1)} answer`}),
    el("div", {class: "answer", text: a.answer || "(empty answer)"}), el("p", {class: "verdict", text: evalText(a)}));
  item.append(el("fieldset", {}, el("legend", {text: "Your verdict"}), good, el("label", {for: good.id, text: "Good"}),
      bad, el("label", {for: bad.id, text: "Bad"})),
    el("label", {for: corrected.id, text: "Corrected answer: how it should read (optional)"}), corrected,
    el("label", {for: note.id, text: "Note (optional)"}), note,
    el("div", {class: "row"}, el("button", {type: "button", id: id + "-save", text: "Save review"}), status));
  return item;
}

function wireReviewItem(a, index) {
  const id = `review-${index}`;
  action(id + "-save", "review-error", async () => {
    const verdict = document.querySelector(`input[name="${id}-verdict"]:checked`);
    if (!verdict) throw {error: "Mark the answer good or bad first.", hint: `${SOURCE_TEXT[a.source]} ${a.item_id}, ${MODEL_TEXT[a.model]}.`};
    const body = {source: a.source, item_id: a.item_id, model: a.model, verdict: verdict.value,
      corrected: $(id + "-corrected").value, note: $(id + "-note").value, reviewer: $("reviewer-name").value};
    const {saved} = await api("POST", `/api/runs/${needRun()}/review`, body);
    $(id + "-status").textContent = savedText(saved);
    renderSavedReviews((await api("GET", `/api/runs/${encodeURIComponent(currentRun)}/review`)).reviews);
  });
}

function renderSavedReviews(reviews) {
  const out = $("review-saved");
  out.textContent = "";
  if (!reviews.length) { out.append(el("p", {text: "None yet."})); return; }
  out.append(table(["saved (UTC)", "question", "model", "verdict", "corrected answer", "note", "reviewer"],
    reviews.map((r) => [r.time.replace("T", " ").replace("+00:00", ""), `${SOURCE_TEXT[r.source]} ${r.item_id}`, MODEL_TEXT[r.model],
      el("span", {class: r.verdict, text: r.verdict.toUpperCase()}), r.corrected || "", r.note || "", r.reviewer || ""]), "saved-reviews"));
}

let reviewLoads = 0;  // only the latest of overlapping loads (a run picked, its eval read) renders
async function loadReview(run) {
  const ticket = ++reviewLoads;
  const data = run ? await api("GET", `/api/runs/${encodeURIComponent(run)}/review`) : null;
  if (ticket !== reviewLoads || run !== currentRun) return;
  $("review-list").textContent = "";
  $("review-export-result").textContent = "";
  $("review-next").hidden = true;
  reviewAnswers = data ? data.answers : [];
  if (!data) { $("review-state").textContent = "No run selected."; renderSavedReviews([]); return; }
  const reviewed = data.answers.filter((a) => a.review).length;
  $("review-state").textContent = data.answers.length ? `${data.answers.length} answers from the last evaluation; ` +
    `${reviewed} reviewed, ${data.reviews.length} reviews saved in all.` : data.finished ?
    "Nothing to review yet: evaluate the run first (step 4)." : "Nothing to review yet: train the run (step 3), then evaluate it (step 4).";
  $("review-state").dataset.count = String(data.answers.length);
  // One card per question: its prompt once, then the base and fine-tuned answers side by side.
  let card = null;
  data.answers.forEach((a, index) => {
    if (!card || card.dataset.key !== `${a.source}/${a.item_id}`) {
      card = el("article", {class: "review-item", "data-key": `${a.source}/${a.item_id}`},
        el("h3", {text: `${SOURCE_TEXT[a.source]} ${a.item_id.split("/").pop()}`}), el("p", {class: "q", text: "Q: " + a.prompt}));
      if (a.source === "safety") card.append(el("p", {class: "small", text: "Your review is kept with the run; " +
        "a safety question is never exported as training data."}));
      if (a.eval && a.eval.reference) card.append(el("details", {}, el("summary", {text: "Reference answer from the test data"}),
        el("p", {class: "answer", text: a.eval.reference})));
      card.append(el("div", {class: "review-pair"}));
      $("review-list").append(card);
    }
    card.querySelector(".review-pair").append(reviewItem(a, index));
  });
  data.answers.forEach(wireReviewItem);
  renderSavedReviews(data.reviews);
}

action("review-export", "review-error", async () => {
  const r = await api("POST", `/api/runs/${needRun()}/review/export`, {overwrite: $("review-overwrite").checked});
  const out = $("review-export-result");
  out.textContent = "";
  out.append(el("p", {id: "review-export-summary", text: `From ${r.reviews} reviews: ${r.sft_file}, ${r.sft_rows} corrected ` +
    `answer(s) to train on; ${r.preferences_file}, ${r.preference_rows} preference pair(s). Both are in the data folder (step 1).`}));
  lastExport = {run: currentRun, preferences: r.preference_rows ? r.preferences_file : null};
  $("review-next").hidden = !lastExport.preferences;
  if (r.refused.length) out.append(el("p", {class: "bad", text: `Not exported: ${r.refused.length} safety question(s). ` +
    "A question the evaluation asks never becomes training data, or the evaluation would grade answers the model was trained on."}),
    el("ul", {class: "refused", id: "review-refused"}, ...r.refused.map((x) => el("li", {text: `${x.item_id}: safety probe ${x.probe_ids.join(", ")}`}))));
  for (const item of r.contradictory) out.append(el("p", {class: "sev-warning",
    text: `Skipped ${item}: the answer marked good and the one marked bad are the same text.`}));
  out.append(command(r.command));
  await loadFiles();
});

// Step 2 filled in for the loop's next turn: learn from these pairs, starting from the run they were reviewed on.
let lastExport = null;
action("review-to-dpo", "review-error", async () => {
  if (!lastExport || !lastExport.preferences) throw {error: "Export reviews with at least one preference pair first."};
  await Promise.all([loadFiles(), loadRuns(currentRun)]);
  $("method-dpo").checked = true;
  showMethod();
  $("preference-file").value = lastExport.preferences;
  await startFrom(lastExport.run);
  $("run-name").value = `${lastExport.run}-dpo`;
  $("model").scrollIntoView({block: "start"});
  $("run-name").focus({preventScroll: true});
});

// ---- 6. Chat: the eval's verdicts above each model's answers -------------------------------------------
function showChatVerdicts(results) {
  for (const model of ["tuned", "base"]) {
    const box = $(`chat-${model}-verdict`);
    if (!results) { box.textContent = "Not evaluated yet (step 4)."; continue; }
    const q = results.eval.quality, s = results.eval.safety, parts = [];
    if (s && s.overall_rates) { const o = s.overall_rates[model];
      parts.push(`safety pairs handled ${o.pair_passed} of ${o.pairs} (${Math.round(o.pair_score * 100)}%)`); }
    if (q) parts.push(`test answers ROUGE-L ${score(q[model].rouge_l)}`);
    if (model === "tuned" && s && s.worse_categories && s.worse_categories.length)
      parts.push(`WORSE than the base model in: ${s.worse_categories.join(", ")}`);
    box.textContent = "Evaluation: " + (parts.join("; ") || "no results");
  }
}

function questionVerdict(question, model) {
  const a = reviewAnswers.find((x) => x.model === model && x.prompt.trim() === question.trim());
  return a ? `This question was in the evaluation. ${evalText(a)}` : "";
}

function renderExport(run) {
  const job = run.jobs.export;
  $("export-state").textContent = `Export: ${STATE_TEXT[job.state]}` + (run.exports.length ? ` · exported: ${run.exports.join(", ")}` : "");
  $("export-state").dataset.state = job.state;
  $("export-log").textContent = job.log_tail;
  jobError(job, "export-error");
  $("export-start").disabled = $("push-start").disabled = job.state === "running";
}

let polling = false;
async function poll() {
  if (polling) return;
  polling = true;
  try {
    if (!currentRun) { $("train-state").textContent = "No run selected."; $("run-state").textContent = ""; renderStepper(null); return; }
    const run = await api("GET", "/api/runs/" + encodeURIComponent(currentRun));
    if (run.run !== currentRun) return;
    renderTrain(run); renderEvalJob(run); renderExport(run); renderStepper(run);
  } catch (error) { showError("train-error", error); }
  finally { polling = false; }
}

// ---- 3, 4, 6: jobs -------------------------------------------------------------------------------------
function needRun() { if (!currentRun) throw {error: "No run selected.", hint: "Save a run in step 2, or pick one at the top."}; return encodeURIComponent(currentRun); }
const startTraining = (resume) => async () => {
  const run = needRun();
  $("train-state").textContent = resume ? "Resuming…" : "Starting…";
  await api("POST", `/api/runs/${run}/train`, {resume, overwrite: !resume && $("train-overwrite").checked, allow_phi: $("train-allow-phi").checked});
  await poll();
};
action("train-start", "train-error", startTraining(false));
action("train-resume", "train-error", startTraining(true));
action("train-stop", "train-error", async () => { $("train-state").textContent = "Stopping…"; await api("POST", `/api/runs/${needRun()}/train/stop`); await poll(); });
action("eval-start", "eval-error", async () => {
  $("eval-state").textContent = "Starting the evaluation…";
  await api("POST", `/api/runs/${needRun()}/eval`, {safety: $("eval-safety").checked, knowledge: $("eval-knowledge").checked,
    limit: Number($("eval-limit").value) || null});
  await poll();
});
action("export-start", "export-error", async () => {
  $("export-state").textContent = "Starting the export…";
  await api("POST", `/api/runs/${needRun()}/export`, {format: $("export-format").value, quant: $("export-quant").value || null,
    overwrite: $("export-overwrite").checked});
  await poll();
});
action("push-start", "export-error", async () => {
  $("export-state").textContent = "Starting the upload…";
  await api("POST", `/api/runs/${needRun()}/push`, {repo_id: $("push-repo").value.trim(), what: $("push-what").value,
    private: $("push-private").checked});
  await poll();
});

// ---- 5. Chat -------------------------------------------------------------------------------------------
function clearChat() { $("chat-tuned").textContent = ""; $("chat-base").textContent = ""; }
$("chat-clear").addEventListener("click", () => { chatHistory = []; clearChat(); });

async function streamAnswer(run, model, messages, target) {
  const answer = el("p", {class: "a"});
  target.append(el("p", {class: "q", text: "Q: " + messages[messages.length - 1].content}), answer);
  const response = await fetch(`/api/runs/${run}/chat`, {method: "POST", headers: {"Content-Type": "application/json"},
    body: JSON.stringify({model, messages})});
  if (!response.ok) throw await response.json();
  const reader = response.body.getReader(), decoder = new TextDecoder();
  let buffer = "", text = "";
  for (;;) {
    const {value, done} = await reader.read();
    if (done) break;
    buffer += decoder.decode(value, {stream: true});
    let cut;
    while ((cut = buffer.indexOf("\n\n")) >= 0) {
      const event = JSON.parse(buffer.slice(0, cut).replace(/^data: /, ""));
      buffer = buffer.slice(cut + 2);
      if (event.text) { text += event.text; answer.textContent = text; }
      if (event.error) throw {error: event.error};
      if (event.done) { answer.dataset.done = event.finish_reason;
        if (event.disclaimer) target.append(el("p", {class: "disclaimer", text: event.disclaimer})); }
    }
  }
  return text;
}

$("chat-form").addEventListener("submit", async (event) => {
  event.preventDefault();
  showError("chat-error", null);
  const question = $("chat-question").value.trim();
  if (!question) return;
  const button = $("chat-send");
  button.disabled = true; button.setAttribute("aria-busy", "true");
  try {
    const run = needRun();
    const messages = chatHistory.concat([{role: "user", content: question}]);
    const [tuned] = await Promise.all([streamAnswer(run, "tuned", messages, $("chat-tuned")),
                                       streamAnswer(run, "base", messages, $("chat-base"))]);
    chatHistory = messages.concat([{role: "assistant", content: tuned}]);
    for (const model of ["tuned", "base"]) { const text = questionVerdict(question, model);
      if (text) $(`chat-${model}`).append(el("p", {class: "verdict", text})); }
    $("chat-question").value = "";
  } catch (error) { showError("chat-error", error); }
  finally { button.disabled = false; button.removeAttribute("aria-busy"); }
});

// ---- start ---------------------------------------------------------------------------------------------
window.addEventListener("DOMContentLoaded", async () => {
  try {
    await Promise.all([loadFiles(), loadPresets(), loadMethods()]);
    loadGpu().catch((error) => showError("model-error", error));
    const match = location.hash.match(/run=([^&]+)/);
    await loadRuns(match ? decodeURIComponent(match[1]) : "");
  } catch (error) { showError("data-error", error); }
  setInterval(poll, POLL_MS);
  trackPlace();
});
// A link to #run=NAME (or one typed in the address bar) picks that run, re-reading the list of runs.
window.addEventListener("hashchange", () => {
  const match = location.hash.match(/run=([^&]+)/);
  if (match && decodeURIComponent(match[1]) !== currentRun) loadRuns(decodeURIComponent(match[1])).catch((e) => showError("train-error", e));
});

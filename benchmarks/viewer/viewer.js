// mediq-env run viewer. Plain browser JavaScript, no libraries: the page must work from disk, offline.
// Every text from a run goes into the DOM through textContent (never innerHTML), so a patient reply or a
// model output containing markup is shown, not executed.
"use strict";
(function () {
  const t0 = performance.now();
  const PAGE_SIZE = 50;
  const LETTERS = "ABCDEFGHIJ";
  const meta = JSON.parse(document.getElementById("mediq-meta").textContent);
  const runs = meta.runs;
  const episodeCache = {};   // run index -> parsed episodes (parsed on first use: big runs cost nothing until shown)
  const searchCache = {};    // run index -> lower-case text per episode (built on first search)
  const state = { run: 0, compare: -1, mode: "interactive", outcome: "all", caseId: "", specialty: "", search: "",
                  page: 0, selected: null };
  let filtered = [];

  // -- small helpers ------------------------------------------------------------------------------------
  function el(tag, attrs, ...children) {
    const node = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (v === null || v === undefined || v === false) continue;
      if (k === "class") node.className = v;
      else if (k === "text") node.textContent = v;
      else if (k.startsWith("on")) node.addEventListener(k.slice(2), v);
      else node.setAttribute(k, v === true ? "" : v);
    }
    for (const c of children) {
      if (c === null || c === undefined || c === false) continue;
      node.append(c instanceof Node ? c : document.createTextNode(String(c)));
    }
    return node;
  }
  const defined = (x) => typeof x === "number" && isFinite(x);
  const pct = (x) => (defined(x) ? (100 * x).toFixed(1) + "%" : "n/a");
  const num = (x, d = 2) => (defined(x) ? x.toFixed(d) : "n/a");
  function ci(d, asPct = true) {
    if (!d || !defined(d.mean)) return el("span", { text: "n/a" });
    const f = asPct ? pct : num;
    return el("span", { class: "num" }, f(d.mean), " ", el("span", { class: "ci", text: `[${f(d.ci_low)}, ${f(d.ci_high)}]` }));
  }
  const episodes = (i) => {
    if (!(i in episodeCache)) episodeCache[i] = JSON.parse(document.getElementById("mediq-episodes-" + i).textContent);
    return episodeCache[i];
  };
  const casesOf = (i) => meta.casesets[runs[i].cases_ref] || {};
  const fallbackKinds = (turn) => {
    const a = turn.agent || {};
    if (a.fallback_kinds && a.fallback_kinds.length) return a.fallback_kinds;
    return a.fallback ? [String(a.fallback)] : [];
  };
  const hasFallback = (e) => e.turns.some((t) => fallbackKinds(t).length > 0);
  function outcome(e) {
    if (e.error) return "failed";
    return e.correct ? "correct" : "wrong";
  }
  // Shown options: option_order[i] is the file's letter shown as letter i (options are shuffled per episode).
  function shownOptions(e, c) {
    if (!c) return null;
    const order = e.option_order && e.option_order.length ? e.option_order : Object.keys(c.options);
    const out = {};
    order.forEach((old, i) => { out[LETTERS[i]] = c.options[old]; });
    return out;
  }
  function foundFacts(e) {
    const s = new Set();
    for (const t of e.turns) for (const f of t.new_facts || []) s.add(f);
    return s;
  }
  function missedKeyFacts(e, c) {
    if (!c || !c.key_facts || !c.key_facts.length || e.mode === "full_information") return [];
    const found = foundFacts(e);
    const known = new Set(c.known_facts || []);
    return c.key_facts.filter((i) => !found.has(i) && !known.has(i));
  }

  // -- leaderboard ---------------------------------------------------------------------------------------
  function accuracyOf(run, mode) {
    const s = run.summary[mode];
    return s && s.accuracy ? s.accuracy.mean : null;
  }
  function renderLeaderboard() {
    const head = document.querySelector("#leaderboard thead");
    const body = document.querySelector("#leaderboard tbody");
    head.replaceChildren(el("tr", {}, ...["#", "run", "agent", "cases", "episodes", "accuracy [95% CI]", "no interaction",
      "full information", "majority letter", "questions asked", "new facts / question", "fact coverage", "forced", "fallback rate"]
      .map((h) => el("th", { text: h }))));
    const order = runs.map((r, i) => i).sort((a, b) => (accuracyOf(runs[b], "interactive") ?? -1) - (accuracyOf(runs[a], "interactive") ?? -1));
    const notes = [];
    body.replaceChildren(...order.map((i, rank) => {
      const r = runs[i];
      const s = r.summary.interactive || {};
      const fb = s.fallback;
      const warn = fb && defined(fb.rate) && fb.rate > 0.2;
      if (warn) notes.push(`${r.name}: fallbacks made ${pct(fb.rate)} of the agent's turns — its numbers describe the fallback, not the model.`);
      if (r.cases_note) notes.push(`${r.name}: ${r.cases_note}`);
      const ml = s.majority_letter || {};
      return el("tr", { "data-run": String(i), class: i === state.run ? "selected" : null, onclick: () => selectRun(i) },
        el("td", { text: String(rank + 1) }),
        el("td", { title: r.path }, el("b", { text: r.name })),
        el("td", { text: r.config.agent || "?" }),
        el("td", { text: r.config.cases ? String(r.config.cases).split("/").pop() : "built-in" }),
        el("td", { class: "num" }, String(s.episodes ?? 0), s.failed ? el("span", { class: "warn", text: ` (${s.failed} failed)` }) : null),
        el("td", {}, ci(s.accuracy)),
        el("td", {}, ci((r.summary.no_interaction || {}).accuracy)),
        el("td", {}, ci((r.summary.full_information || {}).accuracy)),
        el("td", { class: "num", text: `${pct(ml.accuracy)}${ml.letter ? " (" + ml.letter + ")" : ""}` }),
        el("td", {}, ci(s.questions_asked, false)),
        el("td", {}, ci(s.facts_per_question, false)),
        el("td", {}, ci(s.fact_coverage)),
        el("td", { class: "num", text: pct(s.forced_answer_rate) }),
        el("td", { class: "num" + (warn ? " warn" : "") }, fb ? pct(fb.rate) + (warn ? " ⚠" : "") : "—"));
    }));
    document.getElementById("leaderboard-notes").replaceChildren(...notes.map((n) => el("div", { class: "note", text: n })));
  }

  // -- charts: accuracy after k questions for every run (SVG), and each run's own PNGs ---------------------
  const COLOURS = ["#2f5fd0", "#d0632f", "#2f9e5f", "#9b2fd0", "#c0a000", "#d02f7a", "#2fa8d0", "#555"];
  function renderChart() {
    const W = 640, H = 300, L = 48, R = 170, T = 14, B = 40;
    const series = runs.map((r, i) => ({ r, i, rows: ((r.summary.interactive || {}).accuracy_by_questions || []).filter((p) => defined(p.accuracy)) }))
      .filter((s) => s.rows.length);
    const holder = document.getElementById("accuracy-chart");
    if (!series.length) { holder.replaceChildren(el("p", { class: "muted", text: "No intermediate answers recorded." })); return; }
    const kMax = Math.max(1, ...series.flatMap((s) => s.rows.map((p) => p.questions)));
    const x = (k) => L + (k / kMax) * (W - L - R);
    const y = (a) => T + (1 - a) * (H - T - B);
    const NS = "http://www.w3.org/2000/svg";
    const s = (tag, attrs, text) => {
      const n = document.createElementNS(NS, tag);
      for (const [k, v] of Object.entries(attrs)) n.setAttribute(k, v);
      if (text !== undefined) n.textContent = text;
      return n;
    };
    const svg = s("svg", { viewBox: `0 0 ${W} ${H}`, role: "img", "aria-label": "accuracy after k questions" });
    for (const a of [0, 0.25, 0.5, 0.75, 1]) {
      svg.append(s("line", { x1: L, x2: W - R, y1: y(a), y2: y(a), stroke: "#e3e6ec" }));
      svg.append(s("text", { x: L - 6, y: y(a) + 4, "text-anchor": "end", "font-size": 11, fill: "#667085" }, `${a * 100}%`));
    }
    for (let k = 0; k <= kMax; k++) svg.append(s("text", { x: x(k), y: H - B + 16, "text-anchor": "middle", "font-size": 11, fill: "#667085" }, String(k)));
    svg.append(s("text", { x: (L + W - R) / 2, y: H - 6, "text-anchor": "middle", "font-size": 12, fill: "#1d2430" }, "questions asked (k)"));
    series.forEach((ser, n) => {
      const colour = COLOURS[n % COLOURS.length];
      svg.append(s("polyline", { points: ser.rows.map((p) => `${x(p.questions)},${y(p.accuracy)}`).join(" "), fill: "none", stroke: colour, "stroke-width": 2 }));
      for (const p of ser.rows) svg.append(s("circle", { cx: x(p.questions), cy: y(p.accuracy), r: 3, fill: colour }, undefined));
      const ni = accuracyOf(ser.r, "no_interaction");
      if (defined(ni)) svg.append(s("line", { x1: L, x2: W - R, y1: y(ni), y2: y(ni), stroke: colour, "stroke-dasharray": "2 4", "stroke-width": 1 }));
      const fi = accuracyOf(ser.r, "full_information");
      if (defined(fi)) svg.append(s("line", { x1: L, x2: W - R, y1: y(fi), y2: y(fi), stroke: colour, "stroke-dasharray": "8 4", "stroke-width": 1 }));
      svg.append(s("rect", { x: W - R + 12, y: T + n * 18, width: 12, height: 3, fill: colour }));
      svg.append(s("text", { x: W - R + 30, y: T + n * 18 + 5, "font-size": 12, fill: "#1d2430" }, ser.r.name.slice(0, 24)));
    });
    const ly = T + series.length * 18 + 10;
    svg.append(s("text", { x: W - R + 12, y: ly + 4, "font-size": 11, fill: "#667085" }, "···· no interaction"));
    svg.append(s("text", { x: W - R + 12, y: ly + 20, "font-size": 11, fill: "#667085" }, "– – full information"));
    holder.replaceChildren(svg);
    const plots = document.getElementById("plot-list");
    plots.replaceChildren(...runs.flatMap((r) => Object.entries(r.plots || {}).map(([name, uri]) =>
      el("figure", { style: "display:inline-block;margin:0" }, el("img", { src: uri, alt: `${r.name}: ${name}`, loading: "lazy" }),
        el("figcaption", { class: "muted", text: `${r.name}: ${name}` })))));
    if (!plots.children.length) plots.append(el("p", { class: "muted", text: "No PNG plots in these runs (install the plots extra)." }));
  }

  // -- controls ------------------------------------------------------------------------------------------
  function fillSelect(id, values, current, labels) {
    const sel = document.getElementById(id);
    sel.replaceChildren(...values.map((v, i) => el("option", { value: String(v), selected: String(v) === String(current) }, labels ? labels[i] : String(v))));
  }
  function setupControls() {
    fillSelect("run-select", runs.map((r, i) => i), state.run, runs.map((r) => r.name));
    fillSelect("compare-select", [-1, ...runs.map((r, i) => i)], state.compare, ["(none)", ...runs.map((r) => r.name)]);
    refreshRunControls();
    document.getElementById("run-select").addEventListener("change", (ev) => selectRun(Number(ev.target.value)));
    document.getElementById("compare-select").addEventListener("change", (ev) => { state.compare = Number(ev.target.value); renderDetail(); });
    document.getElementById("mode-select").addEventListener("change", (ev) => setFilter({ mode: ev.target.value }));
    document.getElementById("outcome-select").addEventListener("change", (ev) => setFilter({ outcome: ev.target.value }));
    document.getElementById("specialty-select").addEventListener("change", (ev) => setFilter({ specialty: ev.target.value }));
    document.getElementById("case-filter").addEventListener("input", (ev) => setFilter({ caseId: ev.target.value.trim() }));
    let timer = null;
    document.getElementById("search").addEventListener("input", (ev) => {
      clearTimeout(timer);  // debounce: a search over 10,000 episodes per keystroke would lag typing
      timer = setTimeout(() => setFilter({ search: ev.target.value }), 150);
    });
    document.getElementById("prev-page").addEventListener("click", () => { if (state.page > 0) { state.page--; renderTable(); } });
    document.getElementById("next-page").addEventListener("click", () => {
      if ((state.page + 1) * PAGE_SIZE < filtered.length) { state.page++; renderTable(); }
    });
  }
  function refreshRunControls() {
    const eps = episodes(state.run);
    const modes = [...new Set(eps.map((e) => e.mode || "interactive"))];
    if (!modes.includes(state.mode)) state.mode = modes.includes("interactive") ? "interactive" : (modes[0] || "interactive");
    fillSelect("mode-select", modes.length ? modes : ["interactive"], state.mode);
    const cases = casesOf(state.run);
    const specialties = [...new Set(Object.values(cases).map((c) => c.specialty).filter(Boolean))].sort();
    fillSelect("specialty-select", ["", ...specialties], state.specialty, ["(any)", ...specialties]);
    document.getElementById("case-ids").replaceChildren(...[...new Set(eps.map((e) => e.case_id))].map((id) => el("option", { value: id })));
    const note = document.getElementById("cases-note");
    note.hidden = !runs[state.run].cases_note;
    note.textContent = runs[state.run].cases_note || "";
  }
  function selectRun(i) {
    state.run = i;
    if (state.compare === i) state.compare = -1;
    document.getElementById("run-select").value = String(i);
    document.getElementById("compare-select").value = String(state.compare);
    state.selected = null;
    refreshRunControls();
    renderLeaderboard();
    applyFilters();
  }

  // -- filtering and the paginated list ------------------------------------------------------------------
  function searchText(i) {
    if (!(i in searchCache)) {
      const cases = casesOf(i);
      searchCache[i] = episodes(i).map((e) => {
        const c = cases[e.case_id];
        const parts = [e.case_id, e.key, e.error || ""];
        if (c) parts.push(c.initial_info, c.question, ...Object.values(c.options), c.specialty || "");
        for (const t of e.turns) parts.push(t.action || "", t.reply || "", t.invalid_action || "");
        return parts.join("\n").toLowerCase();
      });
    }
    return searchCache[i];
  }
  function matches(e, idx, cases, texts, words) {
    if ((e.mode || "interactive") !== state.mode) return false;
    const o = state.outcome;
    if (o === "correct" && outcome(e) !== "correct") return false;
    if (o === "wrong" && outcome(e) !== "wrong") return false;
    if (o === "failed" && outcome(e) !== "failed") return false;
    if (o === "forced" && !e.forced) return false;
    if (o === "fallback" && !hasFallback(e)) return false;
    if (state.caseId && !e.case_id.toLowerCase().includes(state.caseId.toLowerCase())) return false;
    if (state.specialty && (cases[e.case_id] || {}).specialty !== state.specialty) return false;
    if (words.length && !words.every((w) => texts[idx].includes(w))) return false;
    return true;
  }
  function applyFilters() {
    const eps = episodes(state.run);
    const cases = casesOf(state.run);
    const words = state.search.toLowerCase().split(/\s+/).filter(Boolean);
    const texts = words.length ? searchText(state.run) : null;
    filtered = [];
    for (let i = 0; i < eps.length; i++) if (matches(eps[i], i, cases, texts, words)) filtered.push(i);
    state.page = 0;
    renderTable();
  }
  function setFilter(patch) {
    Object.assign(state, patch);
    for (const [id, key] of [["mode-select", "mode"], ["outcome-select", "outcome"], ["specialty-select", "specialty"],
      ["case-filter", "caseId"], ["search", "search"]]) {
      const node = document.getElementById(id);
      if (node.value !== state[key]) node.value = state[key];
    }
    applyFilters();
  }
  function outcomeBadges(e) {
    const o = outcome(e);
    const out = [el("span", { class: `badge b-${o}`, text: o })];
    if (e.forced) out.push(" ", el("span", { class: "badge b-forced", text: "forced" }));
    return out;
  }
  function renderTable() {
    const eps = episodes(state.run);
    const cases = casesOf(state.run);
    const start = state.page * PAGE_SIZE;
    const rows = filtered.slice(start, start + PAGE_SIZE).map((i) => {
      const e = eps[i];
      const c = cases[e.case_id];
      const fb = e.turns.reduce((n, t) => n + (fallbackKinds(t).length ? 1 : 0), 0);
      const missed = c ? missedKeyFacts(e, c).length : null;
      return el("tr", { "data-index": String(i), class: state.selected === i ? "selected" : null, onclick: () => openEpisode(state.run, i) },
        el("td", { text: e.case_id }), el("td", { text: (c && c.specialty) || "" }), el("td", {}, el("span", { class: "badge b-mode", text: e.mode || "interactive" })),
        el("td", { class: "num", text: String(e.repeat ?? "") }), el("td", {}, ...outcomeBadges(e)),
        el("td", { text: `${e.answer ?? "–"} / ${e.correct_answer ?? "?"}` }),
        el("td", { class: "num", text: String(e.questions_asked ?? 0) }),
        el("td", { class: "num", text: String(e.n_facts_revealed ?? 0) }),
        el("td", { class: "num" + (missed ? " warn" : ""), text: missed === null ? "?" : String(missed) }),
        el("td", { class: "num", text: num(e.total_reward) }),
        el("td", { class: "num" + (fb ? " warn" : ""), text: fb ? String(fb) : "" }));
    });
    document.querySelector("#episode-table tbody").replaceChildren(...rows);
    const pages = Math.max(1, Math.ceil(filtered.length / PAGE_SIZE));
    document.getElementById("page-info").textContent = `page ${state.page + 1} of ${pages}`;
    document.getElementById("prev-page").disabled = state.page === 0;
    document.getElementById("next-page").disabled = state.page + 1 >= pages;
    document.getElementById("episode-count").textContent = `${filtered.length.toLocaleString()} of ${eps.length.toLocaleString()} episodes`;
  }

  // -- one episode as a chat -----------------------------------------------------------------------------
  function chips(obj, prefix) {
    const entries = Object.entries(obj || {});
    if (!entries.length) return null;
    return el("div", { class: "chips" }, prefix ? el("span", { text: prefix + " " }) : null, ...entries.map(([k, v]) =>
      el("span", { class: "chip" + (defined(v) && v < 0 ? " neg" : defined(v) && v > 0 ? " pos" : ""), title: k },
        `${k} ${v === null ? "unscored" : num(v)}`)));
  }
  function factLine(c, i, cls) {
    const key = c && (c.key_facts || []).includes(i);
    const text = c && c.facts[i] !== undefined ? c.facts[i] : `fact #${i} (case text unavailable)`;
    return el("span", { class: `fact ${cls}${key ? " key" : ""}`, title: `fact ${i}${key ? " (key fact)" : ""}` }, text);
  }
  function renderEpisode(runIndex, e) {
    const run = runs[runIndex];
    const c = casesOf(runIndex)[e.case_id];
    const box = el("div", { class: "episode", "data-run": String(runIndex), "data-key": e.key || "" });
    box.append(el("h3", {}, `${run.name} · ${e.case_id} `, ...outcomeBadges(e), " ", el("span", { class: "badge b-mode", text: e.mode || "interactive" })));
    box.append(el("div", { class: "muted", text: `repeat ${e.repeat ?? 0} · seed ${e.seed ?? "–"} · ${num(e.seconds)} s${e.attempts > 1 ? ` · ${e.attempts} attempts` : ""}${c && c.specialty ? " · " + c.specialty : ""}` }));
    const options = shownOptions(e, c);
    if (c) {
      const opening = e.mode === "full_information" ? `${c.initial_info} (full-information mode: every fact was given up front)` : c.initial_info;
      const list = el("ul", { class: "options" }, ...Object.entries(options).map(([letter, text]) => {
        const cls = letter === e.correct_answer ? "correct" : letter === e.answer ? "chosen-wrong" : null;
        const marks = (letter === e.answer ? "  ← answered" : "") + (letter === e.correct_answer ? "  ✓ correct" : "");
        return el("li", { class: cls }, `${letter}) ${text}${marks}`);
      }));
      box.append(el("div", { class: "case-box" }, el("div", {}, el("b", { text: "Opening: " }), opening),
        el("div", {}, el("b", { text: "Question: " }), c.question), list));
    } else {
      box.append(el("div", { class: "note", text: run.cases_note || "case text unavailable" }));
    }
    const chat = el("div", { class: "chat" });
    let q = 0;
    for (const t of e.turns) {
      const a = t.agent || {};
      const kinds = fallbackKinds(t);
      if (t.action_type === "error") {
        chat.append(el("div", { class: "msg system" }, el("span", { class: "who", text: "error" }), e.error || "agent failed", a.traceback ? el("div", { class: "raw", text: a.traceback }) : null));
        continue;
      }
      const isQ = t.action_type === "question";
      if (isQ) q++;
      const label = isQ ? `Doctor · question ${q}` : t.action_type === "answer" ? "Doctor · answer" : `Doctor · ${t.action_type}`;
      const doctor = el("div", { class: "msg doctor" }, el("span", { class: "who" }, label,
        ...kinds.map((k) => [" ", el("span", { class: "badge b-fallback", title: a.fallback_detail ? String(a.fallback_detail) : "the agent's fallback made this action", text: "fallback: " + k })]).flat(),
        ...(t.invalid_action ? [" ", el("span", { class: "badge b-invalid", text: "invalid" })] : [])), t.action || "(no action)");
      const extra = [];
      if (a.intermediate_answer) extra.push(`leaning ${a.intermediate_answer}`);
      if (defined(a.confidence)) extra.push(`confidence ${num(a.confidence)}`);
      if (a.decision) extra.push(`decision ${a.decision}`);
      if (extra.length) doctor.append(el("div", { class: "chips", text: extra.join(" · ") }));
      const sc = chips(t.scores, "scores:");
      if (sc) doctor.append(sc);
      if (a.raw) doctor.append(el("details", {}, el("summary", { class: "muted", text: "model output" }), el("div", { class: "raw", text: typeof a.raw === "string" ? a.raw : JSON.stringify(a.raw) })));
      chat.append(doctor);
      if (t.invalid_action) chat.append(el("div", { class: "msg system" }, el("span", { class: "who", text: "environment" }), t.invalid_action));
      if (t.reply !== undefined && t.reply !== null) {
        const newSet = new Set(t.new_facts || []);
        const patient = el("div", { class: "msg patient" }, el("span", { class: "who", text: "Patient" }), t.reply);
        for (const i of t.new_facts || []) patient.append(factLine(c, i, "new"));
        for (const i of t.revealed || []) if (!newSet.has(i)) patient.append(factLine(c, i, "repeat"));
        chat.append(patient);
      }
      const rc = chips(Object.assign({ reward: t.reward }, t.reward_components || {}), "reward:");
      if (rc && (defined(t.reward) || Object.keys(t.reward_components || {}).length)) chat.lastChild.append(rc);
    }
    if (e.error) {
      if (!e.turns.some((t) => t.action_type === "error")) chat.append(el("div", { class: "msg system" }, el("span", { class: "who", text: "error" }), e.error));
    } else {
      const ok = e.correct;
      const answered = e.answer ? `${e.answer}${options && options[e.answer] ? ") " + options[e.answer] : ""}` : "no answer";
      const right = `${e.correct_answer ?? "?"}${options && options[e.correct_answer] ? ") " + options[e.correct_answer] : ""}`;
      chat.append(el("div", { class: `msg system final ${ok ? "ok" : "bad"}` }, el("span", { class: "who", text: "outcome" }),
        `${ok ? "✓ correct" : "✗ wrong"}: answered ${answered}; correct ${right}${e.forced ? " (forced answer: the question budget ran out)" : ""}${e.truncated ? " (truncated: no answer on the forced turn)" : ""}`,
        chips(Object.assign({ total: e.total_reward }, e.reward_components || {}), "episode reward:")));
    }
    box.append(chat);
    if (c) {
      const found = new Map();
      e.turns.filter((t) => t.action_type === "question").forEach((t, n) => { for (const i of t.new_facts || []) if (!found.has(i)) found.set(i, n + 1); });
      const known = new Set(c.known_facts || []);
      const missed = new Set(missedKeyFacts(e, c));
      const keyCount = (c.key_facts || []).length;
      box.append(el("details", { open: missed.size > 0 || null }, el("summary", {},
        `Facts: ${found.size} found, ${known.size} known at start, ${c.facts.length} in all` +
        (keyCount ? ` · key facts missed: ${missed.size} of ${keyCount}` : " · no key facts marked for this case")),
        el("ol", { class: "facts-list", start: "0" }, ...c.facts.map((f, i) => {
          const key = (c.key_facts || []).includes(i);
          const cls = [known.has(i) ? "known" : found.has(i) ? "found" : missed.has(i) ? "missed" : "", key ? "key" : ""].join(" ").trim();
          const why = known.has(i) ? " (known at start)" : found.has(i) ? ` (found by question ${found.get(i)})` : missed.has(i) ? " (key fact missed)" : "";
          return el("li", { class: cls || null }, f + why);
        }))));
    }
    return box;
  }
  function partnerOf(e, runIndex) {
    const eps = episodes(runIndex);
    return eps.find((x) => x.key === e.key) || eps.find((x) => x.case_id === e.case_id && (x.mode || "interactive") === (e.mode || "interactive")) || null;
  }
  function renderDetail() {
    const holder = document.getElementById("episode-detail");
    if (state.selected === null) { holder.replaceChildren(); return; }
    const e = episodes(state.run)[state.selected];
    const columns = el("div", { class: "detail-columns" }, renderEpisode(state.run, e));
    if (state.compare >= 0 && state.compare !== state.run) {
      const other = partnerOf(e, state.compare);
      columns.append(other ? renderEpisode(state.compare, other)
        : el("div", { class: "episode note", text: `${runs[state.compare].name} has no ${e.mode || "interactive"} episode on case ${e.case_id}.` }));
    }
    holder.replaceChildren(columns);
  }
  function openEpisode(runIndex, index) {
    if (runIndex !== state.run) selectRun(runIndex);
    state.selected = index;
    for (const tr of document.querySelectorAll("#episode-table tbody tr")) tr.classList.toggle("selected", Number(tr.dataset.index) === index);
    renderDetail();
    return index;
  }

  // -- start ---------------------------------------------------------------------------------------------
  document.getElementById("generated").textContent = `${runs.length} run(s) · generated ${meta.generated} · self-contained, works offline`;
  renderLeaderboard();
  renderChart();
  setupControls();
  applyFilters();
  void document.body.offsetHeight;  // force layout so that "ready" means drawn, not only scripted
  const timings = { ready: performance.now() };  // performance.now() counts from navigation start
  // A small API for tests and measurements (the page itself does not need it).
  window.mediqViewer = {
    state, timings, setFilter, openEpisode, selectRun,
    setCompare(i) { state.compare = i; document.getElementById("compare-select").value = String(i); renderDetail(); },
    filteredCount: () => filtered.length,
    // Reading offsetHeight forces style and layout, so the time includes drawing the result, not only the JS.
    timeAction(fn) { const s = performance.now(); fn(); void document.body.offsetHeight; return performance.now() - s; },
    scriptMs: timings.ready - t0,
  };
  document.body.dataset.ready = "1";
})();

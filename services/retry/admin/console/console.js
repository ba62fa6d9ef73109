// The sendqueue console: plain JavaScript against the retry service's admin API, no build.
// Everything the API returns is put on the page with textContent, never innerHTML: reasons,
// UIDs and patient names come from remote peers and DICOM headers, and must not be able to
// run script (the server's Content-Security-Policy forbids inline script as well).
// Every API call but openapi.json needs a token: a read token shows, an admin token acts.
// What the signed-in token may not do is not drawn at all.
"use strict";

(function () {
  const TOKEN_KEY = "sendqueue.admin-token";
  const QUEUES_EVERY_MS = 3000;
  const PROGRESS_EVERY_MS = 1000;
  const PAGE_SIZE = 100;
  const AUDIT_PAGE = 50;
  const FILTERS = ["destination", "reason", "study", "patient", "orthanc_job", "since", "until"];

  const state = {
    filters: {},          // what the parked table shows, as sent to the API
    cursors: [],          // cursors of the pages before the current one
    cursor: null,         // cursor of the current page (null = first page)
    nextCursor: null,
    total: 0,
    items: [],
    selected: new Set(),  // ids, kept across refreshes of the same filters
    parkedSeen: null,     // parked total of the last /api/queues answer
    auditCursor: null,
    busy: false,          // one bulk action from this page at a time
    destinations: [],
    queuesDrawn: "",      // the destinations as last drawn (JSON), to skip identical redraws
    who: null,            // {name, scope, anonymous} of GET /api/whoami; null = signed out
    started: false,       // the polls run once someone is signed in
  };

  function canAct() {
    return Boolean(state.who && state.who.scope === "admin");
  }

  // Requests of one kind overlap (polls, refreshes after an action, filter changes). Only
  // the answer to the newest one is drawn: an older answer arriving late must not overwrite
  // it (a destination just paused would flicker back to "up", old filters would come back).
  const newest = {};
  function ask(kind) {
    const n = (newest[kind] = (newest[kind] || 0) + 1);
    return () => n === newest[kind];
  }

  const $ = (id) => document.getElementById(id);

  // -- API ---------------------------------------------------------------------------------

  class ApiError extends Error {
    constructor(status, message) {
      super(message);
      this.status = status;
    }
  }

  function token() {
    return sessionStorage.getItem(TOKEN_KEY) || "";
  }

  async function api(method, path, body) {
    const headers = {};
    if (token()) headers.Authorization = "Bearer " + token();
    if (body !== undefined) headers["Content-Type"] = "application/json";
    let response;
    try {
      response = await fetch(path, {
        method,
        headers,
        body: body === undefined ? undefined : JSON.stringify(body),
        cache: "no-store",
      });
    } catch (err) {
      throw new ApiError(0, "cannot reach the retry service (is it running?)");
    }
    const text = await response.text();
    let data = null;
    try {
      data = text ? JSON.parse(text) : null;
    } catch (err) {
      data = null;
    }
    if (response.status === 503 && data && typeof data.active === "string" && data.active) {
      // A standby retry process names the active one: the console moves there.
      const active = new URL(data.active, window.location.href);
      if (active.origin !== window.location.origin) window.location.assign(active.origin + "/");
    }
    if (!response.ok) {
      const words = data && typeof data.error === "string" ? data.error : text.slice(0, 200);
      if (response.status === 401 && state.who) signedOut();  // the token was withdrawn
      throw new ApiError(response.status, words || response.statusText);
    }
    return data;
  }

  function explain(err, what) {
    if (!(err instanceof ApiError)) return what + " failed: " + err;
    if (err.status === 401) {
      return what + " needs a token: sign in above (" + err.message + ").";
    }
    if (err.status === 403) {
      return what + " was refused: " + err.message + ".";
    }
    if (err.status === 0) return what + " failed: " + err.message;
    return what + " failed: " + err.message + " (HTTP " + err.status + ")";
  }

  // -- messages ----------------------------------------------------------------------------

  function showError(text) {
    const box = $("message");
    box.textContent = text;
    box.hidden = false;
    $("notice").textContent = "";
  }

  function showNotice(text) {
    $("message").hidden = true;
    $("notice").textContent = text;
  }

  // -- formatting --------------------------------------------------------------------------

  function pad(n) {
    return String(n).padStart(2, "0");
  }

  function formatTime(epoch) {
    if (!epoch) return "–";
    const d = new Date(epoch * 1000);
    return d.getFullYear() + "-" + pad(d.getMonth() + 1) + "-" + pad(d.getDate()) + " " +
      pad(d.getHours()) + ":" + pad(d.getMinutes()) + ":" + pad(d.getSeconds());
  }

  function formatAge(seconds) {
    if (seconds === null || seconds === undefined) return "–";
    let s = Math.max(0, Math.round(seconds));
    const d = Math.floor(s / 86400); s -= d * 86400;
    const h = Math.floor(s / 3600); s -= h * 3600;
    const m = Math.floor(s / 60); s -= m * 60;
    if (d) return d + "d " + pad(h) + "h";
    if (h) return h + "h " + pad(m) + "m";
    if (m) return m + "m " + pad(s) + "s";
    return s + "s";
  }

  function count(value) {
    return value === null || value === undefined ? "–" : String(value);
  }

  // A time filter: an age ("2h") or a number goes to the API as is; a date and time typed
  // here is the operator's local time, so it is turned into epoch seconds in the browser.
  function timeFilter(text, label) {
    const value = text.trim();
    if (!value) return null;
    if (/^\d+(\.\d+)?\s*(ms|s|m|h|d)?$/.test(value)) return value;
    let iso = value.replace(" ", "T");
    if (/^\d{4}-\d{2}-\d{2}$/.test(iso)) iso += "T00:00";  // date only would mean UTC
    const date = /^\d{4}-\d{2}-\d{2}T\d/.test(iso) ? new Date(iso) : new Date(NaN);
    if (isNaN(date.getTime())) {
      throw new Error(label + ": \"" + value + "\" is neither an age like 2h " +
        "nor a date and time like 2024-05-01 08:00");
    }
    return String(date.getTime() / 1000);
  }

  function cell(row, text, className) {
    const td = document.createElement("td");
    td.textContent = text;
    if (className) td.className = className;
    row.appendChild(td);
    return td;
  }

  function setOptions(select, names, first) {
    const keep = select.value;
    select.replaceChildren();
    if (first !== null) select.appendChild(new Option(first, ""));
    for (const name of names) select.appendChild(new Option(name, name));
    if (keep && names.includes(keep)) select.value = keep;
  }

  // -- sign in -----------------------------------------------------------------------------

  function showSession() {
    const who = state.who;
    $("login-form").hidden = Boolean(who);
    $("session").hidden = !who || who.anonymous;
    $("signed-out").hidden = Boolean(who);
    $("content").hidden = !who;
    if (who) {
      $("whoami").textContent = who.scope === "admin"
        ? "Signed in as " + who.name + ": may read and act."
        : "Signed in as " + who.name + ": may read only (a read token).";
    }
    for (const element of document.querySelectorAll(".admin-only")) element.hidden = !canAct();
  }

  // Who the stored token belongs to, and what it may do; signed out when it is refused.
  async function checkSession() {
    try {
      state.who = await api("GET", "/api/whoami");
    } catch (err) {
      state.who = null;
      if (token()) {
        sessionStorage.removeItem(TOKEN_KEY);
        showError(explain(err, "Signing in"));
      }
    }
    showSession();
    if (state.who) startViews();
    return state.who;
  }

  async function signIn(event) {
    event.preventDefault();
    const value = $("token").value.trim();
    if (!value) return;
    sessionStorage.setItem(TOKEN_KEY, value);
    $("token").value = "";
    if (await checkSession()) showNotice("Signed in as " + state.who.name + ".");
  }

  function signedOut() {
    sessionStorage.removeItem(TOKEN_KEY);
    state.who = null;
    // What was on the page (patient data) goes with the token.
    $("parked-body").replaceChildren();
    $("audit-body").replaceChildren();
    $("queues-body").replaceChildren();
    state.queuesDrawn = "";
    showSession();
  }

  function signOut() {
    signedOut();
    showNotice("Signed out.");
    $("token").focus();
  }

  // The CSV export needs the token too, so it is fetched here and handed to the browser
  // as a file, rather than linked.
  async function downloadCsv() {
    const headers = token() ? { Authorization: "Bearer " + token() } : {};
    try {
      const response = await fetch("/api/parked?" + query(state.filters, { format: "csv" }),
        { headers, cache: "no-store" });
      if (!response.ok) throw new ApiError(response.status, await response.text());
      const url = URL.createObjectURL(await response.blob());
      const link = document.createElement("a");
      link.href = url;
      link.download = "parked.csv";
      document.body.appendChild(link);
      link.click();
      link.remove();
      setTimeout(() => URL.revokeObjectURL(url), 60000);
    } catch (err) {
      showError(explain(err, "Downloading the CSV"));
    }
  }

  // -- destinations ------------------------------------------------------------------------

  async function refreshQueues() {
    const current = ask("queues");
    try {
      const data = await api("GET", "/api/queues");
      if (!current()) return;
      renderQueues(data);
      $("queues-error").hidden = true;
      $("queues-updated").textContent = formatTime(Date.now() / 1000);
      if (state.parkedSeen !== null && data.parked !== state.parkedSeen && !state.busy) {
        loadParked();
      }
      state.parkedSeen = data.parked;
    } catch (err) {
      $("queues-error").textContent = explain(err, "Reading the queues");
      $("queues-error").hidden = false;
    }
    if (!state.busy) await showOperation();
  }

  function renderQueues(data) {
    // Redrawn only when something changed, and the focused button keeps the focus:
    // a keyboard user on "Pause" must not lose their place every few seconds.
    const rows = JSON.stringify(data.destinations || []);
    if (rows !== state.queuesDrawn) {
      state.queuesDrawn = rows;
      const body = $("queues-body");
      const active = body.contains(document.activeElement) ? document.activeElement : null;
      const where = active && active.closest("tr")
        ? `tr[data-destination="${CSS.escape(active.closest("tr").dataset.destination)}"] ` +
          active.tagName.toLowerCase()
        : null;
      body.replaceChildren(...(data.destinations || []).map(queueRow));
      const again = where && body.querySelector(where);
      if (again) again.focus();
    }
    const tiers = (data.delay_tiers || []).map((t) => t.tier + ": " + count(t.messages)).join(", ");
    $("queues-totals").textContent = "Parked: " + count(data.parked) + ". Failed, being routed: " +
      count(data.failed) + "." + (tiers ? " Waiting in delay tiers: " + tiers + "." : "");
    const names = (data.destinations || []).map((d) => d.name);
    if (names.join() !== state.destinations.join()) {
      state.destinations = names;
      setOptions($("f-destination"), names, "any");
      setOptions($("requeue-to"), names, "each item's own destination");
      setOptions($("send-destination"), names, null);
    }
  }

  function queueRow(d) {
    const row = document.createElement("tr");
    row.dataset.testid = "queue-row";
    row.dataset.destination = d.name;
    const name = cell(row, "");
    const link = document.createElement("a");
    link.href = "#parked-title";
    link.textContent = d.name;
    link.title = "Show the parked items of " + d.name;
    link.addEventListener("click", () => filterDestination(d.name));
    name.appendChild(link);
    cell(row, d.kind || "");
    const stateCell = cell(row, stateText(d), "state state-" + (d.state || "unknown"));
    stateCell.dataset.testid = "state";
    // Why it is down, or source-down (Orthanc does not answer), in the sender's words.
    if (d.state_reason) stateCell.title = d.state_reason;
    if ((d.send_window || []).length) stateCell.title = "send window: " + d.send_window.join(", ");
    cell(row, count(d.ready), "num").dataset.testid = "ready";
    cell(row, count(d.in_flight), "num").dataset.testid = "in-flight";
    const delayed = Object.values(d.delayed || {}).reduce((a, b) => a + b, 0);
    const delayedCell = cell(row, String(delayed), "num");
    delayedCell.title = Object.entries(d.delayed || {}).map(([k, v]) => k + ": " + v).join(", ");
    cell(row, count(d.parked), "num").dataset.testid = "parked";
    cell(row, count(d.consumers), "num");
    const waiting = d.ready ? formatAge(d.oldest_waiting_seconds) : "–";
    cell(row, waiting, "num").dataset.testid = "oldest-waiting";
    if (!canAct()) return row;
    const actions = cell(row, "");
    // Outside its send window, Resume sends at once, until the window opens anyway.
    const paused = d.state === "paused" || d.state === "waiting-for-window";
    const button = document.createElement("button");
    button.type = "button";
    button.textContent = paused ? "Resume" : "Pause";
    const label = (paused ? "Resume sending to " : "Pause sending to ") + d.name;
    button.setAttribute("aria-label", label);
    button.dataset.testid = (paused ? "resume-" : "pause-") + d.name;
    button.addEventListener("click", () => pauseResume(d.name, !paused));
    actions.appendChild(button);
    const cancel = document.createElement("button");
    cancel.type = "button";
    cancel.textContent = "Cancel waiting";
    cancel.setAttribute("aria-label", "Cancel the jobs waiting for " + d.name);
    cancel.dataset.testid = "cancel-" + d.name;
    cancel.addEventListener("click", () => cancelWaiting(d.name));
    actions.appendChild(cancel);
    return row;
  }

  // Jobs still queued or delayed for a destination go to parking as "cancelled":
  // a requeue of that reason class undoes it.
  async function cancelWaiting(name) {
    const text = "Cancel every job still waiting (queued or delayed) for " + name +
      "? They are parked as \"cancelled\"; requeue them to undo.";
    if (!(await confirmAction(text, "Cancel waiting jobs"))) return;
    try {
      const result = await withProgress(api("POST", "/api/jobs/cancel", { destination: name }));
      const text2 = "Cancelled " + result.cancelled + " waiting job(s) for " + name + ".";
      if (result.failed) {
        showError(text2 + " " + result.failed + " could not be handled and still wait.");
      } else {
        showNotice(text2);
      }
    } catch (err) {
      showError(explain(err, "Cancelling the jobs waiting for " + name));
    }
    refreshQueues();
    loadParked();
    loadAudit(true);
  }

  function stateText(d) {
    if (d.state === "waiting-for-window") return "waiting for window";
    if (d.window_open_until && d.state === "up") return "up (resumed outside window)";
    return d.state || "unknown";
  }

  async function pauseResume(name, pause) {
    const verb = pause ? "pause" : "resume";
    try {
      const path = "/api/destinations/" + encodeURIComponent(name) + "/" + verb;
      const result = await api("POST", path, {});
      showNotice(result && result.paused
        ? name + " is paused: nothing is sent to it until it is resumed."
        : result && result.window_open_until
          ? name + " is sending outside its send window, until the window opens at "
            + new Date(result.window_open_until * 1000).toLocaleString() + "."
          : name + " is sending again.");
    } catch (err) {
      showError(explain(err, (pause ? "Pausing " : "Resuming ") + name));
    }
    refreshQueues();
    loadAudit(true);
  }

  function filterDestination(name) {
    clearFilterFields();
    $("f-destination").value = name;
    applyFilters();
  }

  // -- bulk operations in progress ---------------------------------------------------------

  async function showOperation() {
    let op = null;
    try {
      op = await api("GET", "/api/operations/current");
    } catch (err) {
      op = null;  // an older API without progress: just show nothing
    }
    const panel = $("operation");
    if (!op || !op.running) {
      panel.hidden = true;
      return;
    }
    panel.hidden = false;
    const progress = $("op-progress");
    if (op.total > 0) {
      progress.max = op.total;
      progress.value = op.done;
    } else {
      progress.removeAttribute("value");  // indeterminate
    }
    const pct = op.total > 0 ? " (" + Math.floor(100 * op.done / op.total) + " %)" : "";
    const action = op.action || "operation";
    $("op-text").textContent = action + ": " + op.done + " of " + op.total + pct;
  }

  async function withProgress(promise) {
    const timer = setInterval(showOperation, PROGRESS_EVERY_MS);
    try {
      return await promise;
    } finally {
      clearInterval(timer);
      $("operation").hidden = true;
    }
  }

  // -- parked items ------------------------------------------------------------------------

  function readFilters() {
    const filters = {};
    for (const key of ["destination", "reason", "study", "patient", "orthanc_job"]) {
      const value = $("f-" + key).value.trim();
      if (value) filters[key] = value;
    }
    const since = timeFilter($("f-since").value, "Parked since");
    const until = timeFilter($("f-until").value, "Parked before");
    if (since) filters.since = since;
    if (until) filters.until = until;
    return filters;
  }

  function query(filters, extra) {
    const params = new URLSearchParams();
    for (const key of FILTERS) if (filters[key]) params.set(key, filters[key]);
    for (const [key, value] of Object.entries(extra || {})) params.set(key, value);
    return params.toString();
  }

  function applyFilters(event) {
    if (event) event.preventDefault();
    try {
      state.filters = readFilters();
    } catch (err) {
      showError(err.message);
      return;
    }
    state.cursors = [];
    state.cursor = null;
    state.selected.clear();
    loadParked();
  }

  function clearFilterFields() {
    for (const key of FILTERS) $("f-" + key).value = "";
  }

  async function loadParked() {
    const extra = { limit: String(PAGE_SIZE) };
    if (state.cursor) extra.cursor = state.cursor;
    const current = ask("parked");
    let data;
    try {
      data = await api("GET", "/api/parked?" + query(state.filters, extra));
    } catch (err) {
      if (current()) showError(explain(err, "Listing parked items"));
      return;
    }
    if (!current()) return;
    state.items = data.items || [];
    state.total = data.total || 0;
    state.nextCursor = data.next_cursor || null;
    renderParked();
  }

  function renderParked() {
    const body = $("parked-body");
    body.replaceChildren();
    const reasons = new Set();
    for (const item of state.items) {
      body.appendChild(parkedRow(item));
      if (item.reason_class) reasons.add(item.reason_class);
    }
    const list = $("reason-classes");
    for (const option of list.options) reasons.delete(option.value);
    for (const reason of reasons) list.appendChild(new Option(reason, reason));
    const first = state.cursors.length * PAGE_SIZE;
    $("parked-summary").textContent = state.total === 0
      ? "No parked items match."
      : state.total + " parked item(s) match" + (state.items.length
        ? "; showing " + (first + 1) + "–" + (first + state.items.length) + ", oldest first."
        : ".");
    $("next-page").disabled = !state.nextCursor;
    $("first-page").disabled = state.cursors.length === 0;
    updateSelection();
  }

  function parkedRow(item) {
    const row = document.createElement("tr");
    row.dataset.testid = "parked-row";
    row.dataset.id = item.id;
    const box = document.createElement("input");
    box.type = "checkbox";
    box.dataset.testid = "select-item";
    box.checked = state.selected.has(item.id);
    box.setAttribute("aria-label", "Select parked item " + (item.sop_instance_uid || item.id));
    box.addEventListener("change", () => {
      if (box.checked) state.selected.add(item.id); else state.selected.delete(item.id);
      updateSelection();
    });
    if (canAct()) cell(row, "").appendChild(box);
    cell(row, formatTime(item.parked_at), "nowrap");
    cell(row, item.destination || "");
    const reason = cell(row, "", "reason");
    const cls = document.createElement("strong");
    cls.textContent = item.reason_class || "unknown";
    reason.append(cls, " ", item.reason || "");
    if (item.orthanc_job) reason.appendChild(capturedFrom(item));
    cell(row, item.study_instance_uid || "–", "uid");
    cell(row, item.patient_id || "–");
    cell(row, item.patient_name || "–").dataset.testid = "patient-name";
    cell(row, item.modality || "–");
    cell(row, String(item.attempts ?? "–"), "num");
    cell(row, item.orthanc_id || "–", "uid");
    return row;
  }

  // A job captured from Orthanc's own failed send: which Orthanc job, when it failed, why,
  // how many instances it had; a click shows every parked item of that job (to act on all).
  function capturedFrom(item) {
    const line = document.createElement("div");
    line.className = "captured";
    line.dataset.testid = "captured-from";
    const show = document.createElement("button");
    show.type = "button";
    show.className = "link";
    show.textContent = item.orthanc_job;
    show.title = "Show every parked item of this Orthanc job";
    show.addEventListener("click", () => {
      clearFilterFields();
      $("f-orthanc_job").value = item.orthanc_job;
      applyFilters();
    });
    const instances = item.orthanc_job_instances ? ", " + item.orthanc_job_instances + " instance(s)" : "";
    line.append(
      "Orthanc's own send failed: job ", show, instances,
      item.orthanc_job_failed_at ? ", at " + formatTime(item.orthanc_job_failed_at) : "",
      item.orthanc_job_error ? ": " + item.orthanc_job_error : "",
    );
    return line;
  }

  function updateSelection() {
    const n = state.selected.size;
    $("requeue-selected").disabled = n === 0 || state.busy;
    $("delete-selected").disabled = n === 0 || state.busy;
    $("requeue-selected").textContent = n ? "Requeue " + n + " selected" : "Requeue selected";
    $("delete-selected").textContent = n ? "Delete " + n + " selected" : "Delete selected";
    $("requeue-matching").disabled = state.busy;
    $("delete-matching").disabled = state.busy;
    const onPage = state.items.map((i) => i.id);
    const checked = onPage.filter((id) => state.selected.has(id)).length;
    const all = $("select-page");
    all.checked = onPage.length > 0 && checked === onPage.length;
    all.indeterminate = checked > 0 && checked < onPage.length;
  }

  function selectPage() {
    const on = $("select-page").checked;
    for (const item of state.items) {
      if (on) state.selected.add(item.id); else state.selected.delete(item.id);
    }
    for (const box of $("parked-body").querySelectorAll("input[type=checkbox]")) box.checked = on;
    updateSelection();
  }

  function describeFilters(filters) {
    const parts = FILTERS.filter((k) => filters[k]).map((k) => {
      const value = k === "since" || k === "until" ? $("f-" + k).value.trim() : filters[k];
      return (k === "orthanc_job" ? "Orthanc job" : k) + " " + value;
    });
    return parts.length ? "matching " + parts.join(", ") : "(no filter: every destination)";
  }

  function confirmAction(text, yes) {
    const dialog = $("confirm");
    $("confirm-text").textContent = text;
    $("confirm-yes").textContent = yes;
    return new Promise((resolve) => {
      const done = (answer) => {
        $("confirm-yes").onclick = null;
        $("confirm-no").onclick = null;
        dialog.onclose = null;
        if (dialog.open) dialog.close();
        resolve(answer);
      };
      $("confirm-yes").onclick = () => done(true);
      $("confirm-no").onclick = () => done(false);
      dialog.onclose = () => done(false);  // Escape key
      dialog.showModal();
      $("confirm-no").focus();
    });
  }

  async function bulk(action, body, what) {
    state.busy = true;
    updateSelection();
    try {
      const result = await withProgress(api("POST", "/api/parked/" + action, body));
      const done = action === "requeue" ? result.requeued : result.deleted;
      let text = (action === "requeue" ? "Requeued " : "Deleted ") + done + " " + what + ".";
      if (body.to) text = "Requeued " + done + " " + what + " to " + body.to + ".";
      if (result.failed) {
        showError(text + " " + result.failed +
          " failed and stay parked; see the retry service's log.");
      } else {
        showNotice(text);
      }
      state.selected.clear();
    } catch (err) {
      showError(explain(err, action === "requeue" ? "Requeue" : "Delete"));
    } finally {
      state.busy = false;
      updateSelection();
    }
    await loadParked();
    refreshQueues();
    loadAudit(true);
  }

  function withTarget(body) {
    const to = $("requeue-to").value;
    if (to) body.to = to;
    return body;
  }

  function requeueSelected() {
    const ids = Array.from(state.selected);
    bulk("requeue", withTarget({ ids }), "parked item(s)");
  }

  async function deleteSelected() {
    const ids = Array.from(state.selected);
    const ok = await confirmAction("Delete " + ids.length + " selected parked item(s) for good? " +
      "They will not be sent.", "Delete " + ids.length);
    if (ok) bulk("delete", { ids }, "parked item(s)");
  }

  async function allMatching(action) {
    const filters = state.filters;
    const selector = Object.keys(filters).length ? { ...filters } : { all: true };
    const about = describeFilters(filters);
    const verb = action === "requeue" ? "Requeue" : "Delete";
    const to = $("requeue-to").value;
    let text = verb + " all " + state.total + " parked item(s) " + about + "?";
    text += action === "requeue"
      ? " They are sent again to " + (to || "their own destinations") + "."
      : " They are dropped for good and will not be sent.";
    if (!(await confirmAction(text, verb + " " + state.total))) return;
    bulk(action, action === "requeue" ? withTarget(selector) : selector, "parked item(s)");
  }

  function nextPage() {
    if (!state.nextCursor) return;
    state.cursors.push(state.cursor);
    state.cursor = state.nextCursor;
    loadParked();
  }

  function firstPage() {
    state.cursors = [];
    state.cursor = null;
    loadParked();
  }

  // -- send --------------------------------------------------------------------------------

  async function send(event) {
    event.preventDefault();
    const destination = $("send-destination").value;
    const resources = $("send-ids").value.split(/[\s,]+/).filter(Boolean);
    if (!destination || !resources.length) return;
    try {
      const result = await api("POST", "/api/send", { destination, resources });
      showNotice("Queued " + result.queued + " instance(s) for " + destination + ".");
      $("send-ids").value = "";
    } catch (err) {
      showError(explain(err, "Sending to " + destination));
    }
    loadAudit(true);
  }

  // -- audit log ---------------------------------------------------------------------------

  async function loadAudit(reset) {
    if (reset) state.auditCursor = null;
    const params = new URLSearchParams({ limit: String(AUDIT_PAGE) });
    if (state.auditCursor) params.set("cursor", state.auditCursor);
    const current = ask("audit");
    let data;
    try {
      data = await api("GET", "/api/audit?" + params);
    } catch (err) {
      $("audit-error").textContent = explain(err, "Reading the audit log");
      $("audit-error").hidden = false;
      return;
    }
    if (!current()) return;
    $("audit-error").hidden = true;
    const body = $("audit-body");
    if (reset) body.replaceChildren();
    for (const entry of data.items || []) {
      const row = document.createElement("tr");
      row.dataset.testid = "audit-row";
      cell(row, formatTime(entry.time), "nowrap");
      cell(row, entry.who || "–");
      cell(row, entry.action || "");
      cell(row, count(entry.count), "num");
      cell(row, entry.details ? JSON.stringify(entry.details) : "", "details");
      body.appendChild(row);
    }
    if (!body.children.length) {
      const row = document.createElement("tr");
      cell(row, "Nothing recorded yet.").colSpan = 5;
      body.appendChild(row);
    }
    state.auditCursor = data.next_cursor || null;
    $("audit-more").disabled = !state.auditCursor;
  }

  // -- start -------------------------------------------------------------------------------

  async function poll() {
    if (!document.hidden && state.who) await refreshQueues();
    setTimeout(poll, QUEUES_EVERY_MS);
  }

  function startViews() {
    if (state.started) {
      applyFilters();
      loadAudit(true);
      return;
    }
    state.started = true;
    applyFilters();
    loadAudit(true);
    poll();
  }

  function start() {
    $("login-form").addEventListener("submit", signIn);
    $("logout").addEventListener("click", signOut);
    $("filters").addEventListener("submit", applyFilters);
    $("clear-filters").addEventListener("click", () => { clearFilterFields(); applyFilters(); });
    $("select-page").addEventListener("change", selectPage);
    $("requeue-selected").addEventListener("click", requeueSelected);
    $("delete-selected").addEventListener("click", deleteSelected);
    $("requeue-matching").addEventListener("click", () => allMatching("requeue"));
    $("delete-matching").addEventListener("click", () => allMatching("delete"));
    $("next-page").addEventListener("click", nextPage);
    $("first-page").addEventListener("click", firstPage);
    $("send-form").addEventListener("submit", send);
    $("audit-refresh").addEventListener("click", () => loadAudit(true));
    $("audit-more").addEventListener("click", () => loadAudit(false));
    $("export-csv").addEventListener("click", downloadCsv);
    showSession();
    checkSession();  // a token kept in this tab, or anonymous access on loopback
  }

  document.addEventListener("DOMContentLoaded", start);
})();

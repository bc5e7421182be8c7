// The thread view: a group list, one group's timeline rebuilt from a snapshot and then kept
// current by the group's resumable events stream, and the actions the API offers on it.
//
// Rendering invariant: the timeline is a map seq -> event, applied from frames in rev order;
// `view.rev` is the rev of the last frame applied, so a stream reopened with
// `afterRev=view.rev` continues exactly where the previous one stopped (nothing twice, nothing
// missed), without reloading the page or the snapshot.
//
// The token (TCP only) lives in localStorage and travels only in the Authorization header;
// text from the server is always set with textContent, never parsed as HTML.

const TOKEN_KEY = "coven-group.token";
/// Reconnect delays: the first retry comes quickly, later ones back off to this ceiling.
const RETRY_FIRST_MS = 250;
const RETRY_MAX_MS = 4000;
/// The server sends a heartbeat every 15 s on a quiet stream; a stream silent for this long is
/// taken as dead (a half-open connection) and reopened.
const STREAM_SILENCE_MS = 45000;
/// How often the group list is re-read, for groups changed by other clients.
const GROUP_LIST_REFRESH_MS = 30000;

const $ = (id) => document.getElementById(id);

const state = {
  token: localStorage.getItem(TOKEN_KEY),
  familiars: new Map(), // id -> familiar, in the server's order
  groups: [],
  view: null, // the open group, see openGroup
};

class ApiError extends Error {
  constructor(status, code, message) {
    super(message);
    this.status = status;
    this.code = code;
  }
}

// ---- requests ----

function headers(extra = {}) {
  const result = { ...extra };
  if (state.token) result.Authorization = `Bearer ${state.token}`;
  return result;
}

async function errorFrom(response) {
  let code = "error";
  let message = `the server answered ${response.status}`;
  try {
    const body = await response.json();
    if (body && body.error) {
      code = body.error.code || code;
      message = body.error.message || message;
    }
  } catch {
    // Not JSON: keep the status line.
  }
  return new ApiError(response.status, code, message);
}

/// One API call: the parsed JSON (null for 204), or an ApiError carrying the server's message.
/// A 401 asks for a token.
async function api(method, path, body) {
  const init = { method, headers: headers() };
  if (body !== undefined) {
    init.headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(body);
  }
  const response = await fetch(path, init);
  if (!response.ok) {
    const error = await errorFrom(response);
    if (response.status === 401) askForToken(error.message);
    throw error;
  }
  return response.status === 204 ? null : response.json();
}

/// Server-sent events from a fetch response: yields { id, data } per frame; comments (the
/// heartbeat) yield { comment: true } so a caller can tell the stream is alive.
async function* sseFrames(response) {
  const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = "";
  let id = null;
  let data = [];
  try {
    for (;;) {
      const { value, done } = await reader.read();
      if (done) return;
      buffer += value;
      for (;;) {
        const end = buffer.search(/\r\n|\r|\n/);
        if (end < 0) break;
        const line = buffer.slice(0, end);
        buffer = buffer.slice(buffer[end] === "\r" && buffer[end + 1] === "\n" ? end + 2 : end + 1);
        if (line === "") {
          if (data.length > 0) yield { id, data: data.join("\n") };
          id = null;
          data = [];
        } else if (line.startsWith(":")) {
          yield { comment: true };
        } else {
          const colon = line.indexOf(":");
          const field = colon < 0 ? line : line.slice(0, colon);
          let value = colon < 0 ? "" : line.slice(colon + 1);
          if (value.startsWith(" ")) value = value.slice(1);
          if (field === "data") data.push(value);
          else if (field === "id") id = value;
        }
      }
    }
  } finally {
    reader.cancel().catch(() => {});
  }
}

// ---- small view helpers ----

function element(tag, className, text) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text !== undefined) node.textContent = text;
  return node;
}

function showError(message) {
  $("error-text").textContent = message;
  $("error").hidden = false;
}

function clearError() {
  $("error").hidden = true;
  $("error-text").textContent = "";
}

/// Runs an action, showing the server's refusal (or a network failure) in the error banner.
async function attempt(action) {
  clearError();
  try {
    return await action();
  } catch (error) {
    if (!(error instanceof ApiError && error.status === 401)) {
      showError(error instanceof ApiError ? error.message : `Request failed: ${error.message}`);
    }
    return undefined;
  }
}

function familiarName(id) {
  const familiar = state.familiars.get(id);
  return familiar ? familiar.displayName : id;
}

/// A hue per familiar: spread by the familiar's place among the registered ones (stable while
/// the registry is), or from its id when it is not registered any more.
function familiarHue(id) {
  const index = [...state.familiars.keys()].indexOf(id);
  if (index >= 0) return (index * 137.508 + 200) % 360;
  let hash = 0;
  for (const char of id) hash = (hash * 31 + char.codePointAt(0)) >>> 0;
  return hash % 360;
}

function paint(node, familiarId) {
  node.style.setProperty("--hue", String(Math.round(familiarHue(familiarId))));
}

function timeLabel(ms) {
  const date = new Date(ms);
  const today = new Date();
  return date.toDateString() === today.toDateString()
    ? date.toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" })
    : date.toLocaleDateString();
}

// ---- token ----

function askForToken(message) {
  closeView();
  $("app").hidden = true;
  $("login").hidden = false;
  $("forget-token").hidden = true;
  $("login-error").textContent = state.token ? message : "";
  $("login-token").focus();
}

function takeTokenFromFragment() {
  const match = /(?:^#|&)token=([^&]+)/.exec(location.hash);
  if (!match) return;
  state.token = decodeURIComponent(match[1]);
  localStorage.setItem(TOKEN_KEY, state.token);
  // The fragment never reached the server; drop it from the address bar and history too.
  history.replaceState(null, "", location.pathname + location.search);
}

// ---- groups ----

async function loadFamiliars() {
  const familiars = await api("GET", "/api/familiars");
  state.familiars = new Map(familiars.map((f) => [f.id, f]));
}

async function loadGroups() {
  state.groups = await api("GET", "/api/groups");
  renderGroups();
}

function renderGroups() {
  // The server lists most recently active first; local changes keep that order.
  state.groups.sort((a, b) => b.updatedAt - a.updatedAt);
  const list = $("groups");
  list.replaceChildren();
  for (const group of state.groups) {
    const item = element("li");
    const button = element("button", "group");
    button.type = "button";
    button.dataset.groupId = group.id;
    if (state.view && state.view.id === group.id) button.setAttribute("aria-current", "true");
    button.append(
      element("span", "group-title", group.title),
      element("span", "group-members", group.memberFamiliarIds.map(familiarName).join(", ")),
      element("span", "group-time", timeLabel(group.updatedAt)),
    );
    button.addEventListener("click", () => navigate(group.id));
    item.append(button);
    list.append(item);
  }
}

function rememberGroup(group) {
  const index = state.groups.findIndex((g) => g.id === group.id);
  if (index >= 0) state.groups[index] = group;
  else state.groups.push(group);
  renderGroups();
}

/// Moves the group up the list when one of its events is newer than the list knows.
function touchGroup(groupId, ms) {
  const group = state.groups.find((g) => g.id === groupId);
  if (group && ms > group.updatedAt) {
    group.updatedAt = ms;
    renderGroups();
  }
}

function renderCreateForm() {
  const box = $("create-familiars");
  box.replaceChildren();
  for (const familiar of state.familiars.values()) {
    const label = element("label", "check");
    const input = element("input");
    input.type = "checkbox";
    input.value = familiar.id;
    const swatch = element("span", "swatch");
    paint(swatch, familiar.id);
    label.append(input, swatch, document.createTextNode(` ${familiar.displayName}`));
    box.append(label);
  }
}

async function createGroup(event) {
  event.preventDefault();
  const members = [...$("create-familiars").querySelectorAll("input:checked")].map((i) => i.value);
  const title = $("create-title").value.trim();
  const body = { memberFamiliarIds: members };
  if (title) body.title = title;
  const group = await attempt(() => api("POST", "/api/groups", body));
  if (!group) return;
  $("create-form").hidden = true;
  $("create-form").reset();
  rememberGroup(group);
  navigate(group.id);
}

// ---- the open group ----

function navigate(groupId) {
  if (location.hash !== `#group=${groupId}`) history.pushState(null, "", `#group=${groupId}`);
  openGroup(groupId);
}

function closeView() {
  if (state.view) {
    state.view.closed = true;
    state.view.abort.abort();
  }
  state.view = null;
  $("connection").hidden = true;
}

async function openGroup(groupId) {
  closeView();
  clearError();
  const view = {
    id: groupId,
    closed: false,
    abort: new AbortController(),
    group: null,
    events: new Map(), // seq -> event
    nodes: new Map(), // seq -> <li>
    sessions: new Map(), // session id -> session
    rev: 0,
    sending: false,
    // The turn this page started, until its user event shows in the timeline.
    startedTurn: null,
  };
  state.view = view;
  $("events").replaceChildren();
  $("thread").hidden = true;
  $("empty").hidden = true;
  renderGroups();
  let timeline;
  try {
    timeline = await api("GET", `/api/groups/${encodeURIComponent(groupId)}`);
    // Read after the timeline: the stream's replay from timeline.rev brings both up to date.
    const sessions = await api("GET", `/api/groups/${encodeURIComponent(groupId)}/sessions`);
    for (const session of sessions) view.sessions.set(session.id, session);
  } catch (error) {
    if (view.closed) return;
    if (!(error instanceof ApiError && error.status === 401)) showError(error.message);
    $("empty").hidden = false;
    return;
  }
  if (view.closed) return;
  view.group = timeline.group;
  view.rev = timeline.rev;
  for (const event of timeline.events) upsertEvent(view, event);
  $("thread").hidden = false;
  renderHead(view);
  renderTurnState(view);
  follow(view);
}

function renderHead(view) {
  const group = view.group;
  $("thread-title").textContent = group.title;
  const members = $("members");
  members.replaceChildren();
  for (const id of group.memberFamiliarIds) {
    const chip = element("li", "member");
    chip.dataset.familiarId = id;
    paint(chip, id);
    const remove = element("button", "remove", "×");
    remove.type = "button";
    remove.title = `Remove ${familiarName(id)}`;
    remove.setAttribute("aria-label", `Remove ${familiarName(id)}`);
    remove.addEventListener("click", () => changeGroup({ removeMember: id }));
    chip.append(element("span", "member-name", familiarName(id)), remove);
    members.append(chip);
  }
  const select = $("add-member");
  select.replaceChildren();
  for (const familiar of state.familiars.values()) {
    if (group.memberFamiliarIds.includes(familiar.id)) continue;
    const option = element("option", "", familiar.displayName);
    option.value = familiar.id;
    select.append(option);
  }
  $("add-member-form").hidden = select.options.length === 0;
  rememberGroup(group);
}

/// True while one of the group's current members is replying.
function turnRunning(view) {
  const current = new Set(view.group.memberSessionIds);
  for (const session of view.sessions.values()) {
    if (current.has(session.id) && session.status === "running") return true;
  }
  return false;
}

function renderTurnState(view) {
  if (view.startedTurn && [...view.events.values()].some((e) => e.turnId === view.startedTurn)) {
    view.startedTurn = null;
  }
  const running = turnRunning(view);
  const locked = running || view.sending || view.startedTurn !== null;
  $("send-text").disabled = locked;
  $("send").disabled = locked;
  $("cancel-turn").hidden = !running;
  $("thread").dataset.turn = running ? "running" : "idle";
}

function eventState(event) {
  if (event.streaming) return "streaming";
  if (event.error) return event.error.kind === "cancelled" ? "cancelled" : "error";
  return "done";
}

function renderEvent(event, node) {
  node.className = `event ${event.role}`;
  node.dataset.seq = String(event.seq);
  node.dataset.state = eventState(event);
  node.replaceChildren();
  if (event.role === "system") {
    node.append(element("span", "notice", event.text));
    if (event.notice) node.dataset.notice = event.notice.kind;
    return;
  }
  const head = element("div", "meta");
  if (event.role === "familiar") {
    node.dataset.familiarId = event.familiarId;
    paint(node, event.familiarId);
    head.append(element("span", "name", familiarName(event.familiarId)));
  } else {
    head.append(element("span", "name", event.author || "You"));
  }
  head.append(element("span", "seq", `#${event.seq}`), element("span", "time", timeLabel(event.ts)));
  node.append(head, element("div", "text", event.text));
  if (event.streaming) node.append(element("span", "typing", "…"));
  if (event.error) {
    const marker = element("div", "marker");
    marker.textContent =
      event.error.kind === "cancelled"
        ? "cancelled"
        : `${event.error.kind === "timedOut" ? "timed out" : event.error.kind}: ${event.error.message}`;
    node.append(marker);
  }
}

/// Places a new or changed event at its seq; the list stays ordered by seq.
function upsertEvent(view, event) {
  view.events.set(event.seq, event);
  let node = view.nodes.get(event.seq);
  if (!node) {
    node = element("li");
    view.nodes.set(event.seq, node);
    const list = $("events");
    let before = null;
    for (const other of list.children) {
      if (Number(other.dataset.seq) > event.seq) {
        before = other;
        break;
      }
    }
    list.insertBefore(node, before);
  }
  renderEvent(event, node);
  node.scrollIntoView({ block: "nearest" });
}

function appendDelta(view, frame) {
  const event = view.events.get(frame.seq);
  if (!event) return false;
  event.text += frame.text;
  event.rev = frame.rev;
  const node = view.nodes.get(frame.seq);
  node.querySelector(".text").textContent = event.text;
  node.scrollIntoView({ block: "nearest" });
  return true;
}

/// Applies one change frame. False when the view cannot follow it and must be rebuilt.
function applyFrame(view, frame) {
  switch (frame.kind) {
    case "groupCreated":
    case "groupChanged":
      view.group = frame.group;
      renderHead(view);
      break;
    case "eventAppended":
    case "replyFinished":
      upsertEvent(view, frame.event);
      touchGroup(view.id, frame.event.ts);
      break;
    case "replyDelta":
      if (!appendDelta(view, frame)) return false;
      break;
    case "sessionChanged":
      view.sessions.set(frame.session.id, frame.session);
      break;
    case "sessionSacrificed":
      view.sessions.delete(frame.sessionId);
      break;
    case "groupDeleted":
      view.deleted = true;
      break;
    default:
      break;
  }
  return true;
}

function setConnection(view, connection) {
  if (view.closed) return;
  const node = $("connection");
  node.dataset.state = connection;
  node.hidden = connection === "live";
  node.textContent =
    connection === "reconnecting"
      ? `Reconnecting… (will resume after rev ${view.rev})`
      : "Connecting…";
}

/// Resolves after `ms`, or at once when `signal` aborts.
function waitOrAbort(ms, signal) {
  return new Promise((resolve) => {
    const done = () => {
      clearTimeout(timer);
      signal.removeEventListener("abort", done);
      resolve();
    };
    const timer = setTimeout(done, ms);
    signal.addEventListener("abort", done);
  });
}

/// Follows the group's events stream for as long as the view is open, reopening it after
/// `view.rev` whenever it ends or fails.
async function follow(view) {
  let delay = RETRY_FIRST_MS;
  setConnection(view, "connecting");
  while (!view.closed) {
    const attemptAbort = new AbortController();
    const onViewClosed = () => attemptAbort.abort();
    view.abort.signal.addEventListener("abort", onViewClosed);
    let watchdog = null;
    const feed = () => {
      clearTimeout(watchdog);
      watchdog = setTimeout(() => attemptAbort.abort(), STREAM_SILENCE_MS);
    };
    try {
      const path = `/api/groups/${encodeURIComponent(view.id)}/events?afterRev=${view.rev}`;
      const response = await fetch(path, {
        headers: headers({ Accept: "text/event-stream" }),
        signal: attemptAbort.signal,
        cache: "no-store",
      });
      if (response.status === 401) {
        askForToken((await errorFrom(response)).message);
        return;
      }
      if (response.status === 404) {
        groupGone(view, (await errorFrom(response)).message);
        return;
      }
      if (!response.ok) throw await errorFrom(response);
      setConnection(view, "live");
      delay = RETRY_FIRST_MS;
      feed();
      for await (const frame of sseFrames(response)) {
        if (view.closed) return;
        feed();
        if (frame.comment) continue;
        const change = JSON.parse(frame.data);
        if (change.kind === "error") throw new ApiError(0, change.error.code, change.error.message);
        const rev = Number(frame.id);
        if (!(rev > view.rev)) continue; // Already applied (never expected: the stream resumes after view.rev).
        if (!applyFrame(view, change)) {
          // A delta for an event this view never saw: start over from a snapshot.
          openGroup(view.id);
          return;
        }
        view.rev = rev;
        renderTurnState(view);
        if (view.deleted) {
          groupGone(view, "This group was deleted.");
          return;
        }
      }
    } catch {
      // The stream broke (network, server restart, a dead connection): reconnect below.
    } finally {
      clearTimeout(watchdog);
      view.abort.signal.removeEventListener("abort", onViewClosed);
    }
    if (view.closed) return;
    setConnection(view, "reconnecting");
    await waitOrAbort(delay, view.abort.signal);
    delay = Math.min(delay * 2, RETRY_MAX_MS);
  }
}

function groupGone(view, message) {
  state.groups = state.groups.filter((g) => g.id !== view.id);
  closeView();
  renderGroups();
  $("thread").hidden = true;
  $("empty").hidden = false;
  showError(message);
}

async function changeGroup(change) {
  const view = state.view;
  if (!view) return;
  const group = await attempt(() => api("PATCH", `/api/groups/${encodeURIComponent(view.id)}`, change));
  if (group && state.view === view) {
    // The stream brings the same change; rendering it now keeps the page responsive.
    view.group = group;
    renderHead(view);
    renderTurnState(view);
  }
  return group;
}

async function send(event) {
  event.preventDefault();
  const view = state.view;
  const text = $("send-text").value;
  if (!view || !text.trim() || view.sending) return;
  view.sending = true;
  renderTurnState(view);
  await attempt(async () => {
    const response = await fetch(`/api/groups/${encodeURIComponent(view.id)}/send`, {
      method: "POST",
      headers: headers({ "Content-Type": "application/json", Accept: "text/event-stream" }),
      body: JSON.stringify({ text }),
    });
    if (!response.ok) {
      const error = await errorFrom(response);
      if (response.status === 401) askForToken(error.message);
      throw error;
    }
    $("send-text").value = "";
    // The turn is committed once the response starts; its first frame names it. The rest is
    // rendered from the group's events stream, so this stream is closed after that frame.
    for await (const frame of sseFrames(response)) {
      if (frame.comment) continue;
      const first = JSON.parse(frame.data);
      if (first.turnId) view.startedTurn = first.turnId;
      break;
    }
  });
  view.sending = false;
  if (state.view === view) renderTurnState(view);
}

async function cancelTurn() {
  const view = state.view;
  if (!view) return;
  await attempt(() => api("POST", `/api/groups/${encodeURIComponent(view.id)}/cancel`));
}

// ---- start ----

function routeFromHash() {
  const match = /^#group=([^&]+)/.exec(location.hash);
  if (match) {
    openGroup(decodeURIComponent(match[1]));
  } else {
    closeView();
    renderGroups();
    $("thread").hidden = true;
    $("empty").hidden = false;
  }
}

async function start() {
  takeTokenFromFragment();
  try {
    await loadFamiliars();
    await loadGroups();
  } catch (error) {
    if (!(error instanceof ApiError && error.status === 401)) showError(error.message);
    return;
  }
  $("login").hidden = true;
  $("app").hidden = false;
  $("forget-token").hidden = !state.token;
  renderCreateForm();
  routeFromHash();
}

function wire() {
  $("login-form").addEventListener("submit", (event) => {
    event.preventDefault();
    state.token = $("login-token").value.trim();
    localStorage.setItem(TOKEN_KEY, state.token);
    $("login-form").reset();
    start();
  });
  $("forget-token").addEventListener("click", () => {
    localStorage.removeItem(TOKEN_KEY);
    state.token = null;
    askForToken("");
  });
  $("error-close").addEventListener("click", clearError);
  $("new-group").addEventListener("click", () => {
    $("create-form").hidden = !$("create-form").hidden;
  });
  $("create-cancel").addEventListener("click", () => {
    $("create-form").hidden = true;
  });
  $("create-form").addEventListener("submit", createGroup);
  $("rename").addEventListener("click", () => {
    if (!state.view) return;
    $("rename-title").value = state.view.group.title;
    $("rename-form").hidden = false;
    $("rename").hidden = true;
    $("rename-title").focus();
  });
  const closeRename = () => {
    $("rename-form").hidden = true;
    $("rename").hidden = false;
  };
  $("rename-cancel").addEventListener("click", closeRename);
  $("rename-form").addEventListener("submit", async (event) => {
    event.preventDefault();
    if (await changeGroup({ title: $("rename-title").value })) closeRename();
  });
  $("add-member-form").addEventListener("submit", (event) => {
    event.preventDefault();
    const familiar = $("add-member").value;
    if (familiar) changeGroup({ addMember: familiar });
  });
  $("send-form").addEventListener("submit", send);
  $("send-text").addEventListener("keydown", (event) => {
    if (event.key === "Enter" && !event.shiftKey) {
      event.preventDefault();
      $("send-form").requestSubmit();
    }
  });
  $("cancel-turn").addEventListener("click", cancelTurn);
  window.addEventListener("popstate", routeFromHash);
  // Other clients' activity reaches the list on focus and every little while.
  const refreshGroups = () => {
    if (!$("app").hidden && document.visibilityState === "visible") loadGroups().catch(() => {});
  };
  window.addEventListener("focus", refreshGroups);
  setInterval(refreshGroups, GROUP_LIST_REFRESH_MS);
}

wire();
start();

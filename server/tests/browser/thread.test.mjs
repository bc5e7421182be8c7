// The thread view end to end: token, create, send with live replies, reload mid-turn, cancel,
// a failed reply, rename and membership, a refused action, and a dropped stream resumed
// without reloading. The tests run in order on one page and one growing store.

import { after, afterEach, before, test } from "node:test";
import assert from "node:assert/strict";
import {
  TOKEN,
  WAIT_MS,
  api,
  closeControl,
  control,
  launch,
  renderedThread,
  startProxy,
  waitForThread,
} from "./harness.mjs";

const NAMES = { morgana: "Morgana", merlin: "Merlin", nimue: "Nimue", vivian: "Vivian" };

let browser;
let page;
let proxy;
let groupId;
const requestedUrls = [];

before(async () => {
  proxy = await startProxy();
  browser = await launch();
  const context = await browser.newContext({ viewport: { width: 980, height: 640 } });
  page = await context.newPage();
  page.setDefaultTimeout(WAIT_MS);
  page.on("request", (request) => requestedUrls.push(request.url()));
});

after(async () => {
  await browser?.close();
  await proxy?.close();
  closeControl();
});

// A test that failed while replies were held must not hold up the next one.
afterEach(() => control("release"));

/// The turn's familiar replies, those with seq after `afterSeq`.
const repliesAfter = (afterSeq) => (thread) =>
  thread.filter((event) => event.role === "familiar" && event.seq > afterSeq);

/// What a held reply has streamed when it stops halfway (see the harness in browser.rs).
function heldText(name, message) {
  const words = `${name} hears \u201c${message}\u201d and answers: the circle holds while the candles burn.`.split(" ");
  return `${words.slice(0, Math.floor(words.length / 2)).join(" ")} `;
}

/// Sends a message while replies are held and waits until all three stopped halfway.
async function sendHeld(message) {
  const before = lastSeq(await renderedThread(page));
  await control("hold");
  await sendFromPage(message);
  const thread = await waitForThread(page, "three replies streaming, held halfway", (thread) => {
    const replies = repliesAfter(before)(thread);
    return (
      replies.length === 3 &&
      replies.every((r) => r.state === "streaming" && r.text === heldText(r.name, message))
    );
  });
  return { before, thread };
}

const lastSeq = (thread) => thread.reduce((max, event) => Math.max(max, event.seq), 0);

async function sendFromPage(text) {
  await page.fill("#send-text", text);
  await page.click("#send");
}

async function waitForIdle() {
  await page.waitForFunction(() => document.querySelector("#thread").dataset.turn === "idle");
  await page.waitForFunction(() => !document.querySelector("#send").disabled);
}

/// The page's thread equals the server's timeline: same seqs in order, roles, familiars (by
/// name) and texts.
async function assertMatchesServer() {
  const timeline = await api("GET", `/api/groups/${groupId}`);
  const thread = await renderedThread(page);
  assert.deepEqual(
    thread.map((event) => event.seq),
    timeline.events.map((event) => event.seq),
    "the page shows every event, in seq order",
  );
  timeline.events.forEach((event, index) => {
    const shown = thread[index];
    assert.equal(shown.role, event.role, `role of #${event.seq}`);
    assert.equal(shown.text, event.text, `text of #${event.seq}`);
    if (event.role === "familiar") {
      assert.equal(shown.familiarId, event.familiarId, `familiar of #${event.seq}`);
      assert.equal(shown.name, NAMES[event.familiarId], `name on #${event.seq}`);
    }
  });
  return timeline;
}

test("asks for a token, then creates a group from the registered familiars", async () => {
  await page.goto(proxy.url);
  await page.locator("#login").waitFor({ state: "visible" });
  await page.fill("#login-token", TOKEN);
  await page.click("#login-form button[type=submit]");
  await page.locator("#new-group").waitFor({ state: "visible" });

  await page.click("#new-group");
  const options = await page.$$eval("#create-familiars label", (labels) =>
    labels.map((label) => label.textContent.trim()),
  );
  assert.deepEqual(options, ["Merlin", "Morgana", "Nimue", "Vivian"], "the registered familiars");
  await page.fill("#create-title", "Round table");
  for (const name of ["Morgana", "Merlin", "Nimue"]) {
    await page.locator("#create-familiars label", { hasText: name }).locator("input").check();
  }
  await page.click("#create-form button[type=submit]");

  await page.waitForFunction(() => document.querySelector("#thread-title").textContent === "Round table");
  groupId = /#group=(.+)$/.exec(page.url())[1];
  const chips = await page.$$eval("#members .member-name", (nodes) => nodes.map((n) => n.textContent));
  // Members in the order they were chosen: the form lists the familiars by id.
  assert.deepEqual(chips, ["Merlin", "Morgana", "Nimue"]);
  const groups = await api("GET", "/api/groups");
  assert.equal(groups[0].id, groupId);
  assert.deepEqual(groups[0].memberFamiliarIds, ["merlin", "morgana", "nimue"]);
  const listed = await page.$$eval("#groups .group", (nodes) => nodes.map((n) => n.dataset.groupId));
  assert.equal(listed[0], groupId, "the new group leads the list");
});

test("a message's three replies stream in live, in seq order, under their familiars' names", async () => {
  // Each reply streams its first half and waits: the page shows them live.
  const { before, thread: streaming } = await sendHeld("Who keeps the grail tonight?");
  assert.equal(await page.isDisabled("#send"), true, "the send box is locked while the turn runs");
  assert.equal(await page.isDisabled("#send-text"), true);
  assert.equal(await page.isVisible("#cancel-turn"), true, "cancel is offered while the turn runs");
  const partial = new Map(repliesAfter(before)(streaming).map((r) => [r.seq, r.text]));

  await control("release");
  const finished = await waitForThread(page, "three finished replies", (thread) => {
    const replies = repliesAfter(before)(thread);
    return replies.length === 3 && replies.every((r) => r.state === "done");
  });
  await waitForIdle();
  assert.equal(await page.isVisible("#cancel-turn"), false);

  const user = finished.find((e) => e.seq === before + 1);
  assert.equal(user.role, "user");
  assert.equal(user.text, "Who keeps the grail tonight?");
  const replies = repliesAfter(before)(finished);
  assert.deepEqual(
    replies.map((r) => r.seq),
    [before + 2, before + 3, before + 4],
    "replies follow the message in seq order",
  );
  assert.deepEqual(replies.map((r) => r.familiarId).sort(), ["merlin", "morgana", "nimue"]);
  for (const reply of replies) {
    assert.equal(reply.name, NAMES[reply.familiarId]);
    // The harness names its familiar in the text: the bubble's attribution is the right one.
    assert.ok(reply.text.startsWith(`${reply.name} hears`), reply.text);
    assert.ok(reply.text.startsWith(partial.get(reply.seq)), "the reply grew from what streamed");
    assert.ok(reply.text.length > partial.get(reply.seq).length);
  }
  const colours = await page.$$eval("#events > li.familiar", (items) =>
    items.map((item) => getComputedStyle(item.querySelector(".name")).color),
  );
  assert.equal(new Set(colours).size, 3, "each familiar has its own colour");
  await assertMatchesServer();

  if (process.env.COVEN_GROUP_SCREENSHOT) {
    await page.screenshot({ path: process.env.COVEN_GROUP_SCREENSHOT });
  }
});

test("a reload mid-turn shows the same state and the turn goes on streaming", async () => {
  const { before, thread: streaming } = await sendHeld("Shall we light the candles?");

  await page.reload();
  const reloaded = await waitForThread(page, "the thread after the reload", (thread) =>
    repliesAfter(before)(thread).length === 3,
  );
  assert.deepEqual(reloaded, streaming, "the reloaded page shows the same thread, mid-turn");
  await page.waitForFunction(() => document.querySelector("#thread").dataset.turn === "running");
  assert.equal(await page.isDisabled("#send"), true, "still locked after the reload");

  await control("release");
  await waitForThread(page, "the replies finishing after the reload", (thread) =>
    repliesAfter(before)(thread).every((r) => r.state === "done"),
  );
  await waitForIdle();
  await assertMatchesServer();
});

test("cancel ends the running turn; each reply keeps its text and a cancelled marker", async () => {
  const { before, thread: streaming } = await sendHeld("Tell me everything, slowly.");
  await page.click("#cancel-turn");
  const cancelled = await waitForThread(page, "three cancelled replies", (thread) =>
    repliesAfter(before)(thread).every((r) => r.state === "cancelled"),
  );
  await waitForIdle();
  for (const reply of repliesAfter(before)(cancelled)) {
    assert.equal(reply.marker, "cancelled");
    const streamed = streaming.find((r) => r.seq === reply.seq).text;
    assert.equal(reply.text.trimEnd(), streamed.trimEnd(), "the partial text is kept");
  }
  const timeline = await assertMatchesServer();
  for (const event of timeline.events.filter((e) => e.seq > before + 1)) {
    assert.equal(event.error.kind, "cancelled");
  }
  // Later turns are not held.
  await control("release");
});

test("a failed reply shows its error marker with the harness's message", async () => {
  const before = lastSeq(await renderedThread(page));
  await sendFromPage("(fail) Read the bowl.");
  const thread = await waitForThread(page, "the turn's three replies ended", (thread) => {
    const replies = repliesAfter(before)(thread);
    return replies.length === 3 && replies.every((r) => r.state !== "streaming");
  });
  await waitForIdle();
  const nimue = repliesAfter(before)(thread).find((r) => r.familiarId === "nimue");
  assert.equal(nimue.state, "error");
  assert.equal(nimue.marker, "failed: the scrying bowl clouded over");
  for (const other of repliesAfter(before)(thread).filter((r) => r.familiarId !== "nimue")) {
    assert.equal(other.state, "done");
    assert.equal(other.marker, null);
  }
  await assertMatchesServer();
});

test("rename, add and remove a member: each shows its notice", async () => {
  await page.click("#rename");
  await page.fill("#rename-title", "Grail council");
  await page.click("#rename-form button[type=submit]");
  await page.waitForFunction(() => document.querySelector("#thread-title").textContent === "Grail council");
  await waitForThread(page, "the rename notice", (thread) =>
    thread.some((e) => e.role === "system" && e.text === "Group renamed from \u201cRound table\u201d to \u201cGrail council\u201d"),
  );
  await page.waitForFunction(
    (id) => document.querySelector(`#groups [data-group-id="${id}"] .group-title`)?.textContent === "Grail council",
    groupId,
  );

  await page.selectOption("#add-member", "vivian");
  await page.click("#add-member-form button[type=submit]");
  await waitForThread(page, "the member-added notice", (thread) =>
    thread.some((e) => e.role === "system" && e.text === "Vivian joined the group"),
  );
  await page.locator('#members [data-familiar-id="vivian"]').waitFor({ state: "visible" });

  await page.click('#members [aria-label="Remove Vivian"]');
  await waitForThread(page, "the member-removed notice", (thread) =>
    thread.some((e) => e.role === "system" && e.text === "Vivian left the group"),
  );
  await page.locator('#members [data-familiar-id="vivian"]').waitFor({ state: "detached" });
  const timeline = await assertMatchesServer();
  assert.deepEqual(timeline.group.memberFamiliarIds, ["merlin", "morgana", "nimue"]);
  assert.equal(timeline.group.title, "Grail council");
});

test("a refused action shows the server's error text and changes nothing", async () => {
  await page.click("#new-group");
  await page.fill("#create-title", "Hermitage");
  await page.locator("#create-familiars label", { hasText: "Merlin" }).locator("input").check();
  await page.click("#create-form button[type=submit]");
  await page.waitForFunction(() => document.querySelector("#thread-title").textContent === "Hermitage");
  const hermitage = /#group=(.+)$/.exec(page.url())[1];
  const before = await api("GET", `/api/groups/${hermitage}`);

  await page.click('#members [aria-label="Remove Merlin"]');
  await page.locator("#error").waitFor({ state: "visible" });
  assert.equal(
    await page.textContent("#error-text"),
    "conflict: a group keeps at least one member; delete the group instead",
    "the server's message",
  );
  assert.deepEqual(await api("GET", `/api/groups/${hermitage}`), before, "the store is unchanged");
  assert.equal(await page.locator('#members [data-familiar-id="merlin"]').count(), 1);

  // Back to the first group for the next test.
  await page.click(`#groups [data-group-id="${groupId}"]`);
  await page.waitForFunction(() => document.querySelector("#thread-title").textContent === "Grail council");
  assert.equal(await page.isVisible("#error"), false, "opening another group clears the error");
});

test("a dropped stream shows reconnecting, then resumes from the last rev without reloading", async () => {
  await page.locator("#connection").waitFor({ state: "hidden" });
  await page.evaluate(() => {
    window.sameDocument = true;
  });
  const before = lastSeq(await renderedThread(page));
  const { rev } = await api("GET", `/api/groups/${groupId}`);
  const requestsBefore = requestedUrls.length;

  proxy.cut();
  await page.locator('#connection[data-state="reconnecting"]').waitFor({ state: "visible" });
  assert.equal(await page.textContent("#connection"), `Reconnecting… (will resume after rev ${rev})`);

  // Changes the page cannot see while it is cut off: a rename and a whole turn.
  await api("PATCH", `/api/groups/${groupId}`, { title: "Dawn watch" });
  const turn = await api("POST", `/api/groups/${groupId}/send`, { text: "Who takes the dawn watch?" });
  assert.match(turn, /"kind":"done"/, "the turn ran to its end");

  proxy.restore();
  await page.locator("#connection").waitFor({ state: "hidden", timeout: WAIT_MS });
  const thread = await waitForThread(page, "the changes made while disconnected", (thread) =>
    repliesAfter(before)(thread).length === 3 &&
    repliesAfter(before)(thread).every((r) => r.state === "done"),
  );
  assert.ok(thread.some((e) => e.role === "system" && e.text.endsWith("to \u201cDawn watch\u201d")));
  await page.waitForFunction(() => document.querySelector("#thread-title").textContent === "Dawn watch");
  assert.equal(await page.evaluate(() => window.sameDocument), true, "the page was not reloaded");
  const reopened = requestedUrls.slice(requestsBefore).filter((url) => url.includes("/events?"));
  assert.ok(reopened.length > 0, "the stream was reopened");
  for (const url of reopened) {
    assert.ok(url.endsWith(`/api/groups/${groupId}/events?afterRev=${rev}`), `resumed after the last rev: ${url}`);
  }
  const fetched = requestedUrls.slice(requestsBefore).filter((url) => /\/api\/groups\/[^/]+$/.test(url));
  assert.deepEqual(fetched, [], "the timeline was not fetched again");
  const listed = await page.$$eval("#groups .group", (nodes) => nodes.map((n) => n.dataset.groupId));
  assert.equal(listed[0], groupId, "the group is back at the top of the list, most recently active");
  const seqs = thread.map((e) => e.seq);
  assert.equal(new Set(seqs).size, seqs.length, "no event is shown twice");
  await assertMatchesServer();
});

test("a token in the URL fragment is taken and dropped from the address", async () => {
  const context = await browser.newContext();
  const fresh = await context.newPage();
  await fresh.goto(`${proxy.url}#token=${encodeURIComponent(TOKEN)}`);
  await fresh.locator("#new-group").waitFor({ state: "visible", timeout: WAIT_MS });
  assert.equal(await fresh.evaluate(() => location.hash), "");
  assert.equal(await fresh.isVisible("#login"), false);
  await context.close();
});

test("the token never appeared in a URL the page requested", () => {
  assert.ok(requestedUrls.length > 0);
  for (const url of requestedUrls) assert.ok(!url.includes(TOKEN), url);
});

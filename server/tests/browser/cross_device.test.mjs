// The spec's item 6, end to end: "a group created on iOS is visible and continuable on web, and
// vice-versa". The server is the home; the phone (server/tests/browser/phone.py: the Python
// binding with a replica store of its own, syncing over HTTP) and this page both continue the
// same groups, and at each step the phone's timeline, the rendered thread and the server's
// GET /api/groups/{id} agree on every event's seq, role, familiar and text. Then the phone sends
// while the server is down (its echo pending), and the send applies once the server is back.

import { after, before, test } from "node:test";
import assert from "node:assert/strict";
import {
  SERVER,
  TOKEN,
  WAIT_MS,
  api,
  closeControl,
  control,
  launch,
  phone,
  renderedThread,
  waitForThread,
} from "./harness.mjs";

const MEMBERS = ["morgana", "merlin", "nimue"];

let browser;
let page;

before(async () => {
  browser = await launch();
  const context = await browser.newContext({ viewport: { width: 980, height: 640 } });
  page = await context.newPage();
  page.setDefaultTimeout(WAIT_MS);
  await page.goto(`${SERVER}/`);
  await page.locator("#login").waitFor({ state: "visible" });
  await page.fill("#login-token", TOKEN);
  await page.click("#login-form button[type=submit]");
  await page.locator("#new-group").waitFor({ state: "visible" });
});

after(async () => {
  await browser?.close();
  closeControl();
});

/// Opens the group from the page's list (reloaded, so a group made elsewhere is in it).
async function openFromList(groupId) {
  await page.reload();
  const entry = page.locator(`#groups .group[data-group-id="${groupId}"]`);
  await entry.waitFor({ state: "visible" });
  await entry.click();
  await page.waitForFunction((id) => location.hash === `#group=${id}`, groupId);
}

/// Waits until the page shows `count` events, every reply finished.
function waitForSettled(count) {
  return waitForThread(page, `${count} settled events`, (thread) =>
    thread.length === count && thread.every((event) => event.state !== "streaming"),
  );
}

async function sendFromPage(text) {
  await page.fill("#send-text", text);
  await page.click("#send");
}

/// The three views of one group agree on every event.
async function assertAllAgree(groupId, phoneView) {
  const server = await api("GET", `/api/groups/${groupId}`);
  const thread = await renderedThread(page);
  const key = (event) => [event.seq, event.role, event.familiarId ?? null, event.text];
  const expected = server.events.map(key);
  assert.deepEqual(thread.map(key), expected, "the page shows the server's timeline");
  const authored = (event) => [...key(event), event.author ?? null];
  assert.deepEqual(
    phoneView.events.map(authored),
    server.events.map(authored),
    "the phone's replica is the server's timeline, authors included",
  );
  server.events.forEach((event, index) => {
    if (event.role === "user") {
      assert.equal(thread[index].name, event.author ?? "You", `author shown on #${event.seq}`);
    }
  });
  assert.deepEqual(phoneView.pending, [], "no echo is left on the phone");
  return server;
}

const familiarReplies = (events, afterSeq) =>
  events.filter((event) => event.role === "familiar" && event.seq > afterSeq);

test("a group created on the phone is visible and continuable on the web", async () => {
  const { groupId } = await phone({ cmd: "create", title: "From the phone", members: MEMBERS });
  await phone({ cmd: "sync" });
  const sent = await phone({ cmd: "send", groupId, text: "Hello from the phone" });
  assert.equal(sent.pending.length, 1, "the phone shows its message at once, pending");
  assert.equal(sent.pending[0].text, "Hello from the phone");
  await phone({ cmd: "sync" });

  await openFromList(groupId);
  assert.equal(await page.textContent("#thread-title"), "From the phone");
  let thread = await waitForSettled(4);
  assert.equal(thread[0].text, "Hello from the phone");
  assert.deepEqual(
    familiarReplies(thread, 1).map((event) => event.seq),
    [2, 3, 4],
    "the three replies follow the phone's message in seq order",
  );

  await sendFromPage("Hello from the web");
  thread = await waitForSettled(8);
  assert.equal(thread[4].text, "Hello from the web");
  const phoneView = await phone({ cmd: "wait", groupId, events: 8 });
  await assertAllAgree(groupId, phoneView);
});

test("a group created on the web is visible and continuable on the phone", async () => {
  await page.click("#new-group");
  await page.fill("#create-title", "From the web");
  for (const name of ["Morgana", "Nimue"]) {
    await page.locator("#create-familiars label", { hasText: name }).locator("input").check();
  }
  await page.click("#create-form button[type=submit]");
  await page.waitForFunction(() => document.querySelector("#thread-title").textContent === "From the web");
  const groupId = /#group=(.+)$/.exec(page.url())[1];
  await sendFromPage("The web begins");
  await waitForSettled(3);

  let phoneView = await phone({ cmd: "wait", groupId, events: 3 });
  assert.equal(phoneView.title, "From the web");
  await phone({ cmd: "send", groupId, text: "The phone answers" });
  await phone({ cmd: "sync" });
  const thread = await waitForSettled(6);
  assert.equal(thread[3].text, "The phone answers");
  phoneView = await phone({ cmd: "wait", groupId, events: 6 });
  await assertAllAgree(groupId, phoneView);
});

test("a message sent while the server is down shows pending, then applies once", async () => {
  const { groups } = await phone({ cmd: "groups" });
  const groupId = groups.find((group) => group.title === "From the phone").id;
  await openFromList(groupId);
  await waitForSettled(8);

  await control("server stop");
  const offline = await phone({ cmd: "send", groupId, text: "Sent from a tunnel" });
  assert.deepEqual(
    offline.pending.map((echo) => [echo.text, echo.pending]),
    [["Sent from a tunnel", true]],
    "the echo shows, pending",
  );
  await assert.rejects(phone({ cmd: "sync" }), /Unavailable/, "the home cannot be reached");
  await page.waitForFunction(() => document.querySelector("#connection").dataset.state === "reconnecting");

  await control("server start");
  const phoneView = await phone({ cmd: "wait", groupId, events: 12 });
  const thread = await waitForSettled(12);
  assert.equal(thread[8].text, "Sent from a tunnel", "the page, reconnected, shows it");
  const server = await assertAllAgree(groupId, phoneView);
  assert.equal(
    server.events.filter((event) => event.text === "Sent from a tunnel").length,
    1,
    "applied exactly once",
  );
});

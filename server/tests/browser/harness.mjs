// What the browser scripts share: the server under test, Chromium, a proxy that can drop the
// page's connections, the control line to the test's harness, and readers of the page and of
// the API to compare.

import net from "node:net";
import readline from "node:readline";
import { chromium } from "playwright-core";

export const SERVER = process.env.COVEN_GROUP_TEST_URL;
export const TOKEN = process.env.COVEN_GROUP_TEST_TOKEN;
if (!SERVER || !TOKEN) {
  throw new Error("run by server/tests/browser.rs (cargo test), which starts the server");
}

/// Every wait on the page is bounded by this.
export const WAIT_MS = 20000;

export function launch() {
  return chromium.launch({
    executablePath: process.env.COVEN_GROUP_CHROMIUM || "/usr/bin/chromium",
    headless: true,
    timeout: 60000,
    args: [
      "--headless",
      "--no-sandbox",
      "--disable-gpu",
      "--no-first-run",
      "--disable-background-networking",
      "--disable-component-update",
      "--disable-sync",
    ],
  });
}

// ---- control of the test's harness (see server/tests/browser.rs) ----

const answers = readline.createInterface({ input: process.stdin });
const waiting = [];
answers.on("line", (line) => {
  const next = waiting.shift();
  if (next) next(line);
});

/// Sends a command (`hold`, `release`) and resolves once it has been carried out.
export function control(command) {
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`no answer to ${command}`)), WAIT_MS);
    waiting.push((line) => {
      clearTimeout(timer);
      if (line === "ok") resolve();
      else reject(new Error(`${command}: ${line}`));
    });
    process.stdout.write(`@@coven-group-test ${command}\n`);
  });
}

/// Sends a command whose answer is JSON (`phone <json>`) and resolves with it parsed; an answer
/// with `error` rejects.
export function ask(command) {
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`no answer to ${command}`)), 120000);
    waiting.push((line) => {
      clearTimeout(timer);
      let answer;
      try {
        answer = JSON.parse(line);
      } catch {
        reject(new Error(`${command}: ${line}`));
        return;
      }
      if (answer.error) reject(new Error(`${command}: ${answer.error}`));
      else resolve(answer);
    });
    process.stdout.write(`@@coven-group-test ${command}\n`);
  });
}

/// A command for the phone (see server/tests/browser/phone.py).
export const phone = (request) => ask(`phone ${JSON.stringify(request)}`);

export function closeControl() {
  answers.close();
}

// ---- a proxy between the browser and the server ----

/// A TCP proxy to the server whose connections can be cut: `cut()` drops every connection and
/// refuses new ones until `restore()`.
export async function startProxy() {
  const target = new URL(SERVER);
  const sockets = new Set();
  let refusing = false;
  const server = net.createServer((client) => {
    if (refusing) {
      client.destroy();
      return;
    }
    const upstream = net.connect(Number(target.port), target.hostname);
    sockets.add(client);
    sockets.add(upstream);
    const close = () => {
      client.destroy();
      upstream.destroy();
      sockets.delete(client);
      sockets.delete(upstream);
    };
    client.on("error", close).on("close", close);
    upstream.on("error", close).on("close", close);
    client.pipe(upstream);
    upstream.pipe(client);
  });
  await new Promise((resolve) => server.listen(0, "127.0.0.1", resolve));
  return {
    url: `http://127.0.0.1:${server.address().port}/`,
    cut() {
      refusing = true;
      for (const socket of sockets) socket.destroy();
      sockets.clear();
    },
    restore() {
      refusing = false;
    },
    close() {
      this.cut();
      return new Promise((resolve) => server.close(resolve));
    },
  };
}

// ---- the API, straight to the server ----

export async function api(method, path, body) {
  const init = { method, headers: { Authorization: `Bearer ${TOKEN}` } };
  if (body !== undefined) {
    init.headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(body);
  }
  const response = await fetch(SERVER + path, init);
  const text = await response.text();
  if (!response.ok) throw new Error(`${method} ${path}: ${response.status} ${text}`);
  return text ? (response.headers.get("content-type")?.includes("json") ? JSON.parse(text) : text) : null;
}

// ---- the page ----

/// The rendered thread, in DOM order.
export function renderedThread(page) {
  return page.$$eval("#events > li", (items) =>
    items.map((item) => ({
      seq: Number(item.dataset.seq),
      role: item.classList.contains("familiar")
        ? "familiar"
        : item.classList.contains("user")
          ? "user"
          : "system",
      state: item.dataset.state,
      familiarId: item.dataset.familiarId ?? null,
      name: item.querySelector(".name")?.textContent ?? null,
      text: (item.querySelector(".text") ?? item.querySelector(".notice")).textContent,
      marker: item.querySelector(".marker")?.textContent ?? null,
    })),
  );
}

/// Waits until `predicate(thread)` holds for the rendered thread; fails after WAIT_MS with
/// what was rendered last.
export async function waitForThread(page, what, predicate) {
  const deadline = Date.now() + WAIT_MS;
  let thread = [];
  for (;;) {
    thread = await renderedThread(page);
    if (predicate(thread)) return thread;
    if (Date.now() > deadline) {
      throw new Error(`timed out waiting for ${what}; rendered:\n${JSON.stringify(thread, null, 1)}`);
    }
    // Re-read on the page's next change (or after a short while): bounded by the deadline.
    await page
      .waitForFunction(
        (before) => document.querySelector("#events").innerHTML !== before,
        await page.$eval("#events", (node) => node.innerHTML),
        { timeout: 1000 },
      )
      .catch(() => {});
  }
}

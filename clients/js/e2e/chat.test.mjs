// End-to-end test of the pages in Debian's Chromium (playwright-core, no
// browser download): two people chat, see typing and presence, share a text
// file and a PNG (downloaded through the page and compared byte for byte; a
// guest sees the names but cannot download), stream an answer from an
// in-test OpenAI-compatible server and cancel one, survive a server restart
// without losing or duplicating a message, and an admin sees the rooms and
// kicks one of them. A second test starts a server with registration, guests,
// the assistant and files off and checks that the page shows none of them.
//
//   ROOMCAST_BIN=/path/to/roomcast npm run test:e2e
//
// Env: ROOMCAST_BIN (required), CHROMIUM (default /usr/bin/chromium),
// E2E_SCREENSHOTS (a directory to keep screenshots of the main screens in).
// The pages are the ones the binary embeds (web/dist at build time). With
// CI set, a missing binary or browser fails the run instead of skipping.
import { test } from "node:test";
import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import http from "node:http";
import net from "node:net";
import zlib from "node:zlib";
import { CI, freePort, sleep, until } from "../test-support/wait.mjs";

const BIN = process.env.ROOMCAST_BIN;
const CHROMIUM = process.env.CHROMIUM ?? "/usr/bin/chromium";
const SHOTS = process.env.E2E_SCREENSHOTS;
const ADMIN_KEY = "e2e-admin-key";

/** An OpenAI-compatible /v1/chat/completions that streams its answer slowly. */
function fakeAi() {
  const words = "The answer streams in word by word from the fake model".split(" ");
  const server = http.createServer((req, res) => {
    let body = "";
    req.on("data", (d) => (body += d));
    req.on("end", async () => {
      const json = body ? JSON.parse(body) : {};
      const slow = JSON.stringify(json).includes("slowly");
      if (!json.stream) {
        res.writeHead(200, { "content-type": "application/json" });
        res.end(JSON.stringify({ id: "x", model: "fake", choices: [{ index: 0, message: { role: "assistant", content: words.join(" ") }, finish_reason: "stop" }] }));
        return;
      }
      res.writeHead(200, { "content-type": "text/event-stream" });
      const n = slow ? 200 : words.length;
      for (let i = 0; i < n && !res.destroyed; i++) {
        const delta = (i ? " " : "") + words[i % words.length];
        res.write(`data: ${JSON.stringify({ id: "x", model: "fake", choices: [{ index: 0, delta: { content: delta }, finish_reason: null }] })}\n\n`);
        await sleep(slow ? 100 : 40);
      }
      if (!res.destroyed) {
        res.write(`data: ${JSON.stringify({ id: "x", model: "fake", choices: [{ index: 0, delta: {}, finish_reason: "stop" }] })}\n\n`);
        res.end("data: [DONE]\n\n");
      }
    });
  });
  return new Promise((resolve) => server.listen(0, "127.0.0.1", () => resolve(server)));
}

/** A real PNG (w×h, a gradient), built here so the server's signature check sees a PNG. */
function pngImage(w, h) {
  const crcTable = Array.from({ length: 256 }, (_, n) => {
    let c = n;
    for (let k = 0; k < 8; k++) c = c & 1 ? 0xedb88320 ^ (c >>> 1) : c >>> 1;
    return c >>> 0;
  });
  const crc32 = (buf) => {
    let c = 0xffffffff;
    for (const byte of buf) c = crcTable[(c ^ byte) & 0xff] ^ (c >>> 8);
    return (c ^ 0xffffffff) >>> 0;
  };
  const chunk = (type, data) => {
    const len = Buffer.alloc(4);
    len.writeUInt32BE(data.length);
    const body = Buffer.concat([Buffer.from(type, "ascii"), data]);
    const crc = Buffer.alloc(4);
    crc.writeUInt32BE(crc32(body));
    return Buffer.concat([len, body, crc]);
  };
  const ihdr = Buffer.alloc(13);
  ihdr.writeUInt32BE(w, 0);
  ihdr.writeUInt32BE(h, 4);
  ihdr.set([8, 2, 0, 0, 0], 8); // 8-bit RGB
  const pixel = (x, y) => [Math.round(37 + (200 * x) / w), Math.round(87 + (120 * y) / h), 214];
  const raw = Buffer.concat(
    Array.from({ length: h }, (_, y) => Buffer.from([0, ...Array.from({ length: w }, (_, x) => pixel(x, y)).flat()])),
  );
  return Buffer.concat([
    Buffer.from([0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a]),
    chunk("IHDR", ihdr),
    chunk("IDAT", zlib.deflateSync(raw)),
    chunk("IEND", Buffer.alloc(0)),
  ]);
}

const ALL_ON = ["--open-registration", "--guest-chat"];

/**
 * A TCP proxy in front of the server, for one browser: `cut()` drops every
 * connection through it and refuses new ones (a network drop: the server
 * keeps running), `restore()` lets them through again.
 */
async function tcpProxy(targetPort) {
  const sockets = new Set();
  let open = true;
  const proxy = net.createServer((client) => {
    if (!open) return client.destroy();
    const upstream = net.connect(targetPort, "127.0.0.1");
    for (const s of [client, upstream]) {
      sockets.add(s);
      s.on("close", () => sockets.delete(s));
      s.on("error", () => {});
    }
    client.pipe(upstream);
    upstream.pipe(client);
    client.on("close", () => upstream.destroy());
    upstream.on("close", () => client.destroy());
  });
  await new Promise((r) => proxy.listen(0, "127.0.0.1", r));
  return {
    url: `http://127.0.0.1:${proxy.address().port}`,
    cut() {
      open = false;
      for (const s of sockets) s.destroy();
    },
    restore() {
      open = true;
    },
    close() {
      for (const s of sockets) s.destroy();
      proxy.close();
    },
  };
}

class Server {
  /** `flags`: the features to turn on (ALL_ON and the assistant by default). */
  constructor(dir, port, aiUrl, flags = ALL_ON) {
    Object.assign(this, { dir, port, aiUrl, flags, url: `http://127.0.0.1:${port}`, log: "" });
  }
  common() {
    return ["--database", join(this.dir, "roomcast.db"), "--data-dir", this.dir, "--jwt-secret", "e2e-secret-0123456789"];
  }
  /** `roomcast user add` on this server's database (for a server with registration closed). */
  async addUser(name, password) {
    const proc = spawn(BIN, ["user", "add", name, ...this.common()], { stdio: ["pipe", "pipe", "pipe"] });
    let out = "";
    proc.stdout.on("data", (d) => (out += d));
    proc.stderr.on("data", (d) => (out += d));
    proc.stdin.end(password + "\n");
    const code = await new Promise((r) => proc.on("exit", r));
    assert.equal(code, 0, "roomcast user add: " + out);
  }
  async start() {
    this.proc = spawn(
      BIN,
      [
        "serve", "--bind", `127.0.0.1:${this.port}`, ...this.common(), "--admin-key", ADMIN_KEY, ...this.flags,
        ...(this.aiUrl ? ["--ai-base-url", this.aiUrl, "--ai-model", "fake"] : []),
      ],
      { stdio: ["ignore", "pipe", "pipe"], env: { ...process.env, ROOMCAST_AI_API_KEY: "test-key" } },
    );
    this.proc.stdout.on("data", (d) => (this.log += d));
    this.proc.stderr.on("data", (d) => (this.log += d));
    this.exited = new Promise((r) => this.proc.on("exit", (code) => r(code)));
    await until(async () => (await fetch(this.url + "/healthz").catch(() => null))?.ok, "healthz", 20000);
  }
  async stop() {
    if (!this.proc || this.proc.exitCode !== null) return;
    this.proc.kill("SIGTERM");
    await this.exited;
  }
}

/** Console messages about the Content-Security-Policy, from every watched page. */
const cspViolations = [];
function watch(page, who) {
  page.on("pageerror", (e) => console.log(`${who} page error:`, e.message));
  page.on("console", (msg) => {
    if (/Content Security Policy/i.test(msg.text())) cspViolations.push(`${who}: ${msg.text()}`);
  });
}

async function shot(page, name, options = {}) {
  if (!SHOTS) return;
  mkdirSync(SHOTS, { recursive: true });
  await page.screenshot({ path: join(SHOTS, name + ".png"), ...options });
}

/** Ids of the delivered (not pending) messages on a page, in screen order. */
function messageIds(page) {
  return page.$$eval('[data-testid=message-item][data-pending=false]', (els) => els.map((e) => Number(e.dataset.messageId)));
}

async function register(page, name) {
  await page.getByTestId("register-username").fill(name);
  await page.getByTestId("register-password").fill("password-" + name + "-123");
  await page.getByTestId("register-submit").click();
  await page.getByTestId("composer-input").waitFor({ state: "visible" });
}

async function login(page, name, password) {
  await page.getByTestId("login-username").fill(name);
  await page.getByTestId("login-password").fill(password);
  await page.getByTestId("login-submit").click();
  await page.getByTestId("composer-input").waitFor({ state: "visible" });
}

/** Picks a file in the page's (hidden) file input and waits for the outcome text. */
async function share(page, file) {
  await page.getByTestId("upload-status").evaluate((el) => (el.textContent = ""));
  await page.getByTestId("upload-input").setInputFiles(file);
  await until(async () => /Shared|not accept|does not look|large|failed/.test(await page.getByTestId("upload-status").textContent()), "the upload's outcome of " + file.name);
  return page.getByTestId("upload-status").textContent();
}

/** Clicks a file's Download button and returns the bytes the browser saved. */
async function downloadOn(page, fileName) {
  const item = page.locator("[data-testid=message-item]", { has: page.locator("[data-testid=attachment-name]", { hasText: fileName }) });
  const download = page.waitForEvent("download");
  await item.getByTestId("attachment-download").click();
  const file = await download;
  assert.equal(file.suggestedFilename(), fileName);
  return readFileSync(await file.path());
}

async function joinRoomOn(page, room) {
  await page.getByTestId("room-input").fill(room);
  await page.getByTestId("room-input").press("Enter");
  await page.locator(`[data-testid=room-item][data-room="${room}"]`).waitFor({ state: "attached" });
  await until(async () => (await page.getByTestId("member-count").textContent())?.includes("online"), "the room header");
}

async function say(page, text) {
  await page.getByTestId("composer-input").fill(text);
  await page.getByTestId("composer-input").press("Enter");
}

const missing = (!BIN && "set ROOMCAST_BIN") || (!existsSync(CHROMIUM) && `no browser at ${CHROMIUM}`);
if (missing && CI) throw new Error(`CI is set, so the browser test may not be skipped: ${missing}`);

test("two people chat in the browser, through a restart, and an admin kicks one", { skip: missing, timeout: 180000 }, async () => {
  const { chromium } = await import("playwright-core");
  const dir = mkdtempSync(join(tmpdir(), "roomcast-e2e-"));
  const ai = await fakeAi();
  const server = new Server(dir, await freePort(), `http://127.0.0.1:${ai.address().port}/v1`);
  let browser = null;
  let proxy = null;
  try {
    await server.start();
    // The pages embedded in the binary; bob reaches them through a proxy
    // that can cut his network.
    const base = server.url;
    proxy = await tcpProxy(server.port);
    const rootRes = await fetch(base + "/");
    const root = rootRes.ok ? await rootRes.text() : "";
    assert.ok(root.includes("/assets/app.js"), "the server serves the chat page at /");
    assert.match(rootRes.headers.get("content-security-policy") ?? "", /script-src 'self'/, "the pages are served under a CSP");
    browser = await chromium.launch({ executablePath: CHROMIUM, args: ["--no-sandbox"] });
    const alice = await (await browser.newContext({ viewport: { width: 1100, height: 760 } })).newPage();
    const bob = await (await browser.newContext({ viewport: { width: 375, height: 740 } })).newPage();
    for (const [who, p] of [["alice", alice], ["bob", bob]]) watch(p, who);

    // /api/info: every form is offered on this server, and the tools.
    const info = await fetch(base + "/api/info").then((r) => r.json());
    assert.deepEqual(info.features, { registration: true, guest_chat: true, ai: true, files: true });
    await alice.goto(base + "/");
    await alice.waitForSelector("body[data-info=loaded]");
    for (const id of ["login-form", "register-form", "guest-form"]) assert.ok(await alice.getByTestId(id).isVisible(), id + " shown");
    assert.equal(await alice.getByTestId("login-note").isVisible(), false);
    await shot(alice, "login");
    await register(alice, "alice");
    assert.ok(await alice.getByTestId("upload-label").isVisible(), "the file control is shown");
    assert.ok(await alice.getByTestId("ai-panel").isVisible(), "the assistant is shown");
    const accept = await alice.getByTestId("upload-input").getAttribute("accept");
    assert.deepEqual(accept.split(",").sort(), [...info.limits.upload_types].sort(), "the file input accepts the server's types");
    await bob.goto(proxy.url + "/");
    await register(bob, "bob");

    // Presence: each sees the other online.
    await alice.locator('[data-testid=presence-item][data-user-id]', { hasText: "bob" }).waitFor();
    await bob.locator('[data-testid=presence-item]', { hasText: "alice" }).waitFor({ state: "attached" });

    await joinRoomOn(alice, "e2e");
    // Bob is on a phone: the rooms are behind a button.
    await bob.getByTestId("sidebar-toggle").click();
    await joinRoomOn(bob, "e2e");
    await until(async () => (await alice.getByTestId("member-count").textContent()).startsWith("2 "), "two members in the room");

    // Typing.
    await alice.getByTestId("composer-input").type("hel");
    await until(async () => (await bob.getByTestId("typing-indicator").textContent()).includes("alice is typing"), "bob sees alice typing");
    await alice.getByTestId("composer-input").fill("");
    await say(alice, "hello bob");
    await bob.locator("[data-testid=message-item][data-pending=false]", { hasText: "hello bob" }).waitFor();
    await until(async () => (await bob.getByTestId("typing-indicator").textContent()) === "", "typing ends with the message");

    // Reply.
    await bob.locator("[data-testid=message-item]", { hasText: "hello bob" }).getByTestId("message-reply").click();
    await bob.getByTestId("reply-preview").waitFor();
    await say(bob, "hi alice");
    const reply = alice.locator("[data-testid=message-item]", { hasText: "hi alice" });
    await reply.waitFor();
    assert.match(await reply.getByTestId("message-quote").textContent(), /alice: hello bob/);

    // Files: bob (on the phone) shares a text file and a PNG; alice sees each
    // as one message and downloads it through the page: the same bytes.
    const text = Buffer.from("roomcast e2e file\nwith a second line: ünïcödé\n");
    const png = pngImage(96, 64);
    // The server checks content against the declared type; the page refuses types not on the list.
    assert.match(await share(bob, { name: "fake.png", mimeType: "image/png", buffer: Buffer.from("not a png at all") }), /does not look like image\/png/);
    assert.match(await share(bob, { name: "tool.exe", mimeType: "application/x-msdownload", buffer: Buffer.from("MZ") }), /does not accept/);
    assert.match(await share(bob, { name: "notes.txt", mimeType: "text/plain", buffer: text }), /^Shared notes\.txt/);
    assert.match(await share(bob, { name: "pixel.png", mimeType: "image/png", buffer: png }), /^Shared pixel\.png/);
    for (const name of ["notes.txt", "pixel.png"]) {
      await alice.locator("[data-testid=attachment-name]", { hasText: name }).waitFor();
      assert.equal(await alice.locator("[data-testid=attachment-name]", { hasText: name }).count(), 1, name + " shown once");
    }
    assert.deepEqual(await downloadOn(alice, "notes.txt"), text, "the text file's bytes");
    assert.deepEqual(await downloadOn(alice, "pixel.png"), png, "the PNG's bytes");
    // Images are previewed (fetched with the token into a blob: URL, allowed by the CSP).
    const preview = alice.locator("[data-testid=message-item]", { hasText: "pixel.png" }).getByTestId("attachment-preview");
    await preview.waitFor();
    await until(() => preview.evaluate((img) => img.complete && img.naturalWidth === 96), "the PNG preview decoded");
    await say(bob, "files sent");
    await alice.locator("[data-testid=message-item]", { hasText: "files sent" }).waitFor();
    assert.equal(await alice.locator("[data-testid=attachment-name]", { hasText: "fake.png" }).count(), 0, "a refused upload is not shared");
    // A named guest sees the files but gets no download button.
    const guest = await (await browser.newContext({ viewport: { width: 900, height: 700 } })).newPage();
    watch(guest, "guest");
    await guest.goto(base + "/");
    await guest.getByTestId("guest-name").fill("visitor");
    await guest.getByTestId("guest-submit").click();
    await guest.getByTestId("composer-input").waitFor({ state: "visible" });
    await joinRoomOn(guest, "e2e");
    const guestFile = guest.locator("[data-testid=message-item]", { hasText: "notes.txt" });
    await guestFile.waitFor();
    assert.equal(await guestFile.getByTestId("attachment-download").count(), 0, "no download button for a guest");
    assert.match(await guestFile.getByTestId("attachment-guest-note").textContent(), /Log in to download/);
    const guestRes = await fetch(base + "/api/files/" + (await alice.locator("[data-testid=attachment-download]").first().getAttribute("data-file-id")));
    assert.equal(guestRes.status, 401, "a download without a user token is refused");
    await guest.context().close();
    await until(async () => (await alice.getByTestId("member-count").textContent()).startsWith("2 "), "the guest gone from the room");

    await alice.getByTestId("message-list").evaluate((el) => el.closest(".messages").scrollTo(0, 1e6));
    await shot(alice, "chat");
    await shot(bob, "chat-phone");

    // Scroll-back: a room with more history than one page.
    for (let i = 0; i < 120; i++) {
      const res = await fetch(server.url + "/api/publish", {
        method: "POST",
        headers: { Authorization: "Bearer " + ADMIN_KEY, "Content-Type": "application/json" },
        body: JSON.stringify({ room: "archive", content: `archived ${i}` }),
      });
      assert.equal(res.status, 200);
    }
    await joinRoomOn(alice, "archive");
    await until(async () => (await messageIds(alice)).length >= 50, "the newest page");
    for (let i = 0; i < 5 && (await alice.getByTestId("load-older").isVisible()); i++) {
      await alice.getByTestId("load-older").click();
      await sleep(300);
    }
    await until(async () => (await messageIds(alice)).length === 120, "all 120 archived messages after paging back");
    const archived = await messageIds(alice);
    assert.deepEqual([...archived].sort((x, y) => x - y), archived, "paged history in order");
    assert.equal(await alice.locator("[data-testid=message-item]").first().getByTestId("message-content").textContent(), "archived 0");
    await alice.locator('[data-testid=room-item][data-room="e2e"] button').click();
    await alice.getByTestId("composer-input").waitFor();

    // The assistant streams an answer in the room; a second one is cancelled.
    await alice.locator("#ai-panel summary").click();
    await alice.getByTestId("ai-prompt").fill("what is the answer?");
    await alice.getByTestId("ai-submit").click();
    await until(async () => (await alice.getByTestId("ai-status").textContent()) === "Done.", "the AI answer", 20000);
    assert.match(await alice.getByTestId("ai-answer").textContent(), /The answer streams in word by word/);
    await bob.locator("[data-testid=message-item].assistant").first().waitFor();
    await alice.getByTestId("ai-prompt").fill("answer slowly please");
    await alice.getByTestId("ai-submit").click();
    await until(async () => (await alice.getByTestId("ai-answer").textContent()).length > 10, "streaming started", 20000);
    await shot(alice, "assistant");
    await alice.getByTestId("ai-cancel").click();
    await until(async () => (await alice.getByTestId("ai-status").textContent()) === "Stopped.", "stopped");
    const stoppedAt = await alice.getByTestId("ai-answer").textContent();
    await sleep(500);
    assert.equal(await alice.getByTestId("ai-answer").textContent(), stoppedAt, "nothing streams after the cancel");

    // Restart: bob writes while the server is down; the message waits, then goes.
    await server.stop();
    await until(async () => /Reconnecting/.test(await bob.getByTestId("connection-status").textContent()), "bob sees the drop");
    await say(bob, "written while the server was down");
    await bob.locator("[data-testid=message-item][data-pending=true]").waitFor();
    await shot(bob, "reconnecting-phone");
    await server.start();
    await alice.locator("[data-testid=message-item][data-pending=false]", { hasText: "written while the server was down" }).waitFor({ timeout: 30000 });
    await until(async () => (await bob.locator("[data-testid=message-item][data-pending=true]").count()) === 0, "bob's pending message acknowledged", 30000);
    await say(alice, "after the restart");
    // Delivered on both pages (on alice's, acknowledged: no longer pending).
    for (const page of [alice, bob]) {
      await page.locator("[data-testid=message-item][data-pending=false]", { hasText: "after the restart" }).waitFor();
    }
    const a = await messageIds(alice);
    const b = await messageIds(bob);
    assert.deepEqual(a, b, "both pages show the same messages");
    assert.equal(new Set(a).size, a.length, "no message twice");
    assert.deepEqual([...a].sort((x, y) => x - y), a, "in order");
    assert.equal((await alice.locator("[data-testid=message-item]", { hasText: "written while the server was down" }).count()), 1);

    // A network drop (the server keeps running): bob writes while cut off,
    // alice writes meanwhile; once back, each message is on both pages once.
    proxy.cut();
    await until(async () => /Reconnecting/.test(await bob.getByTestId("connection-status").textContent()), "bob sees the network drop");
    await say(bob, "written while cut off");
    await bob.locator("[data-testid=message-item][data-pending=true]", { hasText: "written while cut off" }).waitFor();
    await say(alice, "said while bob was away");
    await alice.locator("[data-testid=message-item][data-pending=false]", { hasText: "said while bob was away" }).waitFor();
    proxy.restore();
    for (const page of [alice, bob]) {
      for (const text of ["written while cut off", "said while bob was away"]) {
        await page.locator("[data-testid=message-item][data-pending=false]", { hasText: text }).waitFor({ timeout: 30000 });
      }
    }
    const afterDrop = [await messageIds(alice), await messageIds(bob)];
    assert.deepEqual(afterDrop[0], afterDrop[1], "both pages show the same messages after the drop");
    assert.equal(new Set(afterDrop[1]).size, afterDrop[1].length, "no message twice after the drop");
    assert.equal(await bob.locator("[data-testid=message-item]", { hasText: "written while cut off" }).count(), 1);

    // Admin: see both connections, kick bob.
    const admin = await (await browser.newContext({ viewport: { width: 1200, height: 900 } })).newPage();
    watch(admin, "admin");
    await admin.goto(base + "/admin");
    await admin.getByTestId("admin-key").fill(ADMIN_KEY);
    await admin.getByTestId("admin-key-submit").click();
    const bobRow = admin.locator('[data-testid=connection-row][data-username="bob"]');
    await bobRow.waitFor();
    // Rooms in use, from GET /api/rooms: e2e with both, archive with alice.
    const e2eRow = admin.locator('[data-testid=room-row][data-room="e2e"]');
    await until(async () => (await e2eRow.count()) === 1 && (await e2eRow.getByTestId("room-member-count").textContent()) === "2", "room e2e with 2 members");
    assert.equal(await e2eRow.getByTestId("room-connection-count").textContent(), "2");
    await admin.locator('[data-testid=room-row][data-room="archive"]').waitFor();
    await admin.getByTestId("room-filter").fill("arch");
    await until(async () => (await admin.locator("[data-testid=room-row]").count()) === 1, "the filter leaves one room");
    assert.equal(await admin.locator("[data-testid=room-row]").getAttribute("data-room"), "archive");
    await admin.getByTestId("room-filter").fill("");
    await until(async () => (await admin.locator("[data-testid=room-row]").count()) >= 2, "the filter cleared");
    await admin.getByTestId("room-filter").blur();
    // Some traffic for the chart, over a few polls (a line needs two points).
    const chartPoints = async () => ((await admin.getByTestId("chart-messages").getAttribute("points")) ?? "").split(" ").filter(Boolean).length;
    for (let i = 0; i < 40 && ((await chartPoints()) < 3 || Number(await admin.getByTestId("rate-messages").textContent()) === 0); i++) {
      await say(alice, `chart ${i}`);
      await sleep(300);
    }
    assert.ok((await chartPoints()) >= 3, "the chart has a line");
    assert.ok(Number(await admin.getByTestId("rate-messages").textContent()) > 0, "a message rate");
    await shot(admin, "admin", { fullPage: true });
    await bobRow.getByTestId("kick-button").click();
    await until(async () => /administrator/.test(await bob.getByTestId("connection-status").textContent()), "bob is told he was kicked");
    await until(async () => (await admin.locator('[data-testid=connection-row][data-username="bob"]').count()) === 0, "bob's row gone");
    await shot(bob, "kicked-phone");
    assert.deepEqual(cspViolations, [], "nothing on the pages is blocked by the Content-Security-Policy");
  } finally {
    proxy?.close();
    await browser?.close();
    await server.stop();
    ai.close();
    if (process.env.E2E_KEEP_LOG) writeFileSync(join(tmpdir(), "roomcast-e2e.log"), server.log);
    rmSync(dir, { recursive: true, force: true });
  }
});

test("the chat page shows only what the server offers (GET /api/info)", { skip: missing, timeout: 60000 }, async () => {
  const { chromium } = await import("playwright-core");
  const dir = mkdtempSync(join(tmpdir(), "roomcast-e2e-closed-"));
  // No --open-registration, no --guest-chat, no assistant, files off.
  const server = new Server(dir, await freePort(), null, ["--upload-types", "none"]);
  let browser = null;
  try {
    await server.addUser("carol", "password-carol-123");
    await server.start();
    const info = await fetch(server.url + "/api/info").then((r) => r.json());
    assert.deepEqual(info.features, { registration: false, guest_chat: false, ai: false, files: false });
    assert.equal(info.limits.max_upload_bytes, null);
    browser = await chromium.launch({ executablePath: CHROMIUM, args: ["--no-sandbox"] });
    const page = await (await browser.newContext({ viewport: { width: 900, height: 700 } })).newPage();
    watch(page, "carol");
    await page.goto(server.url + "/");
    await page.waitForSelector("body[data-info=loaded]");
    assert.ok(await page.getByTestId("login-form").isVisible(), "login form shown");
    assert.equal(await page.getByTestId("register-form").isVisible(), false, "no register form");
    assert.equal(await page.getByTestId("guest-form").isVisible(), false, "no guest form");
    assert.match(await page.getByTestId("login-note").textContent(), /Registration is closed.*Guests cannot chat/);
    await shot(page, "login-closed");
    await login(page, "carol", "password-carol-123");
    await joinRoomOn(page, "quiet");
    assert.equal(await page.getByTestId("upload-label").isVisible(), false, "no file control");
    assert.equal(await page.getByTestId("ai-panel").isVisible(), false, "no assistant");
    await say(page, "still chatting");
    await page.locator("[data-testid=message-item][data-pending=false]", { hasText: "still chatting" }).waitFor();
    assert.deepEqual(cspViolations, [], "nothing blocked by the Content-Security-Policy");
  } finally {
    await browser?.close();
    await server.stop();
    rmSync(dir, { recursive: true, force: true });
  }
});

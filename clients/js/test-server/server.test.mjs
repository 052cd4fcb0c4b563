// Integration test against the real roomcast binary (env ROOMCAST_BIN):
// two clients chat, the server restarts on a file SQLite database, and each
// client ends up with every message of the room exactly once, in order,
// including those sent while the server was down. Run: npm run test:server
import { test } from "node:test";
import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { RoomcastClient, RoomcastHttp, HttpError } from "../dist/index.js";
import { CI, freePort, sleep, until } from "../test-support/wait.mjs";

const BIN = process.env.ROOMCAST_BIN;
const ADMIN_KEY = "integration-admin-key";

class Server {
  constructor(dir, port, database = null) {
    this.database = database;
    this.dir = dir;
    this.port = port;
    this.url = `http://127.0.0.1:${port}`;
    this.log = "";
  }
  async start() {
    this.proc = spawn(
      BIN,
      [
        "serve",
        "--bind", `127.0.0.1:${this.port}`,
        "--database", this.database ?? join(this.dir, "roomcast.db"),
        "--data-dir", this.dir,
        "--jwt-secret", "integration-secret-0123456789",
        "--admin-key", ADMIN_KEY,
        "--open-registration",
        "--guest-chat",
      ],
      { stdio: ["ignore", "pipe", "pipe"] },
    );
    this.proc.stdout.on("data", (d) => (this.log += d));
    this.proc.stderr.on("data", (d) => (this.log += d));
    this.exited = new Promise((r) => this.proc.on("exit", (code, signal) => r({ code, signal })));
    const http = new RoomcastHttp({ baseUrl: this.url });
    await until(() => http.healthy(), "GET /healthz", 20000);
  }
  async stop() {
    if (!this.proc || this.proc.exitCode !== null) return;
    this.proc.kill("SIGTERM");
    let timer;
    const res = await Promise.race([this.exited, new Promise((r) => (timer = setTimeout(() => r(null), 12000)))]);
    clearTimeout(timer);
    if (!res) {
      this.proc.kill("SIGKILL");
      await this.exited;
    }
    return res;
  }
}

function collector(client, room) {
  const got = [];
  client.on("message", (m) => m.room === room && got.push(m));
  return got;
}

async function allStored(http, token, room) {
  const out = [];
  let after = 0;
  for (;;) {
    const page = await http.history(token, room, { afterId: after, limit: 200 });
    out.push(...page.messages);
    if (!page.has_more || page.messages.length === 0) return out;
    after = page.messages.at(-1).id;
  }
}

function assertExactly(got, stored, who) {
  const ids = got.map((m) => m.id);
  assert.equal(new Set(ids).size, ids.length, `${who}: a message was delivered twice`);
  for (let i = 1; i < ids.length; i++) assert.ok(ids[i] > ids[i - 1], `${who}: out of order at ${i}`);
  assert.deepEqual(ids, stored.map((m) => m.id), `${who}: delivered ids differ from the stored ones`);
}

if (!BIN && CI) throw new Error("CI is set, so the server tests may not be skipped: set ROOMCAST_BIN");

test("two clients chat, survive a server restart without loss or duplication, and an admin kicks one", { skip: !BIN && "set ROOMCAST_BIN to the server binary" }, async () => {
  const dir = mkdtempSync(join(tmpdir(), "roomcast-js-"));
  const server = new Server(dir, await freePort());
  const clients = [];
  try {
    await server.start();
    const http = new RoomcastHttp({ baseUrl: server.url });

    // Accounts over HTTP.
    await http.register("alice", "alice-password-1");
    await http.register("bob", "bob-password-12");
    await assert.rejects(http.register("alice", "another-pass-1"), (e) => e instanceof HttpError && e.status === 409);
    await assert.rejects(http.login("alice", "wrong-password"), (e) => e instanceof HttpError && e.status === 401);
    const alice = await http.login("alice", "alice-password-1");
    const bob = await http.login("bob", "bob-password-12");
    assert.equal(alice.user.username, "alice");

    const fast = { initialDelayMs: 100, maxDelayMs: 1000, factor: 2, jitter: 0.5 };
    const a = new RoomcastClient({ url: server.url, token: alice.token, backoff: fast });
    // Bob uses a token callback, as an app that refreshes tokens would.
    const bobReasons = [];
    const b = new RoomcastClient({
      url: server.url,
      token: (reason) => {
        bobReasons.push(reason);
        return bob.token;
      },
      backoff: fast,
    });
    clients.push(a, b);
    const gotA = collector(a, "it");
    const gotB = collector(b, "it");
    await a.connect();
    await b.connect();
    assert.equal(a.user.username, "alice");
    assert.equal(b.user.username, "bob");
    await a.joinRoom("it");
    const joined = await b.joinRoom("it");
    assert.equal(joined.memberCount, 2);

    // Chat both ways; typing reaches the other side.
    const typing = new Promise((r) => b.on("typing", (t) => t.users.some((u) => u.username === "alice") && r()));
    a.setTyping("it", true);
    await typing;
    for (let i = 0; i < 5; i++) await a.send("it", `a${i}`);
    const acks = await Promise.all([0, 1, 2, 3, 4].map((i) => b.send("it", `b${i}`)));
    assert.equal(new Set(acks.map((x) => x.message_id)).size, 5);
    await until(() => gotA.length === 10 && gotB.length === 10, "10 messages on both sides");
    assert.deepEqual(gotA.map((m) => m.id), gotB.map((m) => m.id));

    // Reply to a message.
    const target = gotA[0];
    const replyAck = await b.send("it", "re: a0", { replyTo: target.id });
    await until(() => gotA.some((m) => m.id === replyAck.message_id), "the reply");
    assert.equal(gotA.find((m) => m.id === replyAck.message_id).reply_to, target.id);

    // Restart the server. While it is down, both clients queue messages.
    const stopped = await server.stop();
    assert.equal(stopped?.code, 0, "SIGTERM ends the server with 0\n" + server.log);
    await until(() => a.state === "reconnecting" && b.state === "reconnecting", "both clients reconnecting");
    const offlineA = [0, 1, 2].map((i) => a.send("it", `offline-a${i}`));
    const offlineB = [0, 1].map((i) => b.send("it", `offline-b${i}`));
    assert.equal(a.pending("it").length, 3);
    await server.start();
    // Messages stored before the clients are back must be recovered too.
    for (let i = 0; i < 3; i++) await http.publish(ADMIN_KEY, "it", `published-${i}`, `pub-${i}`);
    await Promise.all([...offlineA, ...offlineB]);
    assert.deepEqual(a.pending("it"), []);
    await until(() => a.state === "open" && b.state === "open", "both open again");
    assert.ok(bobReasons.includes("reconnect"), "the token callback was asked again on reconnect");

    // After the restart: more live chat.
    await a.send("it", "after restart");
    const stored = await allStored(http, alice.token, "it");
    await until(() => gotA.length === stored.length && gotB.length === stored.length, "everything on both sides");
    await sleep(200); // nothing more may arrive
    assertExactly(gotA, stored, "alice");
    assertExactly(gotB, stored, "bob");
    assert.equal(stored.filter((m) => m.content.startsWith("offline-")).length, 5, "each offline message stored once");

    // History scroll-back over the WebSocket.
    const older = await b.history("it", { beforeId: stored.at(-1).id, limit: 3 });
    assert.deepEqual(older.messages.map((m) => m.id), stored.slice(-4, -1).map((m) => m.id));

    // Presence: bob watches everyone; alice leaves and comes back.
    const online = await b.subscribePresence();
    assert.ok(online.users.some((u) => u.username === "alice"));

    // Admin: stats list both connections; kicking bob closes him for good.
    const stats = await http.stats(ADMIN_KEY);
    const row = stats.connections.find((c) => c.connection_id === b.connectionId);
    assert.ok(row, "bob's connection is listed");
    assert.equal(row.username, "bob");
    await assert.rejects(http.stats("wrong-key"), (e) => e instanceof HttpError && e.status === 401);
    const closed = new Promise((r) => b.on("state", (s) => s.state === "closed" && r(s)));
    await http.kick(ADMIN_KEY, b.connectionId);
    const st = await closed;
    assert.equal(st.code, 4003);
    await sleep(300);
    assert.equal(b.state, "closed", "a kicked client does not reconnect");
  } finally {
    for (const c of clients) c.close();
    await server.stop();
    rmSync(dir, { recursive: true, force: true });
  }
});

test("a named guest chats in a room and sees the global room", { skip: !BIN && "set ROOMCAST_BIN to the server binary" }, async () => {
  const dir = mkdtempSync(join(tmpdir(), "roomcast-js-"));
  const server = new Server(dir, await freePort());
  const clients = [];
  try {
    await server.start();
    const g = new RoomcastClient({ url: server.url, guestName: "visitor" });
    const h = new RoomcastClient({ url: server.url, guestName: "visitor" });
    clients.push(g, h);
    await g.connect();
    assert.equal(g.user.kind, "guest");
    await assert.rejects(h.connect(), (e) => e.code === "username_taken");
    const got = [];
    g.on("message", (m) => got.push(m));
    await g.joinRoom("lobby");
    await g.send("lobby", "hello from a guest");
    await g.send(null, "hello global");
    await until(() => got.length === 2, "both messages");
    assert.deepEqual(got.map((m) => m.room).sort(), ["global", "lobby"]);
  } finally {
    for (const c of clients) c.close();
    await server.stop();
    rmSync(dir, { recursive: true, force: true });
  }
});

test("a restart on an in-memory database resets the room instead of hiding new messages", { skip: !BIN && "set ROOMCAST_BIN to the server binary" }, async () => {
  const dir = mkdtempSync(join(tmpdir(), "roomcast-js-"));
  const server = new Server(dir, await freePort(), "sqlite::memory:");
  const clients = [];
  try {
    await server.start();
    const fast = { initialDelayMs: 100, maxDelayMs: 1000, factor: 2, jitter: 0.5 };
    const a = new RoomcastClient({ url: server.url, guestName: "memory-a", backoff: fast });
    clients.push(a);
    const got = collector(a, "mem");
    const resets = [];
    a.on("reset", (r) => resets.push(r.room));
    await a.connect();
    await a.joinRoom("mem");
    for (let i = 0; i < 5; i++) await a.send("mem", `before ${i}`);
    await until(() => got.length === 5, "five messages");
    await server.stop();
    await until(() => a.state === "reconnecting", "reconnecting");
    await server.start();
    const http = new RoomcastHttp({ baseUrl: server.url });
    await http.publish(ADMIN_KEY, "mem", "the first message of the new store");
    await until(() => resets.includes("mem"), "the reset");
    await until(() => got.at(-1)?.content === "the first message of the new store", "the new message");
    await a.send("mem", "and a live one");
    await until(() => got.at(-1)?.content === "and a live one", "the live message");
  } finally {
    for (const c of clients) c.close();
    await server.stop();
    rmSync(dir, { recursive: true, force: true });
  }
});

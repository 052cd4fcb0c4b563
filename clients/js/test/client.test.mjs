// Unit tests of the client against the in-process FakeServer.
import { test, afterEach } from "node:test";
import assert from "node:assert/strict";
import {
  RoomcastClient,
  RoomcastError,
  TimeoutError,
  ConnectionClosedError,
  backoffDelay,
  DEFAULT_BACKOFF,
  RoomcastHttp,
  contentTypeFor,
} from "../dist/index.js";
import { FakeServer } from "./fake-server.mjs";

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

async function until(cond, what, timeoutMs = 3000) {
  const start = Date.now();
  while (!cond()) {
    if (Date.now() - start > timeoutMs) throw new Error("timed out waiting for " + what);
    await sleep(5);
  }
}

// Clients of a test are closed after it even when it fails, so no reconnect
// timer keeps the process alive.
const live = [];
afterEach(() => {
  for (const c of live.splice(0)) c.close();
});

function makeClient(server, extra = {}) {
  const client = new RoomcastClient({
    url: "http://fake.test",
    WebSocket: server.WebSocket,
    guestName: "tester",
    backoff: { initialDelayMs: 5, maxDelayMs: 40, factor: 2, jitter: 0.5 },
    requestTimeoutMs: 500,
    ...extra,
  });
  live.push(client);
  const messages = [];
  client.on("message", (m) => messages.push(m));
  return { client, messages };
}

function ids(messages, room) {
  return messages.filter((m) => !room || m.room === room).map((m) => m.id);
}

function assertStrictlyIncreasingOnce(list, what) {
  for (let i = 1; i < list.length; i++) assert.ok(list[i] > list[i - 1], `${what}: ${list} is not strictly increasing`);
}

// ---------------------------------------------------------------------------
// Backoff

test("backoff grows exponentially, is capped, and jitters within its window", () => {
  const opts = { initialDelayMs: 100, maxDelayMs: 1000, factor: 2, jitter: 1 };
  assert.equal(backoffDelay(0, opts, () => 0.999999), 100);
  assert.equal(backoffDelay(1, opts, () => 0.999999), 200);
  assert.equal(backoffDelay(3, opts, () => 0.999999), 800);
  assert.equal(backoffDelay(4, opts, () => 0.999999), 1000, "capped");
  assert.equal(backoffDelay(50, opts, () => 0.999999), 1000, "capped for large attempts");
  assert.equal(backoffDelay(3, opts, () => 0), 0, "full jitter may wait nothing");
  const half = { ...opts, jitter: 0.5 };
  assert.equal(backoffDelay(2, half, () => 0), 200, "half jitter waits at least half the ceiling");
  assert.equal(backoffDelay(2, half, () => 0.999999), 400);
  const none = { ...opts, jitter: 0 };
  assert.equal(backoffDelay(2, none, Math.random), 400);
  for (let a = 0; a < 20; a++) {
    const d = backoffDelay(a, DEFAULT_BACKOFF);
    assert.ok(d >= 0 && d <= DEFAULT_BACKOFF.maxDelayMs);
  }
});

test("reconnect attempts wait growing delays and reset after success", async () => {
  const server = new FakeServer();
  const { client } = makeClient(server, { random: () => 0.999999 });
  const delays = [];
  client.on("state", (s) => s.delayMs !== undefined && delays.push(s.delayMs));
  await client.connect();
  server.down = true;
  server.closeAll(1001);
  await until(() => delays.length >= 4, "4 reconnect attempts");
  assert.deepEqual(delays.slice(0, 4), [5, 10, 20, 40]);
  server.down = false;
  await until(() => client.state === "open", "reconnected");
  delays.length = 0;
  server.closeAll(1001);
  await until(() => delays.length >= 1, "a new attempt");
  assert.equal(delays[0], 5, "the attempt count starts over after a success");
  client.close();
});

// ---------------------------------------------------------------------------
// Request/reply by ref

test("replies are matched by ref, errors reject with the error code, timeouts reject", async () => {
  const server = new FakeServer();
  const held = [];
  server.intercept = (sock, frame) => {
    if (frame.type === "history" && frame.room !== "global") {
      held.push({ sock, frame });
      return true;
    }
    return false;
  };
  const { client } = makeClient(server);
  await client.connect();
  const a = client.history("a");
  const b = client.history("b");
  const c = client.history("c");
  await until(() => held.length === 3, "three requests");
  const refs = new Set(held.map((h) => h.frame.ref));
  assert.equal(refs.size, 3, "each request has its own ref");
  // Answer out of order: b, then a; c gets an error.
  const [ha, hb, hc] = held;
  hb.sock.push({ type: "history", room: "b", messages: [], has_more: false, ref: hb.frame.ref });
  ha.sock.push({ type: "history", room: "a", messages: [], has_more: true, ref: ha.frame.ref });
  hc.sock.push({ type: "error", error_code: "forbidden", message: "join first", ref: hc.frame.ref });
  assert.equal((await a).room, "a");
  assert.equal((await a).has_more, true);
  assert.equal((await b).room, "b");
  await assert.rejects(c, (err) => err instanceof RoomcastError && err.code === "forbidden" && err.ref === hc.frame.ref);

  // No answer: TimeoutError, and a late answer is ignored.
  const d = client.history("d", {});
  await until(() => held.length === 4, "fourth request");
  await assert.rejects(d, (err) => err instanceof TimeoutError && err.requestType === "history");
  held[3].sock.push({ type: "history", room: "d", messages: [], has_more: false, ref: held[3].frame.ref });
  await sleep(20);

  // A drop rejects what is pending with ConnectionClosedError.
  const e = client.history("e");
  await until(() => held.length === 5, "fifth request");
  server.closeAll(1011);
  await assert.rejects(e, (err) => err instanceof ConnectionClosedError && err.code === 1011);
  client.close();
});

test("an unsolicited error with an unknown ref reaches the error event", async () => {
  const server = new FakeServer();
  const { client } = makeClient(server);
  const errors = [];
  client.on("error", (e) => errors.push(e));
  await client.connect();
  [...server.sockets][0].push({ type: "error", error_code: "rate_limited", message: "slow", retry_after_ms: 50 });
  await until(() => errors.length === 1, "the error event");
  assert.equal(errors[0].code, "rate_limited");
  assert.equal(errors[0].retryAfterMs, 50);
  client.close();
});

// ---------------------------------------------------------------------------
// since_id recovery, de-duplication and ordering

test("after a reconnect each room is re-joined with since_id and the rest is paged with after_id", async () => {
  const server = new FakeServer({ maxRecovery: 3 });
  for (let i = 0; i < 5; i++) server.post("dev", "old " + i);
  const { client, messages } = makeClient(server);
  await client.connect();
  await client.joinRoom("dev");
  await until(() => messages.length === 5, "the recent messages");
  const lastBefore = messages.at(-1).id;

  server.down = true;
  server.closeAll(1001);
  await until(() => client.state === "reconnecting", "reconnecting");
  for (let i = 0; i < 10; i++) server.post("dev", "while away " + i);
  server.down = false;
  const recovered = new Promise((r) => client.on("recovered", (e) => e.room === "dev" && r(e)));
  const ev = await recovered;
  assert.equal(ev.count, 10);

  const joins = server.framesOfType("room_join").filter((f) => f.room === "dev");
  assert.equal(joins.length, 2);
  assert.equal(joins[0].since_id, undefined);
  assert.equal(joins[1].since_id, lastBefore);
  const pages = server.framesOfType("history").filter((f) => f.room === "dev");
  assert.ok(pages.length >= 1, "missed:true made the client page with history");
  assert.ok(pages.every((p) => p.after_id !== undefined && p.before_id === undefined));
  assert.deepEqual(ids(messages, "dev"), server.room("dev").map((m) => m.id));
  client.close();
});

test("live messages during recovery are held back: no loss, no duplicate, in order", async () => {
  const server = new FakeServer({ maxRecovery: 2 });
  for (let i = 0; i < 3; i++) server.post("dev", "m" + i);
  const { client, messages } = makeClient(server);
  await client.connect();
  await client.joinRoom("dev");
  await until(() => messages.length === 3, "first messages");
  server.down = true;
  server.closeAll(1001);
  await until(() => client.state === "reconnecting", "reconnecting");
  for (let i = 0; i < 5; i++) server.post("dev", "away" + i);
  server.down = false;
  // When the re-join arrives, broadcast a new message *before* the
  // room_joined reply, and another while history pages are being fetched —
  // and repeat an old message as a duplicate broadcast.
  let injected = false;
  server.intercept = (sock, frame) => {
    if (frame.type === "room_join" && !injected) {
      injected = true;
      server.post("dev", "racing the join");
      sock.push({ type: "chat_message", message: server.room("dev")[1] });
    }
    if (frame.type === "history" && frame.after_id !== undefined) server.post("dev", "during paging");
    return false;
  };
  await new Promise((r) => client.on("recovered", (e) => e.room === "dev" && r()));
  server.intercept = null;
  server.post("dev", "after");
  await until(() => messages.at(-1)?.content === "after", "the live message after recovery");
  const got = ids(messages, "dev");
  assertStrictlyIncreasingOnce(got, "delivered ids");
  assert.deepEqual(got, server.room("dev").map((m) => m.id), "every stored message, once");
  client.close();
});

test("duplicate and out-of-order broadcasts are delivered once, in order", async () => {
  const server = new FakeServer();
  const { client, messages } = makeClient(server);
  await client.connect();
  await client.joinRoom("dev");
  const sock = [...server.sockets][0];
  const m1 = server.store("dev", "one", { id: "bob", username: "bob", kind: "user" }, null);
  const m2 = server.store("dev", "two", { id: "bob", username: "bob", kind: "user" }, null);
  sock.push({ type: "chat_message", message: m1 });
  sock.push({ type: "chat_message", message: m1 });
  sock.push({ type: "chat_message", message: m2 });
  sock.push({ type: "chat_message", message: m1 });
  sock.push({ type: "file_shared", file: {}, room: "dev", user: m2.user, message: m2 });
  await until(() => messages.length >= 2, "two messages");
  await sleep(20);
  assert.deepEqual(ids(messages, "dev"), [m1.id, m2.id]);
  client.close();
});

// ---------------------------------------------------------------------------
// Idempotent send

test("an unacknowledged message is sent again with the same client_msg_id after a reconnect", async () => {
  const server = new FakeServer();
  const { client, messages } = makeClient(server);
  const pendingEvents = [];
  client.on("pending", (p) => pendingEvents.push(p.pending.map((x) => x.status)));
  await client.connect();
  await client.joinRoom("dev");

  // The server stores the message but the ack is lost with the connection.
  server.dropAcks = true;
  const ack = client.send("dev", "hello", {});
  await until(() => server.framesOfType("chat_message").length === 1, "the first attempt");
  assert.deepEqual(client.pending("dev").map((p) => p.status), ["sent"]);
  server.dropAcks = false;
  server.closeAll(1006);
  const result = await ack;

  const attempts = server.framesOfType("chat_message");
  assert.equal(attempts.length, 2, "sent twice");
  assert.equal(attempts[0].client_msg_id, attempts[1].client_msg_id, "with the same client_msg_id");
  assert.notEqual(attempts[0].ref, attempts[1].ref);
  assert.equal(server.room("dev").length, 1, "stored once");
  assert.equal(result.message_id, server.room("dev")[0].id, "the retry got the first message's ack");
  assert.equal(result.client_msg_id, attempts[0].client_msg_id);
  assert.deepEqual(client.pending("dev"), []);
  await until(() => messages.length === 1, "the message");
  await sleep(20);
  assert.equal(messages.length, 1, "delivered once");
  assert.ok(pendingEvents.some((s) => s.includes("queued")));
  client.close();
});

test("messages sent while offline wait in the outbox and go out in order once joined", async () => {
  const server = new FakeServer();
  const { client, messages } = makeClient(server);
  await client.connect();
  await client.joinRoom("dev");
  server.down = true;
  server.closeAll(1001);
  await until(() => client.state === "reconnecting", "reconnecting");
  const acks = [client.send("dev", "a"), client.send("dev", "b"), client.send("dev", "c")];
  assert.equal(client.pending("dev").length, 3);
  assert.ok(client.pending("dev").every((p) => p.status === "queued"));
  server.down = false;
  const results = await Promise.all(acks);
  assert.deepEqual(results.map((r) => r.message_id), server.room("dev").map((m) => m.id));
  await until(() => messages.length === 3, "three messages");
  assert.deepEqual(messages.map((m) => m.content), ["a", "b", "c"]);
  client.close();
});

test("a message the server refuses is rejected, not retried", async () => {
  const server = new FakeServer();
  server.intercept = (sock, frame) => {
    if (frame.type === "chat_message") {
      sock.push({ type: "error", error_code: "validation_error", message: "`content` too long", ref: frame.ref });
      return true;
    }
    return false;
  };
  const { client } = makeClient(server);
  await client.connect();
  await client.joinRoom("dev");
  await assert.rejects(client.send("dev", "x"), (e) => e instanceof RoomcastError && e.code === "validation_error");
  assert.deepEqual(client.pending("dev"), []);
  client.close();
});

test("a rate-limited message is retried after retry_after_ms with the same client_msg_id", async () => {
  const server = new FakeServer();
  let refused = 0;
  server.intercept = (sock, frame) => {
    if (frame.type === "chat_message" && refused === 0) {
      refused++;
      sock.push({ type: "error", error_code: "rate_limited", message: "slow down", retry_after_ms: 30, ref: frame.ref });
      return true;
    }
    return false;
  };
  const { client } = makeClient(server);
  await client.connect();
  await client.joinRoom("dev");
  const ack = await client.send("dev", "x");
  const attempts = server.framesOfType("chat_message");
  assert.equal(attempts.length, 2);
  assert.equal(attempts[0].client_msg_id, attempts[1].client_msg_id);
  assert.equal(ack.client_msg_id, attempts[0].client_msg_id);
  client.close();
});

// ---------------------------------------------------------------------------
// Identity and closing

test("a guest name that is refused rejects connect and stops the client", async () => {
  const server = new FakeServer();
  const { client } = makeClient(server, { guestName: "taken" });
  await assert.rejects(client.connect(), (e) => e instanceof RoomcastError && e.code === "username_taken");
  assert.equal(client.state, "closed");
  await sleep(50);
  assert.equal(server.connectCount, 1, "no reconnect");
});

test("the token callback is asked on connect and on reconnect, and goes in the upgrade", async () => {
  const server = new FakeServer();
  const reasons = [];
  const { client } = makeClient(server, {
    guestName: undefined,
    token: async (reason) => {
      reasons.push(reason);
      return "good";
    },
  });
  await client.connect();
  assert.equal(client.user.username, "alice");
  assert.match(server.urls[0], /\/ws\?token=good$/);
  server.closeAll(1001);
  await until(() => reasons.length === 2 && client.state === "open", "reconnected");
  assert.deepEqual(reasons, ["connect", "reconnect"]);
  client.close();
});

test("a refused upgrade is retried with an authentication frame, whose auth_failed is final", async () => {
  const server = new FakeServer();
  // The fake refuses tokens other than "good" at the upgrade like the server (no welcome).
  const Orig = server.WebSocket;
  server.WebSocket = class extends Orig {
    constructor(url) {
      super(url);
      if (new URL(url).searchParams.get("token") === "bad") {
        this.server.down = true;
        setTimeout(() => (this.server.down = false), 2);
      }
    }
  };
  const { client } = makeClient(server, { guestName: undefined, token: "bad" });
  await assert.rejects(client.connect(), (e) => e instanceof RoomcastError && e.code === "auth_failed");
  assert.equal(client.state, "closed");
  const auth = server.framesOfType("authentication");
  assert.equal(auth.length, 1);
  assert.equal(auth[0].token, "bad");
});

test("a kick (4003) closes for good; a restart (1001) reconnects", async () => {
  const server = new FakeServer();
  const { client } = makeClient(server);
  await client.connect();
  server.closeAll(1001);
  await until(() => server.connectCount === 2 && client.state === "open", "reconnect after 1001");
  server.closeAll(4003, "kicked");
  await until(() => client.state === "closed", "closed after the kick");
  assert.equal(client.lastCloseCode, 4003);
  await sleep(60);
  assert.equal(server.connectCount, 2, "no reconnect after a kick");
});

test("a missing pong makes the client reconnect", async () => {
  const server = new FakeServer({ heartbeatMs: 30 });
  let swallow = true;
  server.intercept = (sock, frame) => frame.type === "ping" && swallow;
  const { client } = makeClient(server);
  await client.connect();
  await until(() => server.connectCount === 2, "a reconnect after the heartbeat timeout", 2000);
  swallow = false;
  client.close();
});

// ---------------------------------------------------------------------------
// Presence and typing

test("presence: subscription state, user_join/user_leave, presence events and counts", async () => {
  const server = new FakeServer();
  const { client } = makeClient(server);
  const online = [];
  const members = [];
  client.on("online", (o) => online.push(o));
  client.on("members", (m) => members.push(m));
  await client.connect();
  const first = await client.subscribePresence();
  assert.equal(first.count, 1);
  const sock = [...server.sockets][0];
  const carol = { id: "carol", username: "carol", kind: "user" };
  sock.push({ type: "user_join", user: carol });
  await until(() => client.onlineUsers().count === 2, "carol online");
  assert.deepEqual(client.onlineUsers().users.map((u) => u.username), ["carol", "tester"]);
  sock.push({ type: "user_leave", user: carol });
  await until(() => client.onlineUsers().count === 1, "carol offline");

  await client.joinRoom("dev");
  sock.push({ type: "presence", room: "dev", event: "join", user: carol });
  await until(() => client.roomSnapshot("dev").memberCount === 2, "carol in dev");
  sock.push({ type: "presence_count", room: "dev", member_count: 1500 });
  await until(() => client.roomSnapshot("dev").large, "large room");
  assert.equal(client.roomSnapshot("dev").memberCount, 1500);
  // Events resume below the threshold: the list is fetched again.
  sock.push({ type: "presence", room: "dev", event: "leave", user: carol });
  await until(() => server.framesOfType("presence").length === 1, "a presence page request");
  await until(() => !client.roomSnapshot("dev").large && client.roomSnapshot("dev").memberCount === 1, "refreshed");

  // The subscription is renewed after a reconnect.
  server.closeAll(1001);
  await until(() => server.framesOfType("presence_subscribe").length === 2, "re-subscribed");
  client.close();
});

test("typing indicators of others appear, expire, and end with their message", async () => {
  const server = new FakeServer();
  const { client } = makeClient(server, { typingTimeoutMs: 1500 });
  const typing = [];
  client.on("typing", (t) => typing.push(t.users.map((u) => u.username)));
  await client.connect();
  await client.joinRoom("dev");
  const sock = [...server.sockets][0];
  const bob = { id: "bob", username: "bob", kind: "user" };
  sock.push({ type: "user_typing", room: "dev", user: bob, is_typing: true });
  await until(() => client.roomSnapshot("dev").typing.length === 1, "bob typing");
  server.post("dev", "hi", bob);
  await until(() => client.roomSnapshot("dev").typing.length === 0, "typing ends with the message");
  sock.push({ type: "user_typing", room: "dev", user: bob, is_typing: true });
  await until(() => client.roomSnapshot("dev").typing.length === 1, "bob typing again");
  await until(() => client.roomSnapshot("dev").typing.length === 0, "expired", 4000);

  // Our own typing is throttled.
  client.setTyping("dev", true);
  client.setTyping("dev", true);
  client.setTyping("dev", false);
  await sleep(20);
  assert.deepEqual(server.framesOfType("user_typing").map((f) => f.is_typing), [true, false]);
  client.close();
});

// ---------------------------------------------------------------------------
// AI streaming

function aiServer(script) {
  const server = new FakeServer();
  server.intercept = (sock, frame) => {
    if (frame.type === "ai_request" || frame.type === "ai_cancel") {
      script(sock, frame, server);
      return true;
    }
    return false;
  };
  return server;
}

test("ai: chunks arrive through the async iterator, then the final answer", async () => {
  const server = aiServer((sock, frame) => {
    if (frame.type !== "ai_request") return;
    const ref = frame.ref;
    for (const delta of ["Hel", "lo, ", "world"]) sock.push({ type: "ai_response_chunk", request_id: "q1", delta, ref });
    sock.push({ type: "ai_response", request_id: "q1", content: "Hello, world", model: "m", message: null, ref });
  });
  const { client } = makeClient(server);
  await client.connect();
  const stream = client.ask("hi");
  const parts = [];
  for await (const delta of stream) parts.push(delta);
  assert.deepEqual(parts, ["Hel", "lo, ", "world"]);
  const result = await stream.result;
  assert.equal(result.content, "Hello, world");
  assert.equal(stream.requestId, "q1");
  assert.equal(stream.text, "Hello, world");
  client.close();
});

test("ai: an answer without chunks is one delta; an error ends the iterator with it", async () => {
  let n = 0;
  const server = aiServer((sock, frame) => {
    n++;
    if (n === 1) sock.push({ type: "ai_response", request_id: "q", content: "whole", model: "m", message: null, ref: frame.ref });
    else sock.push({ type: "error", error_code: "ai_unavailable", message: "none", ref: frame.ref });
  });
  const { client } = makeClient(server);
  await client.connect();
  const parts = [];
  for await (const d of client.ask("one")) parts.push(d);
  assert.deepEqual(parts, ["whole"]);
  const failing = client.ask("two");
  await assert.rejects(
    (async () => {
      for await (const _ of failing) void _;
    })(),
    (e) => e instanceof RoomcastError && e.code === "ai_unavailable",
  );
  await assert.rejects(failing.result, (e) => e.code === "ai_unavailable");
  client.close();
});

test("ai: cancel sends ai_cancel with the request id and ends the stream", async () => {
  const server = aiServer((sock, frame) => {
    if (frame.type === "ai_request") {
      sock.push({ type: "ai_response_chunk", request_id: "q9", delta: "partial", ref: frame.ref });
      sock.pushLater = () =>
        sock.push({ type: "ai_response_chunk", request_id: "q9", delta: " late", ref: frame.ref });
    } else {
      sock.push({ type: "ai_cancelled", request_id: frame.request_id, ref: frame.ref });
      sock.pushLater();
    }
  });
  const { client } = makeClient(server);
  await client.connect();
  const stream = client.ask("long question", {});
  const parts = [];
  for await (const d of stream) {
    parts.push(d);
    await stream.cancel();
  }
  assert.deepEqual(parts, ["partial"]);
  assert.equal(server.framesOfType("ai_cancel")[0].request_id, "q9");
  await assert.rejects(stream.result, (e) => e instanceof RoomcastError && e.code === "cancelled");
  await sleep(20);
  assert.equal(stream.text, "partial", "nothing after the cancel");
  client.close();
});

test("ai: cancel before the first chunk is sent as soon as the request id is known", async () => {
  const server = aiServer((sock, frame) => {
    if (frame.type === "ai_request") {
      setTimeout(() => sock.push({ type: "ai_response_chunk", request_id: "q2", delta: "x", ref: frame.ref }), 20);
    } else {
      sock.push({ type: "ai_cancelled", request_id: frame.request_id, ref: frame.ref });
    }
  });
  const { client } = makeClient(server);
  await client.connect();
  const stream = client.ask("q");
  await stream.cancel();
  const parts = [];
  for await (const d of stream) parts.push(d);
  assert.deepEqual(parts, []);
  assert.equal(server.framesOfType("ai_cancel")[0]?.request_id, "q2");
  client.close();
});

// ---------------------------------------------------------------------------
// Files and HTTP

test("uploadFile asks for an upload, PUTs the bytes with the upload token, and returns the file", async () => {
  const server = new FakeServer();
  server.intercept = (sock, frame) => {
    if (frame.type !== "file_upload_request") return false;
    sock.push({
      type: "file_upload_authorized",
      upload_id: "up1",
      upload_url: "/api/uploads/up1",
      method: "PUT",
      upload_token: "upload-token-1",
      expires_at: new Date(Date.now() + 60000).toISOString(),
      max_size: 1000,
      ref: frame.ref,
    });
    return true;
  };
  const calls = [];
  const file = { id: "f1", name: "a.txt", size: 5, content_type: "text/plain", url: "/api/files/f1", sha256: "x" };
  const fakeFetch = async (url, init = {}) => {
    calls.push({ url, init });
    if (init.method === "PUT") return new Response(JSON.stringify({ file }), { status: 201 });
    if (url.endsWith("/api/files/f1")) return new Response("hello", { status: 200 });
    return new Response(JSON.stringify({ error_code: "not_found", message: "no" }), { status: 404 });
  };
  const { client } = makeClient(server, { fetch: fakeFetch, guestName: undefined, token: "good" });
  await client.connect();
  await client.joinRoom("dev");
  const got = await client.uploadFile("dev", new Blob(["hello"], { type: "text/plain" }), { filename: "a.txt" });
  assert.deepEqual(got, file);
  const req = server.framesOfType("file_upload_request")[0];
  assert.deepEqual({ ...req, ref: undefined }, { type: "file_upload_request", filename: "a.txt", size: 5, content_type: "text/plain", room: "dev", ref: undefined });
  assert.equal(calls[0].url, "http://fake.test/api/uploads/up1");
  assert.equal(calls[0].init.method, "PUT");
  assert.equal(calls[0].init.headers.Authorization, "Bearer upload-token-1");
  assert.equal(calls[0].init.headers["Content-Type"], "text/plain");
  const blob = await client.downloadFile(got);
  assert.equal(await blob.text(), "hello");
  assert.equal(calls[1].init.headers.Authorization, "Bearer good", "downloads carry the user's token");
  await assert.rejects(client.downloadFile("/api/files/nope"), (e) => e.name === "HttpError" && e.status === 404 && e.code === "not_found");
  client.close();
});

test("an upload declares a type guessed from the name when the blob has none", async () => {
  assert.equal(contentTypeFor("notes.TXT"), "text/plain");
  assert.equal(contentTypeFor("pixel.png", ""), "image/png");
  assert.equal(contentTypeFor("photo.jpeg"), "image/jpeg");
  assert.equal(contentTypeFor("x.png", "Image/PNG; charset=binary"), "image/png", "a given type wins, without parameters");
  assert.equal(contentTypeFor("README"), "application/octet-stream");
  const server = new FakeServer();
  server.intercept = (sock, frame) => {
    if (frame.type !== "file_upload_request") return false;
    sock.push({ type: "file_upload_authorized", upload_id: "u", upload_url: "/api/uploads/u", method: "PUT", upload_token: "t", expires_at: "", max_size: 10, ref: frame.ref });
    return true;
  };
  const file = { id: "f2", name: "p.png", size: 3, content_type: "image/png", url: "/api/files/f2", sha256: "x" };
  const message = { id: 7, room: "dev", content: "p.png", attachment: file };
  let put = null;
  const fakeFetch = async (url, init = {}) => {
    put = init;
    return new Response(JSON.stringify({ file, message }), { status: 201 });
  };
  const { client } = makeClient(server, { fetch: fakeFetch, guestName: undefined, token: "good" });
  await client.connect();
  assert.deepEqual(await client.uploadFile("dev", new Blob([new Uint8Array([1, 2, 3])]), { filename: "p.png" }), file);
  assert.equal(server.framesOfType("file_upload_request")[0].content_type, "image/png");
  assert.equal(put.headers["Content-Type"], "image/png");
  client.close();
});

test("RoomcastHttp.info and .rooms read GET /api/info and GET /api/rooms", async () => {
  const info = {
    server: { name: "roomcast", version: "0.1.0" },
    features: { registration: false, guest_chat: true, ai: false, files: true },
    limits: { max_message_chars: 4000, max_frame_bytes: 65536, max_upload_bytes: 100, upload_types: ["text/plain"] },
  };
  const rooms = [{ name: "dev", member_count: 2, connection_count: 3 }];
  const calls = [];
  const http = new RoomcastHttp({
    baseUrl: "http://fake.test/",
    fetch: async (url, init = {}) => {
      calls.push({ url, init });
      if (url.endsWith("/api/info")) return new Response(JSON.stringify(info), { status: 200 });
      if (init.headers?.Authorization !== "Bearer admin") return new Response(JSON.stringify({ error_code: "auth_failed", message: "no" }), { status: 401 });
      return new Response(JSON.stringify({ rooms }), { status: 200 });
    },
  });
  assert.deepEqual(await http.info(), info);
  assert.equal(calls[0].url, "http://fake.test/api/info");
  assert.equal(calls[0].init.headers.Authorization, undefined, "info needs no credentials");
  assert.deepEqual(await http.rooms("admin"), rooms);
  assert.equal(calls[1].url, "http://fake.test/api/rooms");
  await assert.rejects(http.rooms("wrong"), (e) => e.name === "HttpError" && e.status === 401 && e.code === "auth_failed");
});

test("a closed client rejects joinRoom instead of waiting forever", async () => {
  const server = new FakeServer();
  const { client } = makeClient(server);
  await client.connect();
  server.closeAll(4003, "kicked");
  await until(() => client.state === "closed", "closed");
  await assert.rejects(client.joinRoom("later"), (e) => e instanceof ConnectionClosedError);
});

test("a server whose store started over (in-memory database restarted) resets the room instead of dropping new messages", async () => {
  const server = new FakeServer();
  for (let i = 0; i < 3; i++) server.post("dev", "before " + i);
  const { client, messages } = makeClient(server);
  const resets = [];
  client.on("reset", (r) => resets.push(r.room));
  await client.connect();
  await client.joinRoom("dev");
  await until(() => messages.length === 3, "first messages");
  server.down = true;
  server.closeAll(1001);
  await until(() => client.state === "reconnecting", "reconnecting");
  server.rooms = new Map();
  server.nextId = 1;
  server.dedup = new Map();
  server.post("dev", "new store 1");
  server.down = false;
  await until(() => resets.includes("dev"), "the reset event");
  await until(() => messages.at(-1)?.content === "new store 1", "the new message");
  server.post("dev", "new store 2");
  await until(() => messages.at(-1)?.content === "new store 2", "the next live message");
  assert.deepEqual(messages.slice(3).map((m) => m.id), [1, 2]);
  client.close();
});

test("an outbox store keeps unacknowledged messages across a reload; they go out with the same client_msg_id", async () => {
  const server = new FakeServer();
  let saved = [];
  const store = { load: () => JSON.parse(JSON.stringify(saved)), save: (p) => (saved = p) };
  server.down = true;
  const first = makeClient(server, { outboxStore: store }).client;
  void first.connect().catch(() => undefined);
  const lost = first.send("dev", "typed before the reload");
  lost.catch(() => undefined);
  assert.equal(saved.length, 1);
  const id = saved[0].clientMsgId;
  first.close(); // the page goes away

  server.down = false;
  const { client, messages } = makeClient(server, { outboxStore: store });
  assert.deepEqual(client.pending("dev").map((p) => p.clientMsgId), [id]);
  await client.connect();
  await client.joinRoom("dev");
  await until(() => messages.length === 1, "the restored message delivered");
  assert.equal(messages[0].client_msg_id, id);
  await until(() => saved.length === 0, "the store emptied after the ack");
  assert.equal(server.framesOfType("chat_message").length, 1);
});

// An in-process stand-in for a roomcast server, for unit tests only: it speaks
// enough of the protocol (welcome, user_join, room_join with since_id and
// missed, history, chat_message with client_msg_id de-duplication, presence,
// ai_request/ai_cancel, ping) to drive the client through reconnects. The real
// server is exercised by test-server/.

export class FakeServer {
  constructor(options = {}) {
    this.maxRecovery = options.maxRecovery ?? 1000;
    this.roomHistory = options.roomHistory ?? 50;
    this.heartbeatMs = options.heartbeatMs ?? 0;
    /** When true new sockets fail before opening, as with a server that is down. */
    this.down = false;
    /** Per room, the stored messages in id order. */
    this.rooms = new Map();
    this.nextId = 1;
    this.dedup = new Map();
    this.sockets = new Set();
    /** Every frame received, with its socket, for assertions. */
    this.received = [];
    this.connectCount = 0;
    this.urls = [];
    /** Hooks a test sets to change behaviour: (socket, frame) => true when handled. */
    this.intercept = null;
    const server = this;
    this.WebSocket = class extends FakeSocket {
      constructor(url) {
        super(server, url);
      }
    };
  }

  room(name) {
    if (!this.rooms.has(name)) this.rooms.set(name, []);
    return this.rooms.get(name);
  }

  /** Stores a message as another user would, broadcasting it to joined sockets. */
  post(room, content, user = { id: "bob", username: "bob", kind: "user" }, clientMsgId = null) {
    const msg = this.store(room, content, user, clientMsgId);
    this.broadcast(msg);
    return msg;
  }

  store(room, content, user, clientMsgId) {
    const msg = {
      id: this.nextId++,
      room,
      user,
      content,
      created_at: new Date().toISOString(),
      client_msg_id: clientMsgId,
      reply_to: null,
      attachment: null,
    };
    this.room(room).push(msg);
    return msg;
  }

  broadcast(msg) {
    const room = msg.room;
    for (const s of this.sockets) {
      if (s.rooms.has(room) || room === "global") s.push({ type: "chat_message", message: msg });
    }
  }

  /** Closes every socket with a code, as a restart (1001) or a kick (4003) would. */
  closeAll(code = 1001, reason = "") {
    for (const s of [...this.sockets]) s.serverClose(code, reason);
  }

  framesOfType(type) {
    return this.received.filter((r) => r.frame.type === type).map((r) => r.frame);
  }

  handle(sock, frame) {
    this.received.push({ sock, frame });
    if (this.intercept && this.intercept(sock, frame)) return;
    const ref = frame.ref;
    const reply = (f) => sock.push(ref === undefined ? f : { ...f, ref });
    switch (frame.type) {
      case "user_join":
        if (frame.username === "taken") return reply({ type: "error", error_code: "username_taken", message: "taken" });
        sock.user = { id: "guest:" + frame.username, username: frame.username, kind: "guest" };
        return reply({ type: "user_join", user: sock.user });
      case "authentication":
        if (frame.token !== "good") return reply({ type: "error", error_code: "auth_failed", message: "bad token" });
        sock.user = { id: "alice", username: "alice", kind: "user" };
        return reply({ type: "auth_success", user: sock.user, connection_id: sock.id });
      case "room_join": {
        sock.rooms.add(frame.room);
        const all = this.room(frame.room);
        let recent;
        let missed = false;
        if (frame.since_id !== undefined) {
          const after = all.filter((m) => m.id > frame.since_id);
          recent = after.slice(0, this.maxRecovery);
          missed = after.length > this.maxRecovery;
        } else {
          recent = all.slice(-this.roomHistory);
        }
        return reply({
          type: "room_joined",
          room: frame.room,
          members: [sock.user],
          member_count: 1,
          recent_messages: recent,
          missed,
        });
      }
      case "room_leave":
        sock.rooms.delete(frame.room);
        return reply({ type: "room_left", room: frame.room });
      case "history": {
        const all = this.room(frame.room);
        const limit = frame.limit ?? 50;
        let page;
        let hasMore;
        if (frame.after_id !== undefined) {
          const after = all.filter((m) => m.id > frame.after_id);
          page = after.slice(0, limit);
          hasMore = after.length > limit;
        } else {
          const before = frame.before_id !== undefined ? all.filter((m) => m.id < frame.before_id) : all;
          page = before.slice(-limit);
          hasMore = before.length > limit;
        }
        return reply({ type: "history", room: frame.room, messages: page, has_more: hasMore });
      }
      case "chat_message": {
        const room = frame.room ?? "global";
        const key = room + "\u0000" + (sock.user?.id ?? "") + "\u0000" + frame.client_msg_id;
        if (frame.client_msg_id && this.dedup.has(key)) {
          return reply({ type: "message_ack", message_id: this.dedup.get(key), room, client_msg_id: frame.client_msg_id });
        }
        const msg = this.store(room, frame.content, sock.user, frame.client_msg_id ?? null);
        if (frame.client_msg_id) this.dedup.set(key, msg.id);
        // As the real server: the ack first, then the broadcast (to us too).
        if (!this.dropAcks) reply({ type: "message_ack", message_id: msg.id, room, client_msg_id: frame.client_msg_id ?? null });
        this.broadcast(msg);
        return;
      }
      case "ping":
        return reply({ type: "pong", server_time: new Date().toISOString() });
      case "presence_subscribe":
        return reply({ type: "presence_state", room: null, members: [sock.user], member_count: 1 });
      case "presence_unsubscribe":
        return reply({ type: "presence_unsubscribed" });
      case "presence":
        return reply({ type: "presence_state", room: frame.room, members: [sock.user], member_count: 1 });
      case "user_typing":
        return;
      default:
        return reply({ type: "error", error_code: "unknown_type", message: "fake server: " + frame.type });
    }
  }
}

let nextSocketId = 1;

export class FakeSocket {
  static CONNECTING = 0;
  static OPEN = 1;
  static CLOSING = 2;
  static CLOSED = 3;

  constructor(server, url) {
    this.server = server;
    this.url = url;
    this.id = "fake-" + nextSocketId++;
    this.readyState = 0;
    this.rooms = new Set();
    this.user = null;
    this.outbox = [];
    this.onopen = null;
    this.onmessage = null;
    this.onclose = null;
    this.onerror = null;
    server.urls.push(url);
    setTimeout(() => {
      if (server.down) {
        this.readyState = 3;
        this.onerror?.({});
        this.onclose?.({ code: 1006, reason: "" });
        return;
      }
      server.connectCount += 1;
      server.sockets.add(this);
      this.readyState = 1;
      const token = new URL(url).searchParams.get("token");
      if (token === "good") this.user = { id: "alice", username: "alice", kind: "user" };
      this.onopen?.({});
      this.push({
        type: "welcome",
        connection_id: this.id,
        server: { name: "roomcast", version: "fake" },
        heartbeat_interval_ms: server.heartbeatMs,
        authenticated: !!this.user,
        user: this.user,
        recent_messages: [],
        limits: { max_frame_bytes: 65536, max_message_chars: 4000 },
      });
    }, 1);
  }

  /** Queues a frame to the client; frames are delivered in order, asynchronously. */
  push(frame) {
    if (this.readyState !== 1) return;
    this.outbox.push(frame);
    if (this.outbox.length === 1) setTimeout(() => this.drain(), 1);
  }

  drain() {
    while (this.outbox.length > 0 && this.readyState === 1) {
      const f = this.outbox.shift();
      this.onmessage?.({ data: JSON.stringify({ timestamp: new Date().toISOString(), ...f }) });
    }
  }

  send(data) {
    if (this.readyState !== 1) throw new Error("socket not open");
    const frame = JSON.parse(data);
    setTimeout(() => this.server.handle(this, frame), 1);
  }

  close(code = 1000, reason = "") {
    if (this.readyState >= 2) return;
    this.serverClose(code, reason);
  }

  serverClose(code, reason = "") {
    if (this.readyState >= 2) return;
    this.readyState = 3;
    this.outbox = [];
    this.server.sockets.delete(this);
    setTimeout(() => this.onclose?.({ code, reason }), 1);
  }
}

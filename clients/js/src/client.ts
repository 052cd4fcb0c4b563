// RoomcastClient: one WebSocket to a roomcast server, kept open across drops.
//
// What it takes care of, so the application does not have to:
// - request/reply: every request gets a `ref`; the reply with that ref resolves
//   the promise, an `error` with that ref rejects it (RoomcastError), and no
//   reply within the timeout rejects it (TimeoutError);
// - reconnecting with exponential backoff and jitter, and a heartbeat (`ping`)
//   that notices a dead network the browser has not noticed;
// - rooms that survive reconnects: the highest message id seen per room is
//   kept, each room is joined again with `since_id`, and while `missed` (then
//   `has_more`) says so the rest is paged with `history` `after_id`. Live
//   messages that arrive meanwhile are held back, so the application gets each
//   message once, in id order within its room;
// - sending idempotently: each message gets a `client_msg_id`; one not yet
//   acknowledged is sent again, with the same id, after a reconnect (the server
//   stores it once and acknowledges it again);
// - presence (rooms' members, counts in large rooms, online subscriptions),
//   typing indicators, the assistant's streamed answers, and file uploads.

import { AiStream } from "./ai.js";
import { backoffDelay, DEFAULT_BACKOFF, type BackoffOptions } from "./backoff.js";
import { Emitter } from "./emitter.js";
import { ConnectionClosedError, RoomcastError, TimeoutError } from "./errors.js";
import { contentTypeFor, RoomcastHttp, type FetchLike } from "./http.js";
import {
  CloseCode,
  GLOBAL_ROOM,
  type AiResponseFrame,
  type ClientFrame,
  type ErrorFrame,
  type FileInfo,
  type FileSharedEvent,
  type HistoryReplyFrame,
  type Message,
  type MessageAckFrame,
  type PresenceStateFrame,
  type RoomJoinedFrame,
  type ServerFrame,
  type ServerFrameOf,
  type ServerFrameType,
  type User,
  type WelcomeFrame,
} from "./protocol.js";

/** The subset of the WebSocket API the client uses (browsers and Node ≥ 22 have it). */
export interface WebSocketLike {
  readonly readyState: number;
  send(data: string): void;
  close(code?: number, reason?: string): void;
  onopen: ((ev: unknown) => void) | null;
  onmessage: ((ev: { data: unknown }) => void) | null;
  onclose: ((ev: { code: number; reason: string }) => void) | null;
  onerror: ((ev: unknown) => void) | null;
}
export type WebSocketFactory = new (url: string) => WebSocketLike;

/** Why a token is asked for: the first connect, a reconnect, or an expired token. */
export type TokenReason = "connect" | "reconnect" | "expired";
/** Returns the token to use, or null to connect as a guest. */
export type TokenProvider = (reason: TokenReason) => string | null | Promise<string | null>;

export interface ClientOptions {
  /** Server base URL (`http://host:8080`); default the page's own origin. */
  url?: string;
  /** WebSocket URL; default `url` with a ws scheme and `/ws`. */
  wsUrl?: string;
  /** A token, or a function that returns one (called before every connect). */
  token?: string | TokenProvider | null;
  /** Connect as a guest and name itself with `user_join` (where guest chat is on). */
  guestName?: string;
  /**
   * How the token reaches the server: `query` (`?token=` in the upgrade, the
   * default: the welcome then already carries the user) or `frame` (an
   * `authentication` frame after the welcome: a bad token is told apart from a
   * network failure).
   */
  authMode?: "query" | "frame";
  /** Default timeout of a request, in ms (15 s). */
  requestTimeoutMs?: number;
  /** Longest wait for the whole AI answer without any chunk, in ms (120 s). */
  aiTimeoutMs?: number;
  backoff?: Partial<BackoffOptions>;
  /** Send `ping` every heartbeat interval and reconnect when no `pong` comes (default true). */
  heartbeat?: boolean;
  /** How long a typing indicator lasts without being renewed, in ms (6 s). */
  typingTimeoutMs?: number;
  /** Keep the global room's messages (from `welcome`, recovered on reconnect) (default true). */
  trackGlobal?: boolean;
  /** Reconnect after a drop (default true). */
  reconnect?: boolean;
  /**
   * Keeps unacknowledged messages across page reloads (e.g. in localStorage):
   * loaded at construction, saved on every change. Restored messages are sent
   * again with their `client_msg_id` once their room is joined; their promises
   * belong to the page that sent them, so the `pending` event tells their fate.
   */
  outboxStore?: OutboxStore;
  WebSocket?: WebSocketFactory;
  fetch?: FetchLike;
  /** Source of randomness for jitter and ids (tests). */
  random?: () => number;
}

export interface OutboxStore {
  load(): PendingMessage[];
  save(pending: PendingMessage[]): void;
}

export type ConnectionState = "idle" | "connecting" | "open" | "reconnecting" | "closed";

export interface StateChange {
  state: ConnectionState;
  /** Close code of the socket that went down, where one did. */
  code?: number;
  reason?: string;
  /** Before a reconnect: the attempt number (0 first) and the wait. */
  attempt?: number;
  delayMs?: number;
}

export interface PendingMessage {
  clientMsgId: string;
  room: string;
  content: string;
  replyTo: number | null;
  /** `queued`: waits for a connection; `sent`: on the wire, not acknowledged yet. */
  status: "queued" | "sent";
  attempts: number;
  createdAt: number;
}

export interface RoomSnapshot {
  name: string;
  /** Joined on the current connection. */
  joined: boolean;
  /** Highest message id delivered to the application. */
  lastId: number | null;
  /** Lowest message id delivered or paged (for scroll-back). */
  oldestId: number | null;
  members: User[];
  memberCount: number;
  /** More members online than the server's large-room threshold: counts, not events. */
  large: boolean;
  typing: User[];
}

export interface ClientEvents {
  state: StateChange;
  welcome: WelcomeFrame;
  /** The connection is identified (and, after a reconnect, recovery has started). */
  ready: { user: User | null; connectionId: string; reconnected: boolean };
  /** A message, once, in id order within its room. */
  message: Message;
  members: { room: string; members: User[]; memberCount: number; large: boolean };
  typing: { room: string; users: User[] };
  /** Users watched with `presence_subscribe` that are online now. */
  online: { users: User[]; count: number };
  user_join: User;
  user_leave: User;
  file_shared: FileSharedEvent;
  /** The outbox changed: messages waiting for their `message_ack`. */
  pending: { room: string; pending: PendingMessage[] };
  /** A room finished recovering after a (re)join. */
  recovered: { room: string; count: number };
  /**
   * The server's messages of a room start over below the last id we held (a
   * server restarted on an in-memory database): forget what was shown; the
   * room's messages are delivered afresh.
   */
  reset: { room: string };
  /** Every frame from the server, before the client handles it. */
  frame: ServerFrame;
  /** An error that belongs to no request (e.g. `token_expired`, a failed recovery). */
  error: Error;
}

interface PendingRequest {
  type: string;
  timeoutMs: number;
  timer: ReturnType<typeof setTimeout> | null;
  /** Returns true when this frame ends the request. */
  onFrame: (frame: ServerFrame) => boolean;
  onError: (err: Error) => void;
}

interface OutboxEntry extends PendingMessage {
  resolve: (ack: MessageAckFrame) => void;
  reject: (err: Error) => void;
}

interface RoomState {
  name: string;
  /** The application wants to be in this room (kept across reconnects). */
  wanted: boolean;
  /** The connection generation on which room_joined came, or 0. */
  joinedGen: number;
  lastId: number | null;
  oldestId: number | null;
  /** While true, live messages wait in `buffer` until recovery is done. */
  recovering: boolean;
  buffer: Message[];
  members: Map<string, User>;
  memberCount: number;
  large: boolean;
  typing: Map<string, { user: User; until: number }>;
  /** The recovery under way on this connection, so a second join waits for it. */
  joining: Promise<void> | null;
  /** Waiters for the next successful join. */
  joinWaiters: { resolve: (r: RoomJoinedFrame) => void; reject: (e: Error) => void }[];
}

const RETRYABLE_SEND_ERRORS = new Set(["unavailable", "rate_limited", "internal_error"]);
/** Close codes after which reconnecting would only repeat the refusal. */
const FINAL_CLOSE_CODES = new Set<number>([CloseCode.Kicked, CloseCode.Policy]);

export class RoomcastClient extends Emitter<ClientEvents> {
  readonly http: RoomcastHttp;
  /** Connection state; `open` means identified and usable. */
  state: ConnectionState = "idle";
  user: User | null = null;
  connectionId: string | null = null;
  welcome: WelcomeFrame | null = null;
  /** The token in use (for HTTP calls such as downloads), if any. */
  token: string | null = null;
  /** Last close code seen, e.g. 4003 after a kick. */
  lastCloseCode: number | null = null;

  private readonly opts: Required<
    Pick<ClientOptions, "requestTimeoutMs" | "aiTimeoutMs" | "heartbeat" | "typingTimeoutMs" | "trackGlobal" | "reconnect" | "authMode">
  >;
  private readonly backoff: BackoffOptions;
  private readonly random: () => number;
  private readonly WS: WebSocketFactory;
  private readonly wsUrl: string;
  private tokenSource: string | TokenProvider | null;
  private guestName: string | null;

  private ws: WebSocketLike | null = null;
  /** Increases with every socket, so callbacks of an old one change nothing. */
  private gen = 0;
  private attempt = 0;
  private everReady = false;
  /**
   * The last socket closed before its welcome. A refused token at the upgrade
   * looks like that (HTTP 401, no way to read it in a browser), so the next
   * attempt sends the token in an \`authentication\` frame instead, whose
   * \`auth_failed\` can be told apart from a network failure.
   */
  private failedBeforeWelcome = false;
  private stopped = false;
  private reconnectTimer: ReturnType<typeof setTimeout> | null = null;
  private heartbeatTimer: ReturnType<typeof setInterval> | null = null;
  private welcomeTimer: ReturnType<typeof setTimeout> | null = null;
  private typingTimer: ReturnType<typeof setInterval> | null = null;
  private refSeq = 0;
  private readonly requests = new Map<string, PendingRequest>();
  private readonly rooms = new Map<string, RoomState>();
  private readonly outbox: OutboxEntry[] = [];
  private presenceWanted: { userIds?: string[] } | null = null;
  private readonly online = new Map<string, User>();
  private onlineCount = 0;
  private readyWaiters: { resolve: () => void; reject: (e: Error) => void }[] = [];
  private lastTypingSent = new Map<string, number>();

  constructor(options: ClientOptions = {}) {
    super();
    const base = options.url ?? defaultOrigin();
    this.http = new RoomcastHttp({ baseUrl: base, fetch: options.fetch });
    this.wsUrl = options.wsUrl ?? base.replace(/^http/i, "ws").replace(/\/+$/, "") + "/ws";
    this.tokenSource = options.token ?? null;
    this.guestName = options.guestName ?? null;
    this.opts = {
      requestTimeoutMs: options.requestTimeoutMs ?? 15_000,
      aiTimeoutMs: options.aiTimeoutMs ?? 120_000,
      heartbeat: options.heartbeat ?? true,
      typingTimeoutMs: options.typingTimeoutMs ?? 6_000,
      trackGlobal: options.trackGlobal ?? true,
      reconnect: options.reconnect ?? true,
      authMode: options.authMode ?? "query",
    };
    this.backoff = { ...DEFAULT_BACKOFF, ...(options.backoff ?? {}) };
    this.random = options.random ?? Math.random;
    const WS = options.WebSocket ?? (globalThis as { WebSocket?: WebSocketFactory }).WebSocket;
    if (!WS) throw new Error("no WebSocket implementation: pass options.WebSocket");
    this.WS = WS;
    if (this.opts.trackGlobal) this.roomState(GLOBAL_ROOM).wanted = true;
    this.outboxStore = options.outboxStore ?? null;
    this.restoreOutbox();
  }

  private readonly outboxStore: OutboxStore | null;

  /** Messages a previous page left unacknowledged (at most a day old). */
  private restoreOutbox(): void {
    if (!this.outboxStore) return;
    let saved: PendingMessage[] = [];
    try {
      saved = this.outboxStore.load();
    } catch {
      return;
    }
    const dayAgo = Date.now() - 24 * 3600 * 1000;
    for (const p of Array.isArray(saved) ? saved : []) {
      if (!p || typeof p.clientMsgId !== "string" || typeof p.room !== "string" || typeof p.content !== "string") continue;
      if (!(p.createdAt > dayAgo)) continue;
      this.outbox.push({
        clientMsgId: p.clientMsgId,
        room: p.room,
        content: p.content,
        replyTo: typeof p.replyTo === "number" ? p.replyTo : null,
        status: "queued",
        attempts: p.attempts ?? 0,
        createdAt: p.createdAt,
        resolve: () => undefined,
        reject: () => undefined,
      });
    }
  }

  // -------------------------------------------------------------------------
  // Connection

  /**
   * Opens the connection. Resolves once it is identified (welcome, and the
   * guest name or authentication accepted); rejects if the server refuses the
   * identity (e.g. `username_taken`), after which the client stays closed.
   */
  connect(): Promise<void> {
    this.stopped = false;
    const ready = this.whenReady(Infinity);
    if (this.state === "idle" || this.state === "closed") this.open("connect");
    return ready;
  }

  /** Closes for good (no reconnect). Unacknowledged messages stay in the outbox. */
  close(): void {
    this.stopped = true;
    this.clearReconnect();
    const ws = this.ws;
    if (ws) {
      // Tells the state (closed) and fails what was waiting for a reply.
      this.handleClosed(ws, CloseCode.Normal, "closed by the client");
      try {
        ws.close(CloseCode.Normal, "bye");
      } catch {
        // already closing
      }
    } else if (this.state !== "closed") {
      this.setState({ state: "closed", code: CloseCode.Normal });
      this.failReadyWaiters(new ConnectionClosedError(CloseCode.Normal, "closed by the client"));
    }
  }

  /** Drops the socket and reconnects at once (e.g. on the browser's `online` event). */
  reconnectNow(): void {
    if (this.stopped) return;
    this.attempt = 0;
    if (this.ws) this.dropSocket("reconnect requested");
    else {
      this.clearReconnect();
      this.open("reconnect");
    }
  }

  /** Changes the identity used from the next connect on (e.g. after a login). */
  setIdentity(identity: { token?: string | TokenProvider | null; guestName?: string | null }): void {
    if ("token" in identity) this.tokenSource = identity.token ?? null;
    if ("guestName" in identity) this.guestName = identity.guestName ?? null;
  }

  /** Resolves when the connection is usable; rejects after `timeoutMs`. */
  whenReady(timeoutMs = this.opts.requestTimeoutMs): Promise<void> {
    if (this.state === "open") return Promise.resolve();
    return new Promise<void>((resolve, reject) => {
      let timer: ReturnType<typeof setTimeout> | null = null;
      const waiter = {
        resolve: () => {
          if (timer) clearTimeout(timer);
          resolve();
        },
        reject: (e: Error) => {
          if (timer) clearTimeout(timer);
          reject(e);
        },
      };
      this.readyWaiters.push(waiter);
      if (Number.isFinite(timeoutMs)) {
        timer = setTimeout(() => {
          this.readyWaiters = this.readyWaiters.filter((w) => w !== waiter);
          reject(new ConnectionClosedError());
        }, timeoutMs);
      }
    });
  }

  private async open(reason: TokenReason): Promise<void> {
    this.clearReconnect();
    const gen = ++this.gen;
    this.setState({ state: this.everReady ? "reconnecting" : "connecting" });
    let token: string | null = null;
    try {
      token = typeof this.tokenSource === "function" ? await this.tokenSource(reason) : this.tokenSource;
    } catch (err) {
      this.emit("error", asError(err));
      if (gen === this.gen) this.scheduleReconnect();
      return;
    }
    if (gen !== this.gen || this.stopped) return;
    this.token = token;
    let url = this.wsUrl;
    if (token && this.opts.authMode === "query" && !this.failedBeforeWelcome) {
      url += (url.includes("?") ? "&" : "?") + "token=" + encodeURIComponent(token);
    }
    let ws: WebSocketLike;
    try {
      ws = new this.WS(url);
    } catch (err) {
      this.emit("error", asError(err));
      this.scheduleReconnect();
      return;
    }
    this.ws = ws;
    ws.onmessage = (ev) => {
      if (this.ws !== ws) return;
      this.onText(typeof ev.data === "string" ? ev.data : String(ev.data));
    };
    ws.onclose = (ev) => this.handleClosed(ws, ev.code, ev.reason);
    ws.onerror = () => {
      // A close event always follows; nothing to do here.
    };
    // The welcome must come soon after the upgrade, or the socket is useless.
    this.welcomeTimer = setTimeout(() => {
      if (this.ws === ws && !this.welcome) this.dropSocket("no welcome");
    }, this.opts.requestTimeoutMs);
  }

  /** Closes the current socket as lost, without waiting for a close handshake. */
  private dropSocket(reason: string): void {
    const ws = this.ws;
    if (!ws) return;
    this.handleClosed(ws, 1006, reason);
    try {
      ws.close(CloseCode.Normal, reason);
    } catch {
      // already closed
    }
  }

  private handleClosed(ws: WebSocketLike, code: number, reason: string): void {
    if (this.ws !== ws) return;
    this.ws = null;
    this.failedBeforeWelcome = this.welcome === null;
    this.welcome = null;
    this.connectionId = null;
    this.lastCloseCode = code;
    for (const timer of [this.welcomeTimer]) if (timer) clearTimeout(timer);
    this.welcomeTimer = null;
    if (this.heartbeatTimer) clearInterval(this.heartbeatTimer);
    this.heartbeatTimer = null;
    if (this.typingTimer) clearInterval(this.typingTimer);
    this.typingTimer = null;

    const closed = new ConnectionClosedError(code, reason);
    const requests = [...this.requests.values()];
    this.requests.clear();
    for (const r of requests) {
      if (r.timer) clearTimeout(r.timer);
      r.onError(closed);
    }
    // Messages on the wire without an ack go back to the queue: they are sent
    // again, with the same client_msg_id, once the room is joined again.
    for (const entry of this.outbox) entry.status = "queued";
    for (const room of this.rooms.values()) {
      room.joinedGen = 0;
      room.recovering = false;
      room.buffer = [];
      if (room.typing.size > 0) {
        room.typing.clear();
        this.emit("typing", { room: room.name, users: [] });
      }
    }
    this.emitPendingAll();

    if (this.stopped || !this.opts.reconnect || FINAL_CLOSE_CODES.has(code)) {
      this.stopped = true;
      this.setState({ state: "closed", code, reason });
      this.failReadyWaiters(closed);
      for (const room of this.rooms.values()) for (const w of room.joinWaiters.splice(0)) w.reject(closed);
      return;
    }
    this.scheduleReconnect(code, reason);
  }

  private scheduleReconnect(code?: number, reason?: string): void {
    if (this.stopped) return;
    this.clearReconnect();
    let delayMs = backoffDelay(this.attempt, this.backoff, this.random);
    // A full server asks for patience: wait at least the longest delay's half.
    if (code === CloseCode.ConnectionLimit) delayMs = Math.max(delayMs, this.backoff.maxDelayMs / 2);
    const attempt = this.attempt++;
    this.setState({ state: "reconnecting", code, reason, attempt, delayMs });
    this.reconnectTimer = setTimeout(() => {
      this.reconnectTimer = null;
      void this.open("reconnect");
    }, delayMs);
  }

  private clearReconnect(): void {
    if (this.reconnectTimer) clearTimeout(this.reconnectTimer);
    this.reconnectTimer = null;
  }

  private setState(change: StateChange): void {
    this.state = change.state;
    this.emit("state", change);
  }

  private failReadyWaiters(err: Error): void {
    const waiters = this.readyWaiters;
    this.readyWaiters = [];
    for (const w of waiters) w.reject(err);
  }

  // -------------------------------------------------------------------------
  // Frames in

  private onText(text: string): void {
    let frame: ServerFrame;
    try {
      frame = JSON.parse(text) as ServerFrame;
    } catch {
      return;
    }
    if (!frame || typeof frame !== "object" || typeof frame.type !== "string") return;
    this.emit("frame", frame);

    if (frame.ref !== undefined) {
      const pending = this.requests.get(frame.ref);
      if (pending) {
        if (frame.type === "error") {
          this.finishRequest(frame.ref, pending);
          pending.onError(RoomcastError.fromFrame(frame));
        } else {
          if (pending.onFrame(frame)) this.finishRequest(frame.ref, pending);
          else this.armTimer(frame.ref, pending);
        }
        // Replies that are also broadcasts (user_join to oneself) fall through.
        if (frame.type !== "user_join" && frame.type !== "user_leave") return;
      }
    }
    this.onEvent(frame);
  }

  private onEvent(frame: ServerFrame): void {
    switch (frame.type) {
      case "welcome":
        void this.onWelcome(frame);
        break;
      case "chat_message": {
        const room = this.rooms.get(frame.message.room);
        if (room) {
          this.ingest(room, [frame.message], true);
          this.clearTyping(room, frame.message.user.id);
        }
        break;
      }
      case "file_shared": {
        const room = this.rooms.get(frame.room);
        if (room && frame.message) this.ingest(room, [frame.message], true);
        this.emit("file_shared", frame);
        break;
      }
      case "user_typing":
        this.onTyping(frame.room ?? GLOBAL_ROOM, frame.user, frame.is_typing !== false);
        break;
      case "presence": {
        const room = this.rooms.get(frame.room);
        if (!room || !room.joinedGen) break;
        if (room.large) {
          // Events resume when the room is back under the threshold: the list
          // kept from before is stale, so fetch it again.
          room.large = false;
          void this.refreshMembers(room.name).catch((e) => this.emit("error", asError(e)));
        }
        if (frame.event === "join") {
          if (!room.members.has(frame.user.id)) {
            room.members.set(frame.user.id, frame.user);
            room.memberCount += 1;
          }
        } else if (room.members.delete(frame.user.id) || room.memberCount > room.members.size) {
          room.memberCount = Math.max(0, room.memberCount - 1);
          this.clearTyping(room, frame.user.id);
        }
        this.emitMembers(room);
        break;
      }
      case "presence_count": {
        const room = this.rooms.get(frame.room);
        if (!room) break;
        room.large = true;
        room.memberCount = frame.member_count;
        this.emitMembers(room);
        break;
      }
      case "user_join":
        if (this.presenceWanted && !this.online.has(frame.user.id)) {
          this.online.set(frame.user.id, frame.user);
          this.onlineCount += 1;
          this.emitOnline();
        }
        this.emit("user_join", frame.user);
        break;
      case "user_leave":
        if (this.online.delete(frame.user.id)) {
          this.onlineCount = Math.max(0, this.onlineCount - 1);
          this.emitOnline();
        }
        this.emit("user_leave", frame.user);
        break;
      case "error":
        this.onUnsolicitedError(frame);
        break;
      default:
        break;
    }
  }

  private onUnsolicitedError(frame: ErrorFrame): void {
    const err = RoomcastError.fromFrame(frame);
    if (frame.error_code === "token_expired" && typeof this.tokenSource === "function") {
      // Renew within the grace period, on the same connection.
      const source = this.tokenSource;
      void (async () => {
        const token = await source("expired");
        if (!token) throw err;
        this.token = token;
        await this.request({ type: "authentication", token }, { whenNotReady: "send" });
      })().catch((e) => this.emit("error", asError(e)));
      return;
    }
    this.emit("error", err);
  }

  private async onWelcome(welcome: WelcomeFrame): Promise<void> {
    const ws = this.ws;
    const gen = this.gen;
    if (this.welcomeTimer) clearTimeout(this.welcomeTimer);
    this.welcomeTimer = null;
    this.welcome = welcome;
    this.connectionId = welcome.connection_id;
    this.user = welcome.user;
    this.emit("welcome", welcome);
    try {
      if (this.token && (this.opts.authMode === "frame" || !welcome.authenticated)) {
        const ok = await this.request({ type: "authentication", token: this.token }, { whenNotReady: "send" });
        this.user = ok.user;
      } else if (!welcome.authenticated && this.guestName) {
        this.user = await this.nameGuest(this.guestName);
      }
    } catch (err) {
      if (gen !== this.gen) return;
      if (err instanceof RoomcastError && !RETRYABLE_SEND_ERRORS.has(err.code)) {
        // The identity is refused (bad token, name taken): reconnecting would
        // be refused the same way. The application must log in again.
        this.stopped = true;
        this.failReadyWaiters(err);
        if (ws) {
          this.handleClosed(ws, CloseCode.Normal, err.message);
          try {
            ws.close(CloseCode.Normal, "identity refused");
          } catch {
            // already closed
          }
        }
        this.emit("error", err);
        return;
      }
      this.emit("error", asError(err));
      this.dropSocket("identification failed");
      return;
    }
    if (gen !== this.gen) return;

    const reconnected = this.everReady;
    this.everReady = true;
    this.attempt = 0;
    this.setState({ state: "open" });
    this.startHeartbeat(welcome.heartbeat_interval_ms);
    this.typingTimer = setInterval(() => this.sweepTyping(), 1000);
    const waiters = this.readyWaiters;
    this.readyWaiters = [];
    for (const w of waiters) w.resolve();
    this.emit("ready", { user: this.user, connectionId: welcome.connection_id, reconnected });

    if (this.presenceWanted) {
      void this.sendPresenceSubscribe().catch((e) => this.emit("error", asError(e)));
    }
    for (const room of this.rooms.values()) {
      if (!room.wanted) continue;
      if (room.name === GLOBAL_ROOM) void this.recoverGlobal(room, welcome);
      else void this.recoverRoom(room).catch(() => undefined);
    }
  }

  /** `user_join` with the guest name; a name still held by our own dropped connection is retried. */
  private async nameGuest(name: string): Promise<User> {
    for (let tries = 0; ; tries++) {
      try {
        const reply = await this.request({ type: "user_join", username: name }, { whenNotReady: "send" });
        return reply.user;
      } catch (err) {
        if (this.everReady && tries < 8 && err instanceof RoomcastError && err.code === "username_taken") {
          await sleep(750);
          continue;
        }
        throw err;
      }
    }
  }

  private startHeartbeat(intervalMs: number): void {
    if (!this.opts.heartbeat || !(intervalMs > 0)) return;
    const gen = this.gen;
    this.heartbeatTimer = setInterval(() => {
      if (gen !== this.gen) return;
      // A pong that does not come within the interval means the network is
      // gone even if the browser has not noticed: reconnect.
      this.request({ type: "ping" }, { timeoutMs: Math.min(intervalMs, 20_000), whenNotReady: "reject" }).catch(
        (err) => {
          if (err instanceof TimeoutError && gen === this.gen) this.dropSocket("heartbeat timeout");
        },
      );
    }, intervalMs);
  }

  // -------------------------------------------------------------------------
  // Requests

  /**
   * Sends a frame with a fresh `ref` and resolves with the reply carrying it.
   * Rejects with RoomcastError on an `error` with that ref, TimeoutError after
   * `timeoutMs`, ConnectionClosedError if the connection goes down first. While
   * (re)connecting it waits for the connection, up to the timeout.
   */
  request<T extends ClientFrame["type"]>(
    frame: Extract<ClientFrame, { type: T }>,
    options: { timeoutMs?: number; whenNotReady?: "wait" | "send" | "reject" } = {},
  ): Promise<ReplyOf<T>> {
    return this.requestRaw(frame, options, (f) => f as ReplyOf<T>);
  }

  private async requestRaw<R>(
    frame: ClientFrame,
    options: { timeoutMs?: number; whenNotReady?: "wait" | "send" | "reject"; onRef?: (ref: string) => void },
    accept: (f: ServerFrame) => R | undefined,
    onOther?: (f: ServerFrame) => void,
  ): Promise<R> {
    const timeoutMs = options.timeoutMs ?? this.opts.requestTimeoutMs;
    const mode = options.whenNotReady ?? "wait";
    if (this.state !== "open" && mode !== "send") {
      if (mode === "reject") throw new ConnectionClosedError();
      await this.whenReady(timeoutMs);
    }
    const ws = this.ws;
    if (!ws) throw new ConnectionClosedError();
    const ref = "r" + (++this.refSeq).toString(36);
    options.onRef?.(ref);
    return new Promise<R>((resolve, reject) => {
      const pending: PendingRequest = {
        type: frame.type,
        timeoutMs,
        timer: null,
        onFrame: (f) => {
          const value = accept(f);
          if (value !== undefined) {
            resolve(value);
            return true;
          }
          onOther?.(f);
          return false;
        },
        onError: reject,
      };
      this.requests.set(ref, pending);
      this.armTimer(ref, pending);
      try {
        ws.send(JSON.stringify({ ...frame, ref }));
      } catch (err) {
        this.finishRequest(ref, pending);
        reject(new ConnectionClosedError(undefined, asError(err).message));
      }
    });
  }

  private armTimer(ref: string, pending: PendingRequest): void {
    if (pending.timer) clearTimeout(pending.timer);
    if (!Number.isFinite(pending.timeoutMs)) return;
    pending.timer = setTimeout(() => {
      if (this.requests.get(ref) !== pending) return;
      this.requests.delete(ref);
      pending.onError(new TimeoutError(pending.type, pending.timeoutMs));
    }, pending.timeoutMs);
  }

  private finishRequest(ref: string, pending: PendingRequest): void {
    if (pending.timer) clearTimeout(pending.timer);
    if (this.requests.get(ref) === pending) this.requests.delete(ref);
  }

  /** Sends a frame that has no reply (e.g. `user_typing`); false when not connected. */
  sendRaw(frame: ClientFrame): boolean {
    if (!this.ws || this.state !== "open") return false;
    try {
      this.ws.send(JSON.stringify(frame));
      return true;
    } catch {
      return false;
    }
  }

  // -------------------------------------------------------------------------
  // Rooms and messages

  /**
   * Joins a room, and keeps it joined across reconnects. Messages arrive as
   * `message` events: first the recent ones (or, with `sinceId`, the ones after
   * it), then live ones.
   */
  async joinRoom(name: string, options: { sinceId?: number } = {}): Promise<RoomSnapshot> {
    if (name === GLOBAL_ROOM) return this.roomSnapshot(name)!;
    const room = this.roomState(name);
    room.wanted = true;
    if (options.sinceId !== undefined && (room.lastId === null || options.sinceId > room.lastId)) {
      room.lastId = options.sinceId;
    }
    if (room.joinedGen === this.gen && this.state === "open") return this.roomSnapshot(name)!;
    if (this.state === "open") {
      await this.recoverRoom(room);
    } else if (this.state === "closed" && this.stopped) {
      throw new ConnectionClosedError(this.lastCloseCode ?? undefined);
    } else {
      await new Promise<RoomJoinedFrame>((resolve, reject) => room.joinWaiters.push({ resolve, reject }));
    }
    return this.roomSnapshot(name)!;
  }

  /** Leaves a room; its messages and members are forgotten. */
  async leaveRoom(name: string): Promise<void> {
    const room = this.rooms.get(name);
    if (!room || name === GLOBAL_ROOM) return;
    room.wanted = false;
    this.rooms.delete(name);
    this.dropOutbox(name, new RoomcastError("not_found", `left room ${name}`));
    for (const w of room.joinWaiters.splice(0)) w.reject(new RoomcastError("not_found", `left room ${name}`));
    if (room.joinedGen && this.state === "open") {
      await this.request({ type: "room_leave", room: name }).catch((err) => {
        if (!(err instanceof RoomcastError && err.code === "not_found")) throw err;
      });
    }
  }

  /** Rooms the application is in (not `global`). */
  roomNames(): string[] {
    return [...this.rooms.values()].filter((r) => r.wanted && r.name !== GLOBAL_ROOM).map((r) => r.name);
  }

  roomSnapshot(name: string): RoomSnapshot | null {
    const room = this.rooms.get(name);
    if (!room) return null;
    return {
      name: room.name,
      joined: room.name === GLOBAL_ROOM ? this.state === "open" : room.joinedGen === this.gen && room.joinedGen > 0,
      lastId: room.lastId,
      oldestId: room.oldestId,
      members: sortUsers([...room.members.values()]),
      memberCount: room.memberCount,
      large: room.large,
      typing: [...room.typing.values()].map((t) => t.user),
    };
  }

  /**
   * Joins (or re-joins) a room on this connection and recovers what was
   * missed: `room_join` with `since_id`, then `history` `after_id` pages while
   * more follow. Live messages wait meanwhile, so they come after.
   */
  private recoverRoom(room: RoomState): Promise<void> {
    if (room.joining) return room.joining;
    const gen = this.gen;
    const joining = this.recoverRoomOnce(room).finally(() => {
      if (room.joining === joining) room.joining = null;
    });
    room.joining = joining;
    void joining.catch(() => undefined);
    // A transient refusal (rate limit, storage busy) is tried again later.
    joining.catch((err: unknown) => {
      if (err instanceof RoomcastError && RETRYABLE_SEND_ERRORS.has(err.code) && room.wanted && gen === this.gen) {
        setTimeout(() => {
          if (room.wanted && gen === this.gen && !room.joinedGen) void this.recoverRoom(room).catch(() => undefined);
        }, err.retryAfterMs ?? 2000);
      }
    });
    return joining;
  }

  private async recoverRoomOnce(room: RoomState): Promise<void> {
    const gen = this.gen;
    room.recovering = true;
    room.buffer = [];
    let delivered = 0;
    try {
      const since = room.lastId;
      const joined = await this.request(
        since === null ? { type: "room_join", room: room.name } : { type: "room_join", room: room.name, since_id: since },
        { whenNotReady: "reject" },
      );
      if (gen !== this.gen) return;
      room.joinedGen = gen;
      room.members = new Map(joined.members.map((u) => [u.id, u]));
      room.memberCount = joined.member_count;
      room.large = false;
      this.emitMembers(room);
      if (since !== null && joined.recent_messages.length === 0 && (await this.storeWasReset(room, since, gen))) {
        const newest = await this.request({ type: "history", room: room.name }, { whenNotReady: "reject" });
        if (gen !== this.gen) return;
        delivered += this.deliver(room, newest.messages);
      } else {
        delivered += this.deliver(room, joined.recent_messages);
      }
      for (const w of room.joinWaiters.splice(0)) w.resolve(joined);
      // Sending may start now that the room is joined on this connection.
      this.flushOutbox(room.name);
      let more = joined.missed && since !== null;
      while (more && room.lastId !== null) {
        const page = await this.request(
          { type: "history", room: room.name, after_id: room.lastId, limit: 200 },
          { whenNotReady: "reject" },
        );
        if (gen !== this.gen) return;
        delivered += this.deliver(room, page.messages);
        more = page.has_more && page.messages.length > 0;
      }
      delivered += this.releaseBuffer(room);
      this.emit("recovered", { room: room.name, count: delivered });
    } catch (err) {
      if (gen !== this.gen) return; // the connection dropped: recovery starts over after the reconnect
      room.recovering = false;
      room.buffer = [];
      if (err instanceof RoomcastError && !RETRYABLE_SEND_ERRORS.has(err.code)) {
        // The server refuses the room (private, limits): stop wanting it.
        room.wanted = false;
        this.rooms.delete(room.name);
        this.dropOutbox(room.name, err);
        for (const w of room.joinWaiters.splice(0)) w.reject(err);
        this.emit("error", err);
        throw err;
      }
      if (err instanceof TimeoutError) this.dropSocket("room recovery timed out");
      throw err;
    }
  }

  /** The global room cannot be joined: the welcome brings its newest messages, `history` the rest. */
  private async recoverGlobal(room: RoomState, welcome: WelcomeFrame): Promise<void> {
    const gen = this.gen;
    room.joinedGen = gen;
    room.recovering = true;
    room.buffer = [];
    let delivered = 0;
    try {
      if (room.lastId === null) {
        let recent = welcome.recent_messages;
        if (recent.length === 0 && this.user) {
          // A guest named after the welcome got none: ask for the newest page.
          recent = (await this.request({ type: "history", room: GLOBAL_ROOM }, { whenNotReady: "reject" })).messages;
        }
        if (gen !== this.gen) return;
        delivered += this.deliver(room, recent);
      } else {
        // Page forward from the last id we hold, so nothing in between is lost.
        const since = room.lastId;
        let more = true;
        let first = true;
        while (more) {
          const page = await this.request(
            { type: "history", room: GLOBAL_ROOM, after_id: room.lastId ?? 0, limit: 200 },
            { whenNotReady: "reject" },
          );
          if (gen !== this.gen) return;
          if (first && page.messages.length === 0 && (await this.storeWasReset(room, since, gen))) {
            if (gen !== this.gen) return;
            const newest = await this.request({ type: "history", room: GLOBAL_ROOM }, { whenNotReady: "reject" });
            if (gen !== this.gen) return;
            delivered += this.deliver(room, newest.messages);
            break;
          }
          first = false;
          delivered += this.deliver(room, page.messages);
          more = page.has_more && page.messages.length > 0;
        }
      }
      this.flushOutbox(GLOBAL_ROOM);
      delivered += this.releaseBuffer(room);
      this.emit("recovered", { room: GLOBAL_ROOM, count: delivered });
    } catch (err) {
      if (gen !== this.gen) return;
      room.recovering = false;
      room.buffer = [];
      // Global history may be closed to this connection: deliver live messages anyway.
      this.flushOutbox(GLOBAL_ROOM);
      if (err instanceof TimeoutError) this.dropSocket("global recovery timed out");
    }
  }

  /**
   * Whether the room's newest stored message is older than the last one we
   * delivered: ids only grow, so the store was emptied (a restart on an
   * in-memory database). Then the room is reset and `reset` emitted.
   */
  private async storeWasReset(room: RoomState, since: number, gen: number): Promise<boolean> {
    const newest = await this.request({ type: "history", room: room.name, limit: 1 }, { whenNotReady: "reject" });
    if (gen !== this.gen) return false;
    const top = newest.messages.at(-1)?.id ?? 0;
    if (top >= since) return false;
    room.lastId = null;
    room.oldestId = null;
    // Live messages held back meanwhile belong to the new store: keep them.
    this.emit("reset", { room: room.name });
    return true;
  }

  private releaseBuffer(room: RoomState): number {
    room.recovering = false;
    const buffered = room.buffer;
    room.buffer = [];
    return this.deliver(room, buffered);
  }

  /** Live messages wait while the room recovers; otherwise they go through `deliver`. */
  private ingest(room: RoomState, messages: Message[], live: boolean): void {
    if (live && (room.recovering || !room.joinedGen)) {
      room.buffer.push(...messages);
      return;
    }
    this.deliver(room, messages);
  }

  /**
   * Hands messages to the application in id order, each once: a message whose
   * id is not above the highest one delivered is a duplicate (or one already
   * recovered) and is dropped. Returns how many were delivered.
   */
  private deliver(room: RoomState, messages: Message[]): number {
    if (messages.length === 0) return 0;
    const sorted = [...messages].sort((a, b) => a.id - b.id);
    let count = 0;
    for (const m of sorted) {
      if (room.lastId !== null && m.id <= room.lastId) continue;
      room.lastId = m.id;
      if (room.oldestId === null || m.id < room.oldestId) room.oldestId = m.id;
      count += 1;
      this.emit("message", m);
    }
    return count;
  }

  /**
   * Reads older messages (scroll-back), before the oldest one delivered or
   * paged so far. They are returned, not emitted as `message` events.
   */
  async loadOlder(name: string, limit = 50): Promise<{ messages: Message[]; hasMore: boolean }> {
    const room = this.rooms.get(name);
    const beforeId = room?.oldestId ?? undefined;
    const page = await this.history(name, { beforeId, limit });
    if (room && page.messages.length > 0) {
      const first = page.messages[0]!.id;
      if (room.oldestId === null || first < room.oldestId) room.oldestId = first;
    }
    return { messages: page.messages, hasMore: page.has_more };
  }

  /** The `history` request, as is. */
  history(room: string, query: { beforeId?: number; afterId?: number; limit?: number } = {}): Promise<HistoryReplyFrame> {
    return this.request({
      type: "history",
      room,
      ...(query.beforeId !== undefined ? { before_id: query.beforeId } : {}),
      ...(query.afterId !== undefined ? { after_id: query.afterId } : {}),
      ...(query.limit !== undefined ? { limit: query.limit } : {}),
    });
  }

  /**
   * Sends a chat message idempotently. It waits in the outbox until its room
   * is joined on a live connection, and is sent again with the same
   * `client_msg_id` after a reconnect until acknowledged. Resolves with the
   * `message_ack`; rejects when the server refuses it (validation, forbidden).
   */
  send(
    room: string | null,
    content: string,
    options: { replyTo?: number; clientMsgId?: string } = {},
  ): Promise<MessageAckFrame> {
    const target = room ?? GLOBAL_ROOM;
    return new Promise<MessageAckFrame>((resolve, reject) => {
      const entry: OutboxEntry = {
        clientMsgId: options.clientMsgId ?? this.newClientMsgId(),
        room: target,
        content,
        replyTo: options.replyTo ?? null,
        status: "queued",
        attempts: 0,
        createdAt: Date.now(),
        resolve,
        reject,
      };
      this.outbox.push(entry);
      this.emitPending(target);
      this.flushOutbox(target);
    });
  }

  /** A fresh `client_msg_id` (at most 64 characters). */
  newClientMsgId(): string {
    const c = (globalThis as { crypto?: { randomUUID?: () => string } }).crypto;
    if (c?.randomUUID && this.random === Math.random) return c.randomUUID();
    let s = "";
    for (let i = 0; i < 4; i++) s += Math.floor(this.random() * 0x10000_0000).toString(36);
    return "m-" + Date.now().toString(36) + "-" + s;
  }

  /** Messages of a room waiting for their `message_ack`, oldest first. */
  pending(room: string): PendingMessage[] {
    return this.outbox.filter((e) => e.room === room).map(publicPending);
  }

  private roomReady(name: string): boolean {
    if (this.state !== "open" || !this.ws) return false;
    const room = this.rooms.get(name);
    if (name === GLOBAL_ROOM) return !room || room.joinedGen === this.gen || !room.wanted;
    return !!room && room.joinedGen === this.gen;
  }

  private flushOutbox(name: string): void {
    if (!this.roomReady(name)) return;
    for (const entry of this.outbox) {
      if (entry.room !== name || entry.status !== "queued") continue;
      this.sendEntry(entry);
    }
  }

  private sendEntry(entry: OutboxEntry): void {
    entry.status = "sent";
    entry.attempts += 1;
    this.emitPending(entry.room);
    const frame: ClientFrame = {
      type: "chat_message",
      content: entry.content,
      client_msg_id: entry.clientMsgId,
      ...(entry.room !== GLOBAL_ROOM ? { room: entry.room } : {}),
      ...(entry.replyTo !== null ? { reply_to: entry.replyTo } : {}),
    };
    this.request(frame, { whenNotReady: "reject" }).then(
      (ack) => {
        const i = this.outbox.indexOf(entry);
        if (i >= 0) this.outbox.splice(i, 1);
        this.emitPending(entry.room);
        entry.resolve(ack);
      },
      (err: unknown) => {
        if (!this.outbox.includes(entry)) return;
        if (err instanceof RoomcastError && !RETRYABLE_SEND_ERRORS.has(err.code)) {
          this.outbox.splice(this.outbox.indexOf(entry), 1);
          this.emitPending(entry.room);
          entry.reject(err);
          return;
        }
        // Lost connection: the reconnect sends it again. Timeout or a
        // transient refusal: send it again here, same client_msg_id.
        entry.status = "queued";
        this.emitPending(entry.room);
        if (err instanceof ConnectionClosedError) return;
        const wait = err instanceof RoomcastError ? (err.retryAfterMs ?? 1000) : 0;
        setTimeout(() => {
          if (entry.status === "queued" && this.outbox.includes(entry) && this.roomReady(entry.room)) {
            this.sendEntry(entry);
          }
        }, wait);
      },
    );
  }

  private dropOutbox(room: string, err: Error): void {
    for (let i = this.outbox.length - 1; i >= 0; i--) {
      const entry = this.outbox[i]!;
      if (entry.room !== room) continue;
      this.outbox.splice(i, 1);
      entry.reject(err);
    }
    this.emitPending(room);
  }

  private emitPending(room: string): void {
    if (this.outboxStore) {
      try {
        this.outboxStore.save(this.outbox.map(publicPending));
      } catch {
        // Storage full or unavailable: the outbox still works in memory.
      }
    }
    this.emit("pending", { room, pending: this.pending(room) });
  }

  private emitPendingAll(): void {
    const rooms = new Set(this.outbox.map((e) => e.room));
    for (const room of rooms) this.emitPending(room);
  }

  // -------------------------------------------------------------------------
  // Typing

  /**
   * Tells the room whether this user is typing. Repeated `true` within a few
   * seconds is sent once; call with `false` when the composer is emptied or sent.
   */
  setTyping(room: string | null, isTyping: boolean): void {
    const key = room ?? GLOBAL_ROOM;
    const now = Date.now();
    const last = this.lastTypingSent.get(key);
    if (isTyping) {
      if (last !== undefined && now - last < this.opts.typingTimeoutMs / 2) return;
      this.lastTypingSent.set(key, now);
    } else {
      if (last === undefined) return;
      this.lastTypingSent.delete(key);
    }
    this.sendRaw({ type: "user_typing", ...(room ? { room } : {}), is_typing: isTyping });
  }

  private onTyping(roomName: string, user: User, isTyping: boolean): void {
    const room = this.rooms.get(roomName);
    if (!room || (this.user && user.id === this.user.id)) return;
    if (isTyping) room.typing.set(user.id, { user, until: Date.now() + this.opts.typingTimeoutMs });
    else if (!room.typing.delete(user.id)) return;
    this.emit("typing", { room: roomName, users: [...room.typing.values()].map((t) => t.user) });
  }

  private clearTyping(room: RoomState, userId: string): void {
    if (room.typing.delete(userId)) {
      this.emit("typing", { room: room.name, users: [...room.typing.values()].map((t) => t.user) });
    }
  }

  private sweepTyping(): void {
    const now = Date.now();
    for (const room of this.rooms.values()) {
      let changed = false;
      for (const [id, t] of room.typing) {
        if (t.until <= now) {
          room.typing.delete(id);
          changed = true;
        }
      }
      if (changed) this.emit("typing", { room: room.name, users: [...room.typing.values()].map((t) => t.user) });
    }
  }

  // -------------------------------------------------------------------------
  // Presence

  /**
   * Watches users coming online and going offline (every user without
   * `userIds`: fine for a small team). Kept across reconnects. The `online`
   * event tells the current list.
   */
  async subscribePresence(userIds?: string[]): Promise<{ users: User[]; count: number }> {
    this.presenceWanted = userIds ? { userIds: [...userIds] } : {};
    return this.sendPresenceSubscribe();
  }

  private async sendPresenceSubscribe(): Promise<{ users: User[]; count: number }> {
    const wanted = this.presenceWanted ?? {};
    const state = await this.request(
      wanted.userIds ? { type: "presence_subscribe", user_ids: wanted.userIds } : { type: "presence_subscribe" },
    );
    this.online.clear();
    for (const u of state.members) this.online.set(u.id, u);
    this.onlineCount = state.member_count;
    this.emitOnline();
    return { users: sortUsers([...this.online.values()]), count: this.onlineCount };
  }

  async unsubscribePresence(): Promise<void> {
    this.presenceWanted = null;
    this.online.clear();
    this.onlineCount = 0;
    this.emitOnline();
    if (this.state === "open") await this.request({ type: "presence_unsubscribe" });
  }

  /** Users online among those watched (at most 100 listed by the server at first). */
  onlineUsers(): { users: User[]; count: number } {
    return { users: sortUsers([...this.online.values()]), count: this.onlineCount };
  }

  /** A page of a room's members (`presence`); works in large rooms too. */
  async members(room: string, offset = 0, limit = 100): Promise<PresenceStateFrame> {
    return this.request({ type: "presence", room, offset, limit });
  }

  /** Fetches the first page of members again and replaces the kept list. */
  async refreshMembers(name: string): Promise<void> {
    const page = await this.members(name, 0, 100);
    const room = this.rooms.get(name);
    if (!room) return;
    room.members = new Map(page.members.map((u) => [u.id, u]));
    room.memberCount = page.member_count;
    this.emitMembers(room);
  }

  /** Takes this user offline without closing (`user_leave`): every room is left. */
  async goOffline(): Promise<void> {
    await this.request({ type: "user_leave" });
    for (const room of this.rooms.values()) if (room.name !== GLOBAL_ROOM) room.joinedGen = 0;
  }

  private emitMembers(room: RoomState): void {
    this.emit("members", {
      room: room.name,
      members: sortUsers([...room.members.values()]),
      memberCount: room.memberCount,
      large: room.large,
    });
  }

  private emitOnline(): void {
    this.emit("online", { users: sortUsers([...this.online.values()]), count: this.onlineCount });
  }

  // -------------------------------------------------------------------------
  // Assistant

  /**
   * Asks the assistant. The answer streams in: iterate the returned AiStream
   * for the text deltas, await `.result` for the final `ai_response`, call
   * `.cancel()` to stop it (`ai_cancel`).
   */
  ask(prompt: string, options: { room?: string; context?: boolean } = {}): AiStream {
    const stream = new AiStream(async (requestId) => {
      await this.request({ type: "ai_cancel", request_id: requestId });
    });
    const frame: ClientFrame = {
      type: "ai_request",
      prompt,
      ...(options.room ? { room: options.room } : {}),
      ...(options.context !== undefined ? { context: options.context } : {}),
    };
    let ref: string | null = null;
    this.requestRaw<AiResponseFrame>(
      frame,
      { timeoutMs: this.opts.aiTimeoutMs, onRef: (r) => (ref = r) },
      (f) => (f.type === "ai_response" ? f : undefined),
      (f) => {
        if (f.type === "ai_response_chunk") stream.pushChunk(f.request_id, f.delta);
      },
    ).then(
      (answer) => stream.finish(answer),
      (err: unknown) => stream.fail(asError(err)),
    );
    // Once cancelled, late frames of the request are not wanted: forget its ref.
    void stream.result.catch((err) => {
      if (err instanceof RoomcastError && err.code === "cancelled" && ref !== null) {
        const pending = this.requests.get(ref);
        if (pending) this.finishRequest(ref, pending);
      }
    });
    return stream;
  }

  // -------------------------------------------------------------------------
  // Files

  /**
   * Shares a file in a room: `file_upload_request`, then a PUT of the bytes to
   * the authorized URL. The room then gets one `file_shared` frame whose
   * `message` (content: the file name, `attachment`: the file) is delivered
   * like any other message. The declared type is `contentType`, else the
   * blob's type, else one guessed from the name (`contentTypeFor`): the server
   * checks the first bytes against it. Resolves with the stored file.
   */
  async uploadFile(
    room: string | null,
    blob: Blob,
    options: { filename?: string; contentType?: string } = {},
  ): Promise<FileInfo> {
    const filename = options.filename ?? (blob as Blob & { name?: string }).name ?? "file";
    const contentType = contentTypeFor(filename, options.contentType || blob.type);
    const authorized = await this.request({
      type: "file_upload_request",
      filename,
      size: blob.size,
      content_type: contentType,
      ...(room ? { room } : {}),
    });
    return this.http.upload(authorized, blob, contentType);
  }

  /** Downloads a shared file with this client's token. */
  downloadFile(file: Pick<FileInfo, "url"> | string): Promise<Blob> {
    return this.http.download(this.token, file);
  }

  // -------------------------------------------------------------------------

  private roomState(name: string): RoomState {
    let room = this.rooms.get(name);
    if (!room) {
      room = {
        name,
        wanted: false,
        joinedGen: 0,
        lastId: null,
        oldestId: null,
        recovering: false,
        buffer: [],
        members: new Map(),
        memberCount: 0,
        large: false,
        typing: new Map(),
        joining: null,
        joinWaiters: [],
      };
      this.rooms.set(name, room);
    }
    return room;
  }
}

/** The direct reply to each client frame type. */
export interface ReplyMap {
  authentication: ServerFrameOf<"auth_success">;
  chat_message: ServerFrameOf<"message_ack">;
  user_typing: never;
  user_join: ServerFrameOf<"user_join">;
  user_leave: ServerFrameOf<"user_leave">;
  presence_subscribe: ServerFrameOf<"presence_state">;
  presence_unsubscribe: ServerFrameOf<"presence_unsubscribed">;
  room_join: ServerFrameOf<"room_joined">;
  room_leave: ServerFrameOf<"room_left">;
  history: ServerFrameOf<"history">;
  presence: ServerFrameOf<"presence_state">;
  ai_request: ServerFrameOf<"ai_response">;
  ai_cancel: ServerFrameOf<"ai_cancelled">;
  file_upload_request: ServerFrameOf<"file_upload_authorized">;
  project_update: ServerFrameOf<"project_updated">;
  ticket_update: ServerFrameOf<"ticket_updated">;
  ping: ServerFrameOf<"pong">;
}
export type ReplyOf<T extends ClientFrame["type"]> = ReplyMap[T];
export type { ServerFrameType };

function publicPending(e: OutboxEntry): PendingMessage {
  return {
    clientMsgId: e.clientMsgId,
    room: e.room,
    content: e.content,
    replyTo: e.replyTo,
    status: e.status,
    attempts: e.attempts,
    createdAt: e.createdAt,
  };
}

function sortUsers(users: User[]): User[] {
  // Byte-wise order, as the server lists members.
  return users.sort((a, b) => (a.username < b.username ? -1 : a.username > b.username ? 1 : 0));
}

function defaultOrigin(): string {
  const loc = (globalThis as { location?: { origin?: string } }).location;
  return loc?.origin && loc.origin !== "null" ? loc.origin : "http://localhost:8080";
}

function asError(err: unknown): Error {
  return err instanceof Error ? err : new Error(String(err));
}

function sleep(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

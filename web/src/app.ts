// The chat page served at `/`: log in, register or enter as a named guest;
// join rooms; read, page back, send, reply; typing and presence; files; the
// assistant. All protocol work is done by the client library in clients/js;
// this file only keeps what is on screen in step with it.

import {
  GLOBAL_ROOM,
  HttpError,
  ROOM_NAME_PATTERN,
  RoomcastClient,
  RoomcastError,
  RoomcastHttp,
  contentTypeFor,
  type AiStream,
  type FileInfo,
  type Message,
  type PendingMessage,
  type ServerInfo,
  type StateChange,
  type User,
} from "../../clients/js/src/index.js";
import { byId, formatBytes, formatTime, h, show } from "./dom.js";

const SESSION_KEY = "roomcast.session";
const ROOMS_KEY = "roomcast.rooms";
const CURRENT_KEY = "roomcast.current";

type Session = { kind: "token"; token: string; username: string } | { kind: "guest"; name: string };

/** What the page knows of one room. */
interface RoomView {
  messages: Map<number, Message>;
  /** The server said there is nothing older (or we fetched back to the start). */
  noOlder: boolean;
  pending: PendingMessage[];
  unread: number;
}

const els = {
  status: byId("connection-status"),
  me: byId("me"),
  reconnect: byId<HTMLButtonElement>("reconnect-button"),
  logout: byId<HTMLButtonElement>("logout-button"),
  sidebarToggle: byId<HTMLButtonElement>("sidebar-toggle"),
  sidebar: byId("sidebar"),
  loginScreen: byId("login-screen"),
  loginError: byId("login-error"),
  loginNote: byId("login-note"),
  loginForm: byId<HTMLFormElement>("login-form"),
  registerForm: byId<HTMLFormElement>("register-form"),
  guestForm: byId<HTMLFormElement>("guest-form"),
  chatScreen: byId("chat-screen"),
  roomForm: byId<HTMLFormElement>("room-form"),
  roomInput: byId<HTMLInputElement>("room-input"),
  roomList: byId("room-list"),
  presenceList: byId("presence-list"),
  onlineCount: byId("online-count"),
  roomTitle: byId("room-title"),
  membersToggle: byId<HTMLButtonElement>("members-toggle"),
  memberList: byId("member-list"),
  leaveRoom: byId<HTMLButtonElement>("leave-room"),
  scroller: byId("message-scroller"),
  loadOlder: byId<HTMLButtonElement>("load-older"),
  messageList: byId("message-list"),
  pendingList: byId("pending-list"),
  typing: byId("typing-indicator"),
  replyPreview: byId("reply-preview"),
  replyText: byId("reply-text"),
  replyCancel: byId<HTMLButtonElement>("reply-cancel"),
  composer: byId<HTMLFormElement>("composer"),
  composerInput: byId<HTMLTextAreaElement>("composer-input"),
  uploadInput: byId<HTMLInputElement>("upload-input"),
  uploadLabel: byId("upload-label"),
  aiPanel: byId<HTMLDetailsElement>("ai-panel"),
  uploadStatus: byId("upload-status"),
  aiForm: byId<HTMLFormElement>("ai-form"),
  aiPrompt: byId<HTMLTextAreaElement>("ai-prompt"),
  aiSubmit: byId<HTMLButtonElement>("ai-submit"),
  aiCancel: byId<HTMLButtonElement>("ai-cancel"),
  aiStatus: byId("ai-status"),
  aiAnswer: byId("ai-answer"),
};

let client: RoomcastClient | null = null;
let session: Session | null = loadSession();
const rooms = new Map<string, RoomView>();
let current = GLOBAL_ROOM;
let replyTo: Message | null = null;
let aiStream: AiStream | null = null;
/** `GET /api/info`, once it has answered; null before (or on a server without it). */
let info: ServerInfo | null = null;
/** Object URLs of image previews, by file id (fetched once per page). */
const previews = new Map<string, Promise<string | null>>();

// ---------------------------------------------------------------------------
// Session and login

function loadSession(): Session | null {
  try {
    return JSON.parse(localStorage.getItem(SESSION_KEY) ?? "null") as Session | null;
  } catch {
    return null;
  }
}

function saveSession(s: Session | null): void {
  session = s;
  if (s) localStorage.setItem(SESSION_KEY, JSON.stringify(s));
  else localStorage.removeItem(SESSION_KEY);
}

function savedRooms(): string[] {
  try {
    const list = JSON.parse(localStorage.getItem(ROOMS_KEY) ?? "[]") as unknown;
    return Array.isArray(list) ? list.filter((r): r is string => typeof r === "string" && ROOM_NAME_PATTERN.test(r)) : [];
  } catch {
    return [];
  }
}

function saveRooms(): void {
  if (!client) return;
  localStorage.setItem(ROOMS_KEY, JSON.stringify(client.roomNames()));
  localStorage.setItem(CURRENT_KEY, current);
}

function loginError(text: string): void {
  els.loginError.textContent = text;
}

function httpMessage(err: unknown, what: string): string {
  if (err instanceof HttpError) {
    if (what === "register" && err.status === 403) return "Registration is closed on this server. Log in, or enter as a guest.";
    if (err.status === 409) return "That username is taken.";
    if (err.status === 401) return "Wrong username or password.";
    if (err.status === 429) return `Too many attempts. Try again in ${Math.ceil((err.retryAfterMs ?? 60000) / 1000)} s.`;
    return err.message;
  }
  return "The server cannot be reached.";
}

function formValue(form: HTMLFormElement, name: string): string {
  return ((form.elements.namedItem(name) as HTMLInputElement | null)?.value ?? "").trim();
}

async function withBusy(form: HTMLFormElement, fn: () => Promise<void>): Promise<void> {
  const buttons = form.querySelectorAll("button");
  buttons.forEach((b) => (b.disabled = true));
  try {
    await fn();
  } finally {
    buttons.forEach((b) => (b.disabled = false));
  }
}

els.loginForm.addEventListener("submit", (ev) => {
  ev.preventDefault();
  void withBusy(els.loginForm, async () => {
    const username = formValue(els.loginForm, "username");
    const password = (els.loginForm.elements.namedItem("password") as HTMLInputElement).value;
    try {
      const res = await httpApi().login(username, password);
      saveSession({ kind: "token", token: res.token, username: res.user.username });
      await start();
    } catch (err) {
      loginError(httpMessage(err, "login"));
    }
  });
});

els.registerForm.addEventListener("submit", (ev) => {
  ev.preventDefault();
  void withBusy(els.registerForm, async () => {
    const username = formValue(els.registerForm, "username");
    const password = (els.registerForm.elements.namedItem("password") as HTMLInputElement).value;
    try {
      await httpApi().register(username, password);
      const res = await httpApi().login(username, password);
      saveSession({ kind: "token", token: res.token, username: res.user.username });
      await start();
    } catch (err) {
      loginError(httpMessage(err, "register"));
    }
  });
});

els.guestForm.addEventListener("submit", (ev) => {
  ev.preventDefault();
  void withBusy(els.guestForm, async () => {
    saveSession({ kind: "guest", name: formValue(els.guestForm, "name") });
    await start();
  });
});

els.logout.addEventListener("click", () => {
  client?.close();
  client = null;
  saveSession(null);
  localStorage.removeItem(ROOMS_KEY);
  rooms.clear();
  for (const p of previews.values()) void p.then((url) => url && URL.revokeObjectURL(url));
  previews.clear();
  showLogin("");
});

els.reconnect.addEventListener("click", () => {
  if (session) void start();
});

/** The HTTP API of the page's own origin. */
const httpClient = new RoomcastHttp({ baseUrl: location.origin });
function httpApi(): RoomcastHttp {
  return httpClient;
}

function showLogin(error: string): void {
  show(els.loginScreen, true);
  show(els.chatScreen, false);
  show(els.logout, false);
  show(els.reconnect, false);
  show(els.sidebarToggle, false);
  els.me.textContent = "";
  els.status.textContent = "Not connected";
  loginError(error);
  (els.loginForm.elements.namedItem("username") as HTMLInputElement).focus();
}

// ---------------------------------------------------------------------------
// What the server offers (GET /api/info)

/**
 * Shows only what the server allows: the register and guest forms, the file
 * control (with the accepted types) and the assistant. Until the answer (or
 * if the server has no /api/info) the login form alone is shown, then every
 * form on failure, as before.
 */
async function loadInfo(): Promise<void> {
  try {
    info = await httpApi().info();
  } catch {
    info = null;
  }
  applyInfo();
}

function applyInfo(): void {
  const f = info?.features;
  const registration = f ? f.registration : true;
  const guests = f ? f.guest_chat : true;
  show(els.registerForm, registration);
  show(els.guestForm, guests);
  const notes: string[] = [];
  if (f && !registration) notes.push("Registration is closed on this server: ask an administrator for an account.");
  if (f && !guests) notes.push("Guests cannot chat on this server.");
  els.loginNote.textContent = notes.join(" ");
  show(els.loginNote, notes.length > 0);

  const files = f ? f.files : true;
  show(els.uploadInput, files);
  show(els.uploadLabel, files);
  const types = info?.limits.upload_types ?? [];
  if (types.length) els.uploadInput.accept = types.join(",");
  else els.uploadInput.removeAttribute("accept");
  const max = info?.limits.max_upload_bytes;
  els.uploadLabel.title = max ? `Share a file (up to ${formatBytes(max)})` : "Share a file";

  const ai = f ? f.ai : true;
  show(els.aiPanel, ai);
  if (!ai && aiStream) void aiStream.cancel();

  const maxChars = info?.limits.max_message_chars;
  if (maxChars && maxChars > 0) els.composerInput.maxLength = maxChars;
  document.body.dataset.info = info ? "loaded" : "unavailable";
}

// ---------------------------------------------------------------------------
// Connecting

async function start(): Promise<void> {
  if (!session) return showLogin("");
  client?.close();
  const s = session;
  // Unacknowledged messages survive a reload, per identity.
  const outboxKey = "roomcast.outbox." + (s.kind === "token" ? "user:" + s.username : "guest:" + s.name);
  const c = new RoomcastClient({
    token: s.kind === "token" ? () => s.token : null,
    guestName: s.kind === "guest" ? s.name : undefined,
    outboxStore: {
      load: () => JSON.parse(localStorage.getItem(outboxKey) ?? "[]") as PendingMessage[],
      save: (pending) =>
        pending.length ? localStorage.setItem(outboxKey, JSON.stringify(pending)) : localStorage.removeItem(outboxKey),
    },
  });
  client = c;
  rooms.clear();
  els.messageList.replaceChildren();
  els.pendingList.replaceChildren();
  wire(c);
  try {
    await c.connect();
  } catch (err) {
    if (client !== c) return;
    const e = err as RoomcastError;
    let text = "Could not connect.";
    if (e.code === "username_taken") text = "That name is in use or reserved. Choose another.";
    else if (e.code === "not_authenticated") text = "Guest chat is not enabled on this server. Log in or register.";
    else if (e.code === "validation_error") text = "Names are 2–32 letters, digits, _ . or -, starting with a letter or digit.";
    else if (e.code === "auth_failed") text = "Your session has expired. Log in again.";
    saveSession(null);
    client = null;
    return showLogin(text);
  }
  if (client !== c) return;
  show(els.loginScreen, false);
  show(els.chatScreen, true);
  show(els.logout, true);
  els.me.textContent = c.user ? `${c.user.username}${c.user.kind === "guest" ? " (guest)" : ""}` : "";
  roomView(GLOBAL_ROOM);
  const wanted = savedRooms();
  const last = localStorage.getItem(CURRENT_KEY) ?? GLOBAL_ROOM;
  for (const r of wanted) void joinRoom(r, false);
  switchRoom(wanted.includes(last) ? last : GLOBAL_ROOM);
  // A small team sees who is online; the subscription follows reconnects.
  c.subscribePresence().catch(() => undefined);
  els.composerInput.focus();
}

function wire(c: RoomcastClient): void {
  let wasReady = false;
  c.on("ready", () => (wasReady = true));
  c.on("state", (s) => client === c && renderStatus(s));
  c.on("message", (m) => client === c && onMessage(m));
  c.on("pending", (p) => {
    if (client !== c) return;
    roomView(p.room).pending = p.pending;
    if (p.room === current) renderPending();
  });
  c.on("reset", ({ room }) => {
    // The server's messages started over (restarted without its database).
    if (client !== c) return;
    const v = roomView(room);
    v.messages.clear();
    v.noOlder = false;
    if (room === current) renderMessages();
  });
  c.on("members", (m) => client === c && m.room === current && renderMembers());
  c.on("typing", (t) => client === c && t.room === current && renderTyping());
  c.on("online", (o) => client === c && renderOnline(o.users, o.count));
  c.on("error", (e) => {
    if (client !== c) return;
    if (!(e instanceof RoomcastError)) return;
    // Refusals of the identity on the first connect are told by start().
    if (e.code === "rate_limited") flash(`Slow down: ${e.message}`);
    else if (e.code === "auth_failed" && c.state === "closed" && wasReady) {
      // The stored token no longer works (expired, or the server's secret changed).
      client = null;
      saveSession(null);
      showLogin("Your session has expired. Log in again.");
    } else if (e.code === "username_taken" && c.state === "closed" && wasReady) {
      client = null;
      saveSession(null);
      showLogin("Your guest name was taken while you were away. Choose another.");
    }
  });
  c.on("ready", () => {
    if (client !== c) return;
    els.me.textContent = c.user ? `${c.user.username}${c.user.kind === "guest" ? " (guest)" : ""}` : "";
    renderRoomList();
  });
  window.addEventListener("online", () => client === c && c.reconnectNow());
}

function renderStatus(s: StateChange): void {
  show(els.reconnect, false);
  document.body.dataset.connection = s.state;
  switch (s.state) {
    case "connecting":
      els.status.textContent = "Connecting…";
      break;
    case "open":
      els.status.textContent = "Online";
      break;
    case "reconnecting":
      els.status.textContent =
        s.delayMs !== undefined ? `Reconnecting in ${Math.ceil(s.delayMs / 1000)} s…` : "Reconnecting…";
      break;
    case "closed":
      els.status.textContent =
        s.code === 4003 ? "Disconnected by an administrator" : s.code === 1008 ? "Disconnected (refused)" : "Disconnected";
      show(els.reconnect, !!session);
      break;
    default:
      els.status.textContent = "Not connected";
  }
}

// ---------------------------------------------------------------------------
// Rooms

function roomView(name: string): RoomView {
  let v = rooms.get(name);
  if (!v) {
    v = { messages: new Map(), noOlder: false, pending: [], unread: 0 };
    rooms.set(name, v);
  }
  return v;
}

async function joinRoom(name: string, focus: boolean): Promise<void> {
  if (!client) return;
  roomView(name);
  renderRoomList();
  if (focus) switchRoom(name);
  try {
    await client.joinRoom(name);
    saveRooms();
    const v = roomView(name);
    if (name === current && v.messages.size < 20 && !v.noOlder) void loadOlder();
  } catch (err) {
    rooms.delete(name);
    if (current === name) switchRoom(GLOBAL_ROOM);
    renderRoomList();
    const code = err instanceof RoomcastError ? err.code : "";
    flash(code === "forbidden" ? `You may not join ${name}.` : `Could not join ${name}: ${(err as Error).message}`);
  }
}

els.roomForm.addEventListener("submit", (ev) => {
  ev.preventDefault();
  const name = els.roomInput.value.trim();
  if (!ROOM_NAME_PATTERN.test(name) || name === GLOBAL_ROOM) {
    if (name === GLOBAL_ROOM) switchRoom(GLOBAL_ROOM);
    else flash("Room names are 1–64 letters, digits, _ . : or -.");
    return;
  }
  els.roomInput.value = "";
  void joinRoom(name, true);
  closeSidebarOnPhone();
});

els.leaveRoom.addEventListener("click", () => {
  if (!client || current === GLOBAL_ROOM) return;
  const name = current;
  rooms.delete(name);
  switchRoom(GLOBAL_ROOM);
  void client.leaveRoom(name).finally(() => {
    saveRooms();
    renderRoomList();
  });
});

function switchRoom(name: string): void {
  current = name;
  localStorage.setItem(CURRENT_KEY, name);
  const v = roomView(name);
  v.unread = 0;
  if (client) v.pending = client.pending(name);
  cancelReply();
  els.roomTitle.textContent = name === GLOBAL_ROOM ? "global (everyone)" : name;
  show(els.leaveRoom, name !== GLOBAL_ROOM);
  renderRoomList();
  renderMessages();
  renderPending();
  renderMembers();
  renderTyping();
  scrollToBottom();
  // Fill the screen: with few messages, page back at once.
  if (v.messages.size < 20 && !v.noOlder) void loadOlder();
}

function renderRoomList(): void {
  const names = [GLOBAL_ROOM, ...[...rooms.keys()].filter((r) => r !== GLOBAL_ROOM).sort()];
  els.roomList.replaceChildren(
    ...names.map((name) => {
      const v = roomView(name);
      const label = name === GLOBAL_ROOM ? "global" : name;
      return h(
        "li",
        { "data-testid": "room-item", "data-room": name },
        h(
          "button",
          {
            type: "button",
            class: "room-button",
            "aria-current": name === current ? "true" : null,
            onclick: () => {
              switchRoom(name);
              closeSidebarOnPhone();
            },
          },
          "# " + label,
          v.unread > 0 ? h("span", { class: "badge", "aria-label": `${v.unread} unread` }, String(v.unread)) : null,
        ),
      );
    }),
  );
}

// ---------------------------------------------------------------------------
// Messages

function onMessage(m: Message): void {
  const v = roomView(m.room);
  if (v.messages.has(m.id)) return;
  v.messages.set(m.id, m);
  if (m.room !== current) {
    v.unread += 1;
    renderRoomList();
    return;
  }
  const atBottom = isAtBottom();
  // The library delivers in id order, so a new message goes last.
  const last = els.messageList.lastElementChild as HTMLElement | null;
  if (!last || Number(last.dataset.messageId) < m.id) els.messageList.append(messageItem(m));
  else renderMessages();
  if (atBottom || m.user.id === client?.user?.id) scrollToBottom();
}

function renderMessages(): void {
  const v = roomView(current);
  const sorted = [...v.messages.values()].sort((a, b) => a.id - b.id);
  els.messageList.replaceChildren(...sorted.map(messageItem));
  show(els.loadOlder, !v.noOlder);
}

function messageItem(m: Message): HTMLElement {
  const v = roomView(m.room);
  const parent = m.reply_to !== null ? v.messages.get(m.reply_to) : undefined;
  const mine = client?.user?.id === m.user.id;
  return h(
    "li",
    {
      class: "message" + (mine ? " mine" : "") + (m.user.kind === "assistant" ? " assistant" : ""),
      "data-testid": "message-item",
      "data-message-id": m.id,
      "data-pending": "false",
    },
    h(
      "div",
      { class: "meta" },
      h("span", { class: "author", "data-testid": "message-author" }, m.user.username),
      m.user.kind !== "user" ? h("span", { class: "kind" }, m.user.kind) : null,
      h("time", { datetime: m.created_at }, formatTime(m.created_at)),
      h(
        "button",
        { type: "button", class: "link-button reply-button", "data-testid": "message-reply", "aria-label": `Reply to ${m.user.username}`, onclick: () => startReply(m) },
        "Reply",
      ),
    ),
    m.reply_to !== null
      ? h("blockquote", { class: "quote", "data-testid": "message-quote" }, parent ? `${parent.user.username}: ${truncate(parent.content, 120)}` : "an earlier message")
      : null,
    // A shared file's message carries the file name as its content: show it once.
    m.content && !(m.attachment && m.content === m.attachment.name)
      ? h("p", { class: "content", "data-testid": "message-content" }, m.content)
      : null,
    m.attachment ? attachmentView(m, m.attachment) : null,
  );
}

/** Whether this page is a named guest's (guests cannot download files). */
function isGuest(): boolean {
  return session?.kind === "guest" || client?.user?.kind === "guest";
}

function isImage(file: FileInfo): boolean {
  return /^image\/(png|jpeg|gif|webp)$/.test(file.content_type) && file.size <= 5 * 1024 * 1024;
}

function attachmentView(m: Message, file: FileInfo): HTMLElement {
  const guest = isGuest();
  const box = h(
    "div",
    { class: "attachment", "data-testid": "attachment", "data-file-id": file.id },
    h("span", { class: "file-badge", "aria-hidden": "true" }, fileBadge(file)),
    h("span", { class: "file-name", "data-testid": "attachment-name" }, file.name),
    h("span", { class: "file-size" }, `${formatBytes(file.size)} · ${file.content_type}`),
    guest
      ? h("span", { class: "note", "data-testid": "attachment-guest-note" }, "Log in to download")
      : h(
          "button",
          {
            type: "button",
            "data-testid": "attachment-download",
            "data-file-id": file.id,
            "aria-label": `Download ${file.name}`,
            onclick: () => void download(m),
          },
          "Download",
        ),
  );
  if (!guest && isImage(file)) {
    const slot = h("div", { class: "preview" });
    box.append(slot);
    void preview(file).then((url) => {
      if (!url) return;
      const wasAtBottom = isAtBottom();
      slot.replaceChildren(h("img", { src: url, alt: file.name, "data-testid": "attachment-preview", loading: "lazy" }));
      if (wasAtBottom) scrollToBottom();
    });
  }
  return box;
}

/** A short label for a file's kind: its extension ("TXT", "PNG"), else "FILE". */
function fileBadge(file: FileInfo): string {
  const ext = /\.([a-z0-9]{1,4})$/i.exec(file.name)?.[1];
  return ext ? ext.toUpperCase() : "FILE";
}

/** An object URL for an image attachment, fetched with the user's token once. */
function preview(file: FileInfo): Promise<string | null> {
  let p = previews.get(file.id);
  if (!p) {
    p = client
      ? client.downloadFile(file).then(
          (blob) => URL.createObjectURL(blob),
          () => null,
        )
      : Promise.resolve(null);
    if (client) previews.set(file.id, p);
  }
  return p;
}

function renderPending(): void {
  const v = roomView(current);
  const atBottom = isAtBottom();
  els.pendingList.replaceChildren(
    ...v.pending.map((p) =>
      h(
        "li",
        { class: "message mine pending", "data-testid": "message-item", "data-pending": "true", "data-client-msg-id": p.clientMsgId },
        h("div", { class: "meta" }, h("span", { class: "author" }, client?.user?.username ?? "me"), h("span", { class: "kind" }, p.status === "sent" ? "sending…" : "waiting for connection")),
        h("p", { class: "content" }, p.content),
      ),
    ),
  );
  if (atBottom) scrollToBottom();
}

els.loadOlder.addEventListener("click", () => void loadOlder());

let loadingOlder = false;
async function loadOlder(): Promise<void> {
  if (!client || loadingOlder) return;
  const room = current;
  const v = roomView(room);
  loadingOlder = true;
  els.loadOlder.disabled = true;
  try {
    const beforeHeight = els.scroller.scrollHeight;
    const oldest = [...v.messages.keys()].reduce((a, b) => Math.min(a, b), Infinity);
    const page = await client.history(room, { ...(Number.isFinite(oldest) ? { beforeId: oldest } : {}), limit: 50 });
    for (const m of page.messages) v.messages.set(m.id, m);
    if (!page.has_more) v.noOlder = true;
    if (room === current) {
      renderMessages();
      // Keep the reader where they were.
      els.scroller.scrollTop += els.scroller.scrollHeight - beforeHeight;
    }
  } catch {
    // Not joined yet, or offline: the button stays for another try.
  } finally {
    loadingOlder = false;
    els.loadOlder.disabled = false;
  }
}

// Scrolling to the top pages back on its own.
els.scroller.addEventListener("scroll", () => {
  if (els.scroller.scrollTop < 40 && !roomView(current).noOlder) void loadOlder();
});

function isAtBottom(): boolean {
  return els.scroller.scrollHeight - els.scroller.scrollTop - els.scroller.clientHeight < 60;
}

function scrollToBottom(): void {
  els.scroller.scrollTop = els.scroller.scrollHeight;
}

// ---------------------------------------------------------------------------
// Composer, replies, typing

els.composer.addEventListener("submit", (ev) => {
  ev.preventDefault();
  sendComposer();
});

els.composerInput.addEventListener("keydown", (ev) => {
  if (ev.key === "Enter" && !ev.shiftKey && !ev.isComposing) {
    ev.preventDefault();
    sendComposer();
  } else if (ev.key === "Escape" && replyTo) {
    cancelReply();
  }
});

els.composerInput.addEventListener("input", () => {
  client?.setTyping(current === GLOBAL_ROOM ? null : current, els.composerInput.value.length > 0);
});

function sendComposer(): void {
  if (!client) return;
  const content = els.composerInput.value.trim();
  if (!content) return;
  const room = current;
  const reply = replyTo;
  els.composerInput.value = "";
  cancelReply();
  client.setTyping(room === GLOBAL_ROOM ? null : room, false);
  client
    .send(room === GLOBAL_ROOM ? null : room, content, reply ? { replyTo: reply.id } : {})
    .catch((err: unknown) => flash(`Not sent: ${(err as Error).message}`));
  scrollToBottom();
}

function startReply(m: Message): void {
  replyTo = m;
  els.replyText.textContent = `Replying to ${m.user.username}: ${truncate(m.content, 80)}`;
  show(els.replyPreview, true);
  els.composerInput.focus();
}

function cancelReply(): void {
  replyTo = null;
  show(els.replyPreview, false);
}
els.replyCancel.addEventListener("click", () => {
  cancelReply();
  els.composerInput.focus();
});

function renderTyping(): void {
  const users = client?.roomSnapshot(current)?.typing ?? [];
  const names = users.map((u) => u.username);
  els.typing.textContent =
    names.length === 0 ? "" : names.length === 1 ? `${names[0]} is typing…` : names.length <= 3 ? `${names.join(", ")} are typing…` : "Several people are typing…";
}

// ---------------------------------------------------------------------------
// Presence

function renderMembers(): void {
  const snap = client?.roomSnapshot(current);
  if (current === GLOBAL_ROOM || !snap) {
    els.membersToggle.textContent = "";
    show(els.membersToggle, false);
    els.memberList.replaceChildren();
    return;
  }
  show(els.membersToggle, true);
  els.membersToggle.textContent = `${snap.memberCount} ${snap.memberCount === 1 ? "member" : "members"} online`;
  // In a large room the server sends counts, not names: list only what we have.
  els.memberList.replaceChildren(
    ...snap.members.map((u) => h("li", { "data-testid": "member-item", "data-user-id": u.id }, userLabel(u))),
    snap.large || snap.memberCount > snap.members.length
      ? h("li", { class: "more" }, `and ${snap.memberCount - snap.members.length} more`)
      : "",
  );
}

els.membersToggle.addEventListener("click", () => {
  const open = els.memberList.hidden;
  show(els.memberList, open);
  els.membersToggle.setAttribute("aria-expanded", String(open));
});

function renderOnline(users: User[], count: number): void {
  els.onlineCount.textContent = `(${count})`;
  els.presenceList.replaceChildren(
    ...users.map((u) => h("li", { "data-testid": "presence-item", "data-user-id": u.id }, h("span", { class: "dot", "aria-hidden": "true" }), userLabel(u))),
    count > users.length ? h("li", { class: "more" }, `and ${count - users.length} more`) : "",
  );
}

function userLabel(u: User): string {
  return u.kind === "user" ? u.username : `${u.username} (${u.kind})`;
}

// ---------------------------------------------------------------------------
// Files

els.uploadInput.addEventListener("change", () => {
  const file = els.uploadInput.files?.[0];
  els.uploadInput.value = "";
  if (!file || !client) return;
  const room = current;
  // The server checks the first bytes against the declared type: declare the
  // browser's type, or one guessed from the extension when it has none.
  const contentType = contentTypeFor(file.name, file.type);
  const max = info?.limits.max_upload_bytes;
  if (max && file.size > max) {
    els.uploadStatus.textContent = `That file is too large (the limit is ${formatBytes(max)}).`;
    return;
  }
  const types = info?.limits.upload_types ?? [];
  if (types.length && !types.includes(contentType)) {
    els.uploadStatus.textContent = `This server does not accept ${contentType} files.`;
    return;
  }
  els.uploadStatus.textContent = `Uploading ${file.name}…`;
  client
    .uploadFile(room === GLOBAL_ROOM ? null : room, file, { filename: file.name, contentType })
    .then((f) => (els.uploadStatus.textContent = `Shared ${f.name} (${formatBytes(f.size)}).`))
    .catch((err: unknown) => {
      const code = err instanceof RoomcastError || err instanceof HttpError ? err.code : "";
      els.uploadStatus.textContent =
        // A 415 on the PUT: the first bytes do not match the declared type.
        err instanceof HttpError && err.status === 415
          ? `The file's content does not look like ${contentType}.`
          : code === "file_type_not_allowed"
            ? "This server does not accept that kind of file."
            : code === "file_too_large" || (err instanceof HttpError && err.status === 413)
              ? "That file is too large."
              : `Upload failed: ${(err as Error).message}`;
    });
});

async function download(m: Message): Promise<void> {
  if (!client || !m.attachment) return;
  try {
    const blob = await client.downloadFile(m.attachment);
    const url = URL.createObjectURL(blob);
    const a = h("a", { href: url, download: m.attachment.name, hidden: true });
    document.body.append(a);
    a.click();
    a.remove();
    setTimeout(() => URL.revokeObjectURL(url), 10_000);
  } catch (err) {
    flash(`Download failed: ${(err as Error).message}`);
  }
}

// ---------------------------------------------------------------------------
// Assistant

els.aiForm.addEventListener("submit", (ev) => {
  ev.preventDefault();
  void ask();
});
els.aiPrompt.addEventListener("keydown", (ev) => {
  if (ev.key === "Enter" && (ev.ctrlKey || ev.metaKey)) {
    ev.preventDefault();
    void ask();
  }
});
els.aiCancel.addEventListener("click", () => void aiStream?.cancel());

async function ask(): Promise<void> {
  if (!client || aiStream) return;
  const prompt = els.aiPrompt.value.trim();
  if (!prompt) return;
  const stream = client.ask(prompt, current === GLOBAL_ROOM ? {} : { room: current });
  aiStream = stream;
  els.aiAnswer.textContent = "";
  els.aiStatus.textContent = "Thinking…";
  els.aiSubmit.disabled = true;
  els.aiCancel.disabled = false;
  document.body.dataset.ai = "running";
  try {
    for await (const delta of stream) {
      els.aiAnswer.textContent += delta;
      els.aiStatus.textContent = "Answering…";
    }
    await stream.result;
    els.aiStatus.textContent = "Done.";
    els.aiPrompt.value = "";
  } catch (err) {
    const code = err instanceof RoomcastError ? err.code : "";
    els.aiStatus.textContent =
      code === "cancelled"
        ? "Stopped."
        : code === "ai_unavailable"
          ? "The assistant is not available on this server."
          : code === "ai_timeout"
            ? "The assistant took too long."
            : code === "rate_limited"
              ? "Too many questions; wait a little."
              : `Failed: ${(err as Error).message}`;
  } finally {
    aiStream = null;
    els.aiSubmit.disabled = false;
    els.aiCancel.disabled = true;
    document.body.dataset.ai = "idle";
  }
}

// ---------------------------------------------------------------------------
// Small screens and notices

const phone = window.matchMedia("(max-width: 700px)");
function layout(): void {
  show(els.sidebarToggle, phone.matches && !els.chatScreen.hidden);
  if (!phone.matches) els.sidebar.classList.remove("open");
}
phone.addEventListener("change", layout);
new MutationObserver(layout).observe(els.chatScreen, { attributes: true, attributeFilter: ["hidden"] });
els.sidebarToggle.addEventListener("click", () => {
  const open = !els.sidebar.classList.contains("open");
  els.sidebar.classList.toggle("open", open);
  els.sidebarToggle.setAttribute("aria-expanded", String(open));
  if (open) els.roomInput.focus();
});
function closeSidebarOnPhone(): void {
  if (!phone.matches) return;
  els.sidebar.classList.remove("open");
  els.sidebarToggle.setAttribute("aria-expanded", "false");
}

function flash(text: string): void {
  els.uploadStatus.textContent = text;
}

function truncate(s: string, n: number): string {
  return s.length > n ? s.slice(0, n - 1) + "…" : s;
}

// ---------------------------------------------------------------------------

void loadInfo();
if (session) void start();
else showLogin("");

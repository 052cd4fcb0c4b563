// The admin page served at `/admin`: live connections from GET /api/stats,
// rooms in use from GET /api/rooms, kick, and a chart of messages/s and
// errors/s computed from successive polls.

import { HttpError, RoomcastHttp, type RoomSummary, type ServerStats } from "../../clients/js/src/index.js";
import { ago, byId, formatTime, h, show } from "./dom.js";

const KEY = "roomcast.adminKey";
const FILTER = "roomcast.adminRoomFilter";
const POLL_MS = 2000;
const WINDOW_MS = 5 * 60 * 1000;

const http = new RoomcastHttp({ baseUrl: location.origin });
const els = {
  status: byId("admin-status"),
  forget: byId<HTMLButtonElement>("admin-forget"),
  keySection: byId("key-section"),
  keyForm: byId<HTMLFormElement>("key-form"),
  keyInput: byId<HTMLInputElement>("admin-key"),
  error: byId("admin-error"),
  dashboard: byId("dashboard"),
  summary: byId("summary"),
  chart: byId("chart"),
  rateMessages: byId("rate-messages"),
  rateErrors: byId("rate-errors"),
  connections: byId("connections"),
  connectionCount: byId("connection-count"),
  roomTotal: byId("room-total"),
  roomFilter: byId<HTMLInputElement>("room-filter"),
  roomEmpty: byId("room-empty"),
  rooms: byId("rooms"),
  totals: byId("totals"),
};

interface Sample {
  at: number;
  messages: number;
  errors: number;
}
/** Rates between successive polls: one point per poll. */
let points: { at: number; messages: number; errors: number }[] = [];
let previous: Sample | null = null;
let timer: ReturnType<typeof setTimeout> | null = null;
/** The last `GET /api/rooms` answer; null when it failed. */
let roomList: RoomSummary[] | null = [];

function adminKey(): string | null {
  return sessionStorage.getItem(KEY);
}


els.keyForm.addEventListener("submit", (ev) => {
  ev.preventDefault();
  sessionStorage.setItem(KEY, els.keyInput.value.trim());
  els.keyInput.value = "";
  void start();
});

els.forget.addEventListener("click", () => {
  sessionStorage.removeItem(KEY);
  stop("");
});

els.roomFilter.value = sessionStorage.getItem(FILTER) ?? "";
els.roomFilter.addEventListener("input", () => {
  sessionStorage.setItem(FILTER, els.roomFilter.value);
  renderRooms();
});

function stop(error: string): void {
  if (timer) clearTimeout(timer);
  timer = null;
  show(els.keySection, true);
  show(els.dashboard, false);
  show(els.forget, false);
  els.status.textContent = "Not connected";
  els.error.textContent = error;
  els.keyInput.focus();
}

async function start(): Promise<void> {
  if (!adminKey()) return stop("");
  points = [];
  previous = null;
  els.error.textContent = "";
  await poll();
}

async function poll(): Promise<void> {
  if (timer) clearTimeout(timer);
  timer = null;
  const key = adminKey();
  if (!key) return stop("");
  try {
    const stats = await http.stats(key);
    show(els.keySection, false);
    show(els.dashboard, true);
    show(els.forget, true);
    els.status.textContent = `Updated ${new Date().toLocaleTimeString()}`;
    addSample(stats);
    render(stats);
    roomList = await http.rooms(key).catch(() => null);
    renderRooms();
  } catch (err) {
    if (err instanceof HttpError && err.status === 401) {
      sessionStorage.removeItem(KEY);
      return stop("That key was refused.");
    }
    els.status.textContent = "Server unreachable, retrying…";
  }
  timer = setTimeout(() => void poll(), POLL_MS);
}

function sum(counts: Record<string, number> | undefined): number {
  return Object.values(counts ?? {}).reduce((a, b) => a + (Number(b) || 0), 0);
}

function addSample(stats: ServerStats): void {
  // "Messages" are chat messages received; errors are error frames sent.
  const now = Date.now();
  const sample = { at: now, messages: stats.messages_by_type?.chat_message ?? 0, errors: sum(stats.errors) };
  if (previous) {
    const dt = (now - previous.at) / 1000;
    // A restart resets the counters: skip the negative step.
    if (dt > 0 && sample.messages >= previous.messages && sample.errors >= previous.errors) {
      points.push({ at: now, messages: (sample.messages - previous.messages) / dt, errors: (sample.errors - previous.errors) / dt });
    }
  }
  previous = sample;
  points = points.filter((p) => now - p.at <= WINDOW_MS);
}

function render(stats: ServerStats): void {
  const figures: [string, string, unknown][] = [
    ["Connections", "stat-active-connections", stats.active_connections],
    ["Peak", "stat-peak-connections", stats.peak_connections],
    ["Total since start", "stat-total-connections", stats.total_connections],
    ["Users online", "stat-online-users", stats.online_users ?? stats.authenticated_users],
    ["Rooms in use", "stat-rooms", stats.rooms],
    ["Slow consumers", "stat-slow-consumers", stats.slow_consumer_disconnects],
  ];
  els.summary.replaceChildren(
    ...figures.map(([label, id, value]) => h("div", {}, h("dt", {}, label), h("dd", { "data-testid": id }, String(value ?? "–")))),
  );
  const last = points.at(-1);
  els.rateMessages.textContent = last ? last.messages.toFixed(1) : "–";
  els.rateErrors.textContent = last ? last.errors.toFixed(1) : "–";
  renderChart();

  const conns = [...(stats.connections ?? [])].sort((a, b) => a.connected_at.localeCompare(b.connected_at));
  els.connectionCount.textContent = `(${conns.length})`;
  const now = Date.now();
  els.connections.replaceChildren(
    ...conns.map((c) =>
      h(
        "tr",
        { "data-testid": "connection-row", "data-connection-id": c.connection_id, "data-username": c.username ?? "" },
        h(
          "td",
          {},
          h(
            "button",
            {
              type: "button",
              class: "danger",
              "data-testid": "kick-button",
              "aria-label": `Kick ${c.username ?? "guest"} (${c.connection_id})`,
              onclick: (ev: Event) => void kick(c.connection_id, ev.currentTarget as HTMLButtonElement),
            },
            "Kick",
          ),
        ),
        h("td", {}, h("code", {}, c.connection_id)),
        h("td", { "data-testid": "connection-state" }, c.state),
        h("td", {}, c.kind),
        h("td", { "data-testid": "connection-user" }, c.username ?? "(unnamed guest)"),
        h("td", {}, String(c.rooms)),
        h("td", {}, String(c.message_count)),
        h("td", {}, formatTime(c.connected_at)),
        h("td", {}, ago(c.last_activity, now)),
        h("td", {}, c.client_addr ?? ""),
        h("td", { class: "ua", title: c.user_agent ?? "" }, c.user_agent ?? ""),
      ),
    ),
  );

  const rows: [string, string][] = [];
  for (const [type, n] of Object.entries(stats.messages_by_type ?? {})) if (n) rows.push([`received ${type}`, String(n)]);
  for (const [code, n] of Object.entries(stats.errors ?? {})) if (n) rows.push([`error ${code}`, String(n)]);
  els.totals.replaceChildren(...rows.sort().map(([k, v]) => h("tr", {}, h("th", { scope: "row" }, k), h("td", {}, v))));
}

async function kick(connectionId: string, button: HTMLButtonElement): Promise<void> {
  const key = adminKey();
  if (!key) return;
  button.disabled = true;
  try {
    await http.kick(key, connectionId);
    els.status.textContent = `Kicked ${connectionId}`;
  } catch (err) {
    els.error.textContent = err instanceof HttpError && err.status === 404 ? "That connection is gone already." : `Kick failed: ${(err as Error).message}`;
  }
  void poll();
}

function renderRooms(): void {
  const all = roomList ?? [];
  const filter = els.roomFilter.value.trim().toLowerCase();
  const shown = filter ? all.filter((r) => r.name.toLowerCase().includes(filter)) : all;
  els.roomTotal.textContent = roomList ? (filter ? `(${shown.length} of ${all.length})` : `(${all.length})`) : "";
  const empty =
    roomList === null
      ? "The room list is not available (GET /api/rooms failed)."
      : all.length === 0
        ? "No room has a connection on this node."
        : shown.length === 0
          ? "No room matches the filter."
          : "";
  els.roomEmpty.textContent = empty;
  show(els.roomEmpty, empty !== "");
  els.rooms.replaceChildren(
    ...shown.map((r) =>
      h(
        "tr",
        { "data-testid": "room-row", "data-room": r.name },
        h("th", { scope: "row" }, r.name),
        h("td", { "data-testid": "room-member-count" }, String(r.member_count)),
        h("td", { "data-testid": "room-connection-count" }, String(r.connection_count)),
      ),
    ),
  );
}

const SVG = "http://www.w3.org/2000/svg";
function svg(tag: string, attrs: Record<string, string | number>): SVGElement {
  const el = document.createElementNS(SVG, tag);
  for (const [k, v] of Object.entries(attrs)) el.setAttribute(k, String(v));
  return el;
}

function renderChart(): void {
  const width = 600;
  const height = 180;
  const pad = { left: 36, right: 8, top: 8, bottom: 20 };
  const now = Date.now();
  const max = Math.max(1, ...points.map((p) => Math.max(p.messages, p.errors)));
  const yMax = niceCeil(max);
  const x = (t: number) => pad.left + ((t - (now - WINDOW_MS)) / WINDOW_MS) * (width - pad.left - pad.right);
  const y = (v: number) => pad.top + (1 - v / yMax) * (height - pad.top - pad.bottom);
  const root = svg("svg", { viewBox: `0 0 ${width} ${height}`, "aria-hidden": "true" });
  for (const frac of [0, 0.5, 1]) {
    const yy = y(yMax * frac);
    root.append(svg("line", { x1: pad.left, x2: width - pad.right, y1: yy, y2: yy, stroke: "currentColor", "stroke-opacity": 0.15 }));
    const label = svg("text", { x: pad.left - 4, y: yy + 4, "text-anchor": "end", "font-size": 10, fill: "currentColor" });
    label.textContent = String(+(yMax * frac).toFixed(1));
    root.append(label);
  }
  for (const [i, text] of ["-5 min", "-2.5 min", "now"].entries()) {
    const t = svg("text", { x: x(now - WINDOW_MS + (i * WINDOW_MS) / 2), y: height - 4, "text-anchor": i === 0 ? "start" : i === 2 ? "end" : "middle", "font-size": 10, fill: "currentColor" });
    t.textContent = text;
    root.append(t);
  }
  // Colours come from the stylesheet (.chart-line.*): no inline styles under the CSP.
  const line = (key: "messages" | "errors", testid: string) =>
    svg("polyline", {
      points: points.map((p) => `${x(p.at).toFixed(1)},${y(p[key]).toFixed(1)}`).join(" "),
      class: `chart-line ${key}`,
      "data-testid": testid,
    });
  root.append(line("messages", "chart-messages"), line("errors", "chart-errors"));
  els.chart.replaceChildren(root);
}

function niceCeil(v: number): number {
  const p = Math.pow(10, Math.floor(Math.log10(v)));
  for (const m of [1, 2, 5, 10]) if (v <= m * p) return m * p;
  return 10 * p;
}

void start();

// The HTTP half of roomcast: accounts, history, files and the admin API.
// Every call goes through one `call` that turns a non-2xx answer into an
// HttpError carrying the server's error_code.

import { HttpError } from "./errors.js";
import type {
  FileInfo,
  FileUploadAuthorizedFrame,
  HistoryPage,
  LoginResponse,
  Message,
  RoomInfo,
  RoomStats,
  RoomSummary,
  ServerInfo,
  ServerStats,
  UploadResult,
  User,
} from "./protocol.js";

/** Content types by file extension, for files whose `type` the browser left empty. */
const TYPES_BY_EXTENSION: Record<string, string> = {
  png: "image/png",
  jpg: "image/jpeg",
  jpeg: "image/jpeg",
  gif: "image/gif",
  webp: "image/webp",
  pdf: "application/pdf",
  txt: "text/plain",
  text: "text/plain",
  log: "text/plain",
  md: "text/markdown",
  csv: "text/csv",
  json: "application/json",
  xml: "application/xml",
  zip: "application/zip",
};

/**
 * The content type to declare for an upload: the given one (a browser's
 * `File.type`) without parameters, else one guessed from the name's
 * extension, else `application/octet-stream`. The server checks the file's
 * first bytes against it.
 */
export function contentTypeFor(filename: string, given?: string | null): string {
  const declared = (given ?? "").split(";")[0]!.trim().toLowerCase();
  if (declared) return declared;
  const ext = /\.([a-z0-9]+)$/i.exec(filename)?.[1]?.toLowerCase();
  return (ext && TYPES_BY_EXTENSION[ext]) || "application/octet-stream";
}

export type FetchLike = typeof fetch;

export interface HttpOptions {
  /** Server base URL, e.g. `http://localhost:8080`; `""` for the page's own origin. */
  baseUrl?: string;
  fetch?: FetchLike;
}

export interface HistoryQuery {
  beforeId?: number;
  afterId?: number;
  limit?: number;
}

export class RoomcastHttp {
  readonly baseUrl: string;
  private readonly fetchImpl: FetchLike;

  constructor(options: HttpOptions = {}) {
    this.baseUrl = (options.baseUrl ?? "").replace(/\/+$/, "");
    const f = options.fetch ?? globalThis.fetch;
    // `fetch` must be called with the global as `this` in browsers.
    this.fetchImpl = ((input: RequestInfo | URL, init?: RequestInit) => f.call(globalThis, input, init)) as FetchLike;
  }

  /** Resolves a server path (`/api/...`) or an absolute URL against the base. */
  url(path: string): string {
    if (/^[a-z]+:\/\//i.test(path)) return path;
    return this.baseUrl + (path.startsWith("/") ? path : "/" + path);
  }

  /** `POST /api/users`: 201 `{user}`; 403 when registration is closed, 409 taken. */
  async register(username: string, password: string): Promise<User> {
    const body = await this.call<{ user: User }>("POST", "/api/users", { json: { username, password } });
    return body.user;
  }

  /** `POST /api/login`: `{token, user, expires_at}`; 401 wrong credentials. */
  login(username: string, password: string): Promise<LoginResponse> {
    return this.call<LoginResponse>("POST", "/api/login", { json: { username, password } });
  }

  /**
   * `GET /api/info` (no credentials): server version, which features are on
   * (registration, guest chat, assistant, files) and the limits.
   */
  info(): Promise<ServerInfo> {
    return this.call<ServerInfo>("GET", "/api/info");
  }

  /** `GET /api/rooms` with the admin key (or an admin token): rooms in use on that node. */
  async rooms(adminKey: string): Promise<RoomSummary[]> {
    const body = await this.call<{ rooms?: RoomSummary[] }>("GET", "/api/rooms", { bearer: adminKey });
    return body.rooms ?? [];
  }

  /** `GET /api/rooms/{room}/messages`, paged like the `history` frame. */
  history(token: string, room: string, query: HistoryQuery = {}): Promise<HistoryPage> {
    const params = new URLSearchParams();
    if (query.beforeId !== undefined) params.set("before_id", String(query.beforeId));
    if (query.afterId !== undefined) params.set("after_id", String(query.afterId));
    if (query.limit !== undefined) params.set("limit", String(query.limit));
    const qs = params.toString();
    return this.call<HistoryPage>("GET", `/api/rooms/${encodeURIComponent(room)}/messages${qs ? "?" + qs : ""}`, {
      bearer: token,
    });
  }

  /** `POST /api/rooms` (extension): creates a room, optionally private. */
  async createRoom(token: string, name: string, isPrivate = false): Promise<RoomInfo> {
    const body = await this.call<{ room: RoomInfo }>("POST", "/api/rooms", {
      bearer: token,
      json: { name, private: isPrivate },
    });
    return body.room;
  }

  /** `GET /api/stats` with the admin key (or an admin token). */
  stats(adminKey: string): Promise<ServerStats> {
    return this.call<ServerStats>("GET", "/api/stats", { bearer: adminKey });
  }

  /** `GET /api/rooms/{room}/stats` with the admin key; 404 for an unknown room. */
  roomStats(adminKey: string, room: string): Promise<RoomStats> {
    return this.call<RoomStats>("GET", `/api/rooms/${encodeURIComponent(room)}/stats`, { bearer: adminKey });
  }

  /** `POST /api/connections/{id}/kick` (extension): closes it with 4003. */
  kick(adminKey: string, connectionId: string): Promise<{ kicked: unknown }> {
    return this.call("POST", `/api/connections/${encodeURIComponent(connectionId)}/kick`, { bearer: adminKey });
  }

  /** `POST /api/publish`: a message from the `system` user, from a backend. */
  async publish(adminKey: string, room: string, content: string, idempotencyKey?: string): Promise<Message> {
    const headers: Record<string, string> = {};
    if (idempotencyKey) headers["Idempotency-Key"] = idempotencyKey;
    const body = await this.call<{ message: Message }>("POST", "/api/publish", {
      bearer: adminKey,
      json: { room, content },
      headers,
    });
    return body.message;
  }

  /**
   * Second step of an upload: `PUT` the bytes to the `upload_url` the server
   * authorized, with the one-time `upload_token`. Answers 201 `{file, message}`
   * (the message that shares it in the room); resolves with the file.
   */
  async upload(authorized: FileUploadAuthorizedFrame, body: Blob, contentType: string): Promise<FileInfo> {
    return (await this.uploadShared(authorized, body, contentType)).file;
  }

  /** Like `upload`, resolving with the whole answer: `{file, message}`. */
  uploadShared(authorized: FileUploadAuthorizedFrame, body: Blob, contentType: string): Promise<UploadResult> {
    return this.call<UploadResult>(authorized.method || "PUT", authorized.upload_url, {
      bearer: authorized.upload_token,
      body,
      headers: { "Content-Type": contentType || "application/octet-stream" },
    });
  }

  /** `GET /api/files/{id}` with the user's token: the file's bytes. */
  async download(token: string | null, file: Pick<FileInfo, "url"> | string): Promise<Blob> {
    const url = typeof file === "string" ? file : file.url;
    const headers: Record<string, string> = {};
    if (token) headers.Authorization = "Bearer " + token;
    const res = await this.fetchImpl(this.url(url), { headers });
    if (!res.ok) throw await HttpErrorFrom(res);
    return res.blob();
  }

  /** `GET /healthz`: true while the server accepts connections. */
  async healthy(): Promise<boolean> {
    try {
      const res = await this.fetchImpl(this.url("/healthz"));
      return res.ok;
    } catch {
      return false;
    }
  }

  private async call<T>(
    method: string,
    path: string,
    opts: { bearer?: string; json?: unknown; body?: BodyInit; headers?: Record<string, string> } = {},
  ): Promise<T> {
    const headers: Record<string, string> = { Accept: "application/json", ...(opts.headers ?? {}) };
    let body: BodyInit | undefined = opts.body;
    if (opts.json !== undefined) {
      headers["Content-Type"] = "application/json";
      body = JSON.stringify(opts.json);
    }
    if (opts.bearer) headers.Authorization = "Bearer " + opts.bearer;
    const res = await this.fetchImpl(this.url(path), { method, headers, body });
    if (!res.ok) throw await HttpErrorFrom(res);
    const text = await res.text();
    return (text ? JSON.parse(text) : {}) as T;
  }
}

async function HttpErrorFrom(res: Response): Promise<HttpError> {
  let code = "http_" + res.status;
  let message = res.statusText || `HTTP ${res.status}`;
  let retryAfterMs: number | undefined;
  try {
    const body = (await res.json()) as { error_code?: string; message?: string; retry_after_ms?: number };
    if (body.error_code) code = body.error_code;
    if (body.message) message = body.message;
    if (typeof body.retry_after_ms === "number") retryAfterMs = body.retry_after_ms;
  } catch {
    // Not JSON: keep the status line.
  }
  return new HttpError(res.status, code, message, retryAfterMs);
}

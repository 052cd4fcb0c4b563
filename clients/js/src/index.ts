// roomcast-client: the public surface of the library.
export * from "./protocol.js";
export { RoomcastClient } from "./client.js";
export type {
  ClientOptions,
  ClientEvents,
  ConnectionState,
  OutboxStore,
  PendingMessage,
  ReplyMap,
  ReplyOf,
  RoomSnapshot,
  StateChange,
  TokenProvider,
  TokenReason,
  WebSocketFactory,
  WebSocketLike,
} from "./client.js";
export { AiStream } from "./ai.js";
export { contentTypeFor, RoomcastHttp } from "./http.js";
export type { FetchLike, HistoryQuery, HttpOptions } from "./http.js";
export { backoffDelay, DEFAULT_BACKOFF } from "./backoff.js";
export type { BackoffOptions } from "./backoff.js";
export { ConnectionClosedError, HttpError, RoomcastError, TimeoutError } from "./errors.js";
export { Emitter } from "./emitter.js";

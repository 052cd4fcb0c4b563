// The roomcast wire protocol (version 1.1 and the project's extensions) as
// TypeScript types. No code lives here that does I/O: these are the shapes of
// the JSON objects that travel in WebSocket text frames, one object a frame.
// docs/protocol.md in the repository is the reference; names and fields below
// follow it to the letter.

/** `kind` of a user: registered account, named guest, a bot, or the server itself. */
export type UserKind = "user" | "guest" | "assistant" | "system";

export interface User {
  id: string;
  username: string;
  kind: UserKind;
}

/** A stored file, as shared in a room. `url` is `/api/files/{id}`. */
export interface FileInfo {
  id: string;
  name: string;
  size: number;
  content_type: string;
  url: string;
  sha256: string;
}

/** A stored chat message. `id` is unique and strictly increasing within a room. */
export interface Message {
  id: number;
  room: string;
  user: User;
  content: string;
  /** RFC 3339, UTC, milliseconds. */
  created_at: string;
  client_msg_id: string | null;
  reply_to: number | null;
  attachment: FileInfo | null;
}

// ---------------------------------------------------------------------------
// Client → server frames. Every one may carry `ref` (≤ 64 chars), which the
// server copies onto its direct reply and onto any error the frame causes.

interface ClientBase {
  ref?: string;
}

export interface AuthenticationFrame extends ClientBase {
  type: "authentication";
  token?: string;
  username?: string;
  password?: string;
}
export interface ChatMessageFrame extends ClientBase {
  type: "chat_message";
  content: string;
  room?: string;
  client_msg_id?: string;
  reply_to?: number;
}
export interface UserTypingFrame extends ClientBase {
  type: "user_typing";
  room?: string;
  is_typing?: boolean;
}
export interface UserJoinFrame extends ClientBase {
  type: "user_join";
  username: string;
}
export interface UserLeaveFrame extends ClientBase {
  type: "user_leave";
}
export interface PresenceSubscribeFrame extends ClientBase {
  type: "presence_subscribe";
  user_ids?: string[];
}
export interface PresenceUnsubscribeFrame extends ClientBase {
  type: "presence_unsubscribe";
}
export interface RoomJoinFrame extends ClientBase {
  type: "room_join";
  room: string;
  since_id?: number;
}
export interface RoomLeaveFrame extends ClientBase {
  type: "room_leave";
  room: string;
}
export interface HistoryFrame extends ClientBase {
  type: "history";
  room: string;
  before_id?: number;
  after_id?: number;
  limit?: number;
}
export interface PresenceFrame extends ClientBase {
  type: "presence";
  room: string;
  offset?: number;
  limit?: number;
}
export interface AiRequestFrame extends ClientBase {
  type: "ai_request";
  prompt: string;
  room?: string;
  context?: boolean;
}
/** Extension: stops a running `ai_request` of this connection. */
export interface AiCancelFrame extends ClientBase {
  type: "ai_cancel";
  request_id: string;
}
export interface FileUploadRequestFrame extends ClientBase {
  type: "file_upload_request";
  filename: string;
  size: number;
  content_type: string;
  room?: string;
}
export interface ProjectUpdateFrame extends ClientBase {
  type: "project_update";
  project_id: string;
  changes: Record<string, unknown>;
}
export interface TicketUpdateFrame extends ClientBase {
  type: "ticket_update";
  ticket_id: string;
  project_id: string;
  changes: Record<string, unknown>;
}
export interface PingFrame extends ClientBase {
  type: "ping";
}

export type ClientFrame =
  | AuthenticationFrame
  | ChatMessageFrame
  | UserTypingFrame
  | UserJoinFrame
  | UserLeaveFrame
  | PresenceSubscribeFrame
  | PresenceUnsubscribeFrame
  | RoomJoinFrame
  | RoomLeaveFrame
  | HistoryFrame
  | PresenceFrame
  | AiRequestFrame
  | AiCancelFrame
  | FileUploadRequestFrame
  | ProjectUpdateFrame
  | TicketUpdateFrame
  | PingFrame;

export type ClientFrameType = ClientFrame["type"];

// ---------------------------------------------------------------------------
// Server → client frames. Every one has `timestamp`, and `ref` where it answers
// a client frame that carried one (broadcasts never carry `ref`).

interface ServerBase {
  timestamp: string;
  ref?: string;
}

export interface WelcomeFrame extends ServerBase {
  type: "welcome";
  connection_id: string;
  server: { name: string; version: string };
  heartbeat_interval_ms: number;
  authenticated: boolean;
  user: User | null;
  recent_messages: Message[];
  limits: { max_frame_bytes: number; max_message_chars: number };
}
export interface AuthSuccessFrame extends ServerBase {
  type: "auth_success";
  user: User;
  connection_id: string;
}
export interface MessageAckFrame extends ServerBase {
  type: "message_ack";
  message_id: number;
  room: string;
  client_msg_id: string | null;
}
export interface ChatMessageEvent extends ServerBase {
  type: "chat_message";
  message: Message;
}
export interface UserTypingEvent extends ServerBase {
  type: "user_typing";
  room: string;
  user: User;
  is_typing: boolean;
}
export interface UserJoinEvent extends ServerBase {
  type: "user_join";
  user: User;
}
export interface UserLeaveEvent extends ServerBase {
  type: "user_leave";
  user: User;
}
export interface PresenceStateFrame extends ServerBase {
  type: "presence_state";
  room: string | null;
  members: User[];
  member_count: number;
}
export interface PresenceUnsubscribedFrame extends ServerBase {
  type: "presence_unsubscribed";
}
export interface RoomJoinedFrame extends ServerBase {
  type: "room_joined";
  room: string;
  members: User[];
  member_count: number;
  recent_messages: Message[];
  missed: boolean;
}
export interface RoomLeftFrame extends ServerBase {
  type: "room_left";
  room: string;
}
export interface HistoryReplyFrame extends ServerBase {
  type: "history";
  room: string;
  messages: Message[];
  has_more: boolean;
}
export interface PresenceEvent extends ServerBase {
  type: "presence";
  room: string;
  event: "join" | "leave";
  user: User;
}
/** 1.1: sent instead of presence events while a room is large. */
export interface PresenceCountEvent extends ServerBase {
  type: "presence_count";
  room: string;
  member_count: number;
}
export interface AiResponseChunkFrame extends ServerBase {
  type: "ai_response_chunk";
  request_id: string;
  delta: string;
}
export interface AiResponseFrame extends ServerBase {
  type: "ai_response";
  request_id: string;
  content: string;
  model: string;
  message: Message | null;
}
/** Extension: the answer to `ai_cancel`. */
export interface AiCancelledFrame extends ServerBase {
  type: "ai_cancelled";
  request_id: string;
}
export interface FileUploadAuthorizedFrame extends ServerBase {
  type: "file_upload_authorized";
  upload_id: string;
  upload_url: string;
  method: "PUT";
  upload_token: string;
  expires_at: string;
  max_size: number;
}
export interface FileSharedEvent extends ServerBase {
  type: "file_shared";
  file: FileInfo;
  room: string;
  user: User;
  message: Message;
}
export interface ProjectUpdatedFrame extends ServerBase {
  type: "project_updated";
  project_id: string;
  event_id: number;
}
export interface TicketUpdatedFrame extends ServerBase {
  type: "ticket_updated";
  ticket_id: string;
  event_id: number;
}
export interface ProjectUpdateEvent extends ServerBase {
  type: "project_update";
  project_id: string;
  changes: Record<string, unknown>;
  user: User;
  event_id: number;
}
export interface TicketUpdateEvent extends ServerBase {
  type: "ticket_update";
  ticket_id: string;
  project_id: string;
  changes: Record<string, unknown>;
  user: User;
  event_id: number;
}
export interface PongFrame extends ServerBase {
  type: "pong";
  server_time: string;
}
export interface ErrorFrame extends ServerBase {
  type: "error";
  error_code: ErrorCode;
  message: string;
  retry_after_ms?: number;
}

export type ServerFrame =
  | WelcomeFrame
  | AuthSuccessFrame
  | MessageAckFrame
  | ChatMessageEvent
  | UserTypingEvent
  | UserJoinEvent
  | UserLeaveEvent
  | PresenceStateFrame
  | PresenceUnsubscribedFrame
  | RoomJoinedFrame
  | RoomLeftFrame
  | HistoryReplyFrame
  | PresenceEvent
  | PresenceCountEvent
  | AiResponseChunkFrame
  | AiResponseFrame
  | AiCancelledFrame
  | FileUploadAuthorizedFrame
  | FileSharedEvent
  | ProjectUpdatedFrame
  | TicketUpdatedFrame
  | ProjectUpdateEvent
  | TicketUpdateEvent
  | PongFrame
  | ErrorFrame;

export type ServerFrameType = ServerFrame["type"];

/** The server frame of a given `type`. */
export type ServerFrameOf<T extends ServerFrameType> = Extract<ServerFrame, { type: T }>;

/** Every `error_code` the server sends (section "Errors" of docs/protocol.md). */
export type ErrorCode =
  | "invalid_json"
  | "unknown_type"
  | "validation_error"
  | "unsupported_frame"
  | "not_authenticated"
  | "auth_failed"
  | "forbidden"
  | "not_found"
  | "username_taken"
  | "rate_limited"
  | "token_expired"
  | "file_too_large"
  | "file_type_not_allowed"
  | "ai_unavailable"
  | "ai_timeout"
  | "internal_error"
  | "unavailable"
  | "conflict"
  | "method_not_allowed"
  | "connection_limit";

/** WebSocket close codes the server uses, and what they mean for a client. */
export const CloseCode = {
  Normal: 1000,
  ShuttingDown: 1001,
  ProtocolError: 1002,
  InvalidUtf8: 1007,
  Policy: 1008,
  TooBig: 1009,
  InternalError: 1011,
  IdleTimeout: 4001,
  SlowConsumer: 4002,
  Kicked: 4003,
  ConnectionLimit: 4004,
} as const;

/** The room every authenticated connection and named guest is in without joining. */
export const GLOBAL_ROOM = "global";

/** Room names the server accepts. */
export const ROOM_NAME_PATTERN = /^[A-Za-z0-9_.:-]{1,64}$/;

// ---------------------------------------------------------------------------
// HTTP API bodies.

export interface LoginResponse {
  token: string;
  user: User;
  expires_at: string;
}

export interface HistoryPage {
  room: string;
  messages: Message[];
  has_more: boolean;
}

export interface ConnectionStats {
  connection_id: string;
  state: "CONNECTED" | "AUTHENTICATED" | "DISCONNECTED" | "INACTIVE";
  kind: UserKind;
  username: string | null;
  user_id: string | null;
  /** How many rooms the connection is in. */
  rooms: number;
  connected_at: string;
  last_activity: string;
  client_addr: string;
  user_agent: string | null;
  message_count: number;
}

export interface ServerStats {
  active_connections: number;
  peak_connections: number;
  total_connections: number;
  authenticated_users: number;
  rooms: number;
  messages_by_type: Record<string, number>;
  errors: Record<string, number>;
  slow_consumer_disconnects: number;
  connections: ConnectionStats[];
  online_users?: number;
  messages_out_by_type?: Record<string, number>;
  assistant_connections?: number;
  node?: string;
  cluster?: {
    nodes: number;
    active_connections: number;
    total_connections: number;
    online_users: number;
  } | null;
  [extra: string]: unknown;
}

export interface RoomStats {
  room: string;
  users: User[];
  connection_count: number;
  created_at: string;
  private?: boolean;
  owner_id?: string | null;
}

/** One entry of `GET /api/rooms` (admin): a room with connections on that node. */
export interface RoomSummary {
  name: string;
  /** Members online in the room (on every node). */
  member_count: number;
  /** This node's connections in the room. */
  connection_count: number;
}

/** `GET /api/info` (anyone): what the server offers, for deciding what to show. */
export interface ServerInfo {
  server: { name: string; version: string };
  features: {
    /** `POST /api/users` is open (`--open-registration`). */
    registration: boolean;
    /** Named guests may connect and chat (`--guest-chat`). */
    guest_chat: boolean;
    /** The assistant (`ai_query`) is configured. */
    ai: boolean;
    /** File sharing (`file_upload_request`) is on. */
    files: boolean;
  };
  limits: {
    max_message_chars: number;
    max_frame_bytes: number;
    /** `null` when files are off. */
    max_upload_bytes: number | null;
    /** Content types an upload may declare (empty when files are off). */
    upload_types: string[];
  };
  [extra: string]: unknown;
}

/** `201` answer to the upload `PUT`: the stored file and the message that shares it. */
export interface UploadResult {
  file: FileInfo;
  message?: Message;
}

export interface RoomInfo {
  name: string;
  private: boolean;
  owner_id: string | null;
  created_at: string;
}

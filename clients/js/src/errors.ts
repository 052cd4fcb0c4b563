// Errors the client hands to the application. Every failure is one of these
// classes, so callers can tell a refusal by the server (RoomcastError, with the
// protocol's error_code) from a timeout or a dropped connection.

import type { ErrorCode, ErrorFrame } from "./protocol.js";

/** The server answered a request with an `error` frame. */
export class RoomcastError extends Error {
  override name = "RoomcastError";
  /** The protocol's `error_code`, e.g. `forbidden`. */
  readonly code: ErrorCode | "cancelled";
  /** Set with `rate_limited` and `unavailable`: when to try again. */
  readonly retryAfterMs: number | undefined;
  /** The `ref` of the request that failed. */
  readonly ref: string | undefined;

  constructor(code: ErrorCode | "cancelled", message: string, retryAfterMs?: number, ref?: string) {
    super(message);
    this.code = code;
    this.retryAfterMs = retryAfterMs;
    this.ref = ref;
  }

  static fromFrame(frame: ErrorFrame): RoomcastError {
    return new RoomcastError(frame.error_code, frame.message, frame.retry_after_ms, frame.ref);
  }
}

/** No reply came within the request's timeout. */
export class TimeoutError extends Error {
  override name = "TimeoutError";
  constructor(readonly requestType: string, readonly timeoutMs: number) {
    super(`no reply to ${requestType} within ${timeoutMs} ms`);
  }
}

/** The connection closed (or was never open) before the reply came. */
export class ConnectionClosedError extends Error {
  override name = "ConnectionClosedError";
  constructor(readonly code?: number, readonly reason?: string) {
    super(code === undefined ? "not connected" : `connection closed (${code}${reason ? ": " + reason : ""})`);
  }
}

/** An HTTP API call answered with a status other than 2xx. */
export class HttpError extends Error {
  override name = "HttpError";
  constructor(
    readonly status: number,
    readonly code: string,
    message: string,
    readonly retryAfterMs?: number,
  ) {
    super(message);
  }
}

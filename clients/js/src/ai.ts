// An assistant answer as it streams in: an async iterator of text deltas, the
// final `ai_response` as a promise, and cancel(). The client feeds it frames;
// the application only reads.

import { RoomcastError } from "./errors.js";
import type { AiResponseFrame } from "./protocol.js";

export class AiStream implements AsyncIterable<string> {
  /** The server's id of the request, known from the first chunk or the answer. */
  requestId: string | null = null;
  /** Everything streamed so far. */
  text = "";
  /** Resolves with the final answer; rejects on an error or on cancel (code `cancelled`). */
  readonly result: Promise<AiResponseFrame>;
  /** True once the answer, an error or a cancellation ended the stream. */
  done = false;

  private queue: string[] = [];
  private waiter: (() => void) | null = null;
  private failure: Error | null = null;
  private resolveResult!: (frame: AiResponseFrame) => void;
  private rejectResult!: (err: Error) => void;
  private cancelRequested = false;

  /** @param sendCancel sends `ai_cancel` for a request id (set by the client). */
  constructor(private readonly sendCancel: (requestId: string) => Promise<void>) {
    this.result = new Promise<AiResponseFrame>((resolve, reject) => {
      this.resolveResult = resolve;
      this.rejectResult = reject;
    });
    // An application that only iterates must not see an unhandled rejection.
    this.result.catch(() => undefined);
  }

  /** Stops the answer: no more chunks, nothing stored. Harmless once done. */
  async cancel(): Promise<void> {
    if (this.done) return;
    this.cancelRequested = true;
    if (this.requestId === null) return; // sent as soon as the id is known
    await this.cancelNow(this.requestId);
  }

  private async cancelNow(requestId: string): Promise<void> {
    try {
      await this.sendCancel(requestId);
    } catch (err) {
      // `not_found`: it finished in the meantime, and the answer has come.
      if (!(err instanceof RoomcastError && err.code === "not_found")) throw err;
      return;
    }
    this.finishCancelled();
  }

  /** @internal A chunk arrived. */
  pushChunk(requestId: string, delta: string): void {
    if (this.done) return;
    if (this.requestId === null) {
      this.requestId = requestId;
      if (this.cancelRequested) {
        void this.cancelNow(requestId).catch(() => undefined);
        return;
      }
    }
    if (this.cancelRequested) return;
    this.text += delta;
    this.queue.push(delta);
    this.wake();
  }

  /** @internal The final answer arrived. */
  finish(frame: AiResponseFrame): void {
    if (this.done) return;
    this.requestId ??= frame.request_id;
    // Chunks always add up to `content`; a provider that does not stream sends
    // none, so the whole answer is one delta.
    if (frame.content.startsWith(this.text) && frame.content.length > this.text.length) {
      const rest = frame.content.slice(this.text.length);
      this.text = frame.content;
      this.queue.push(rest);
    }
    this.done = true;
    this.resolveResult(frame);
    this.wake();
  }

  /** @internal The request failed (error frame, timeout, lost connection). */
  fail(err: Error): void {
    if (this.done) return;
    this.done = true;
    this.failure = err;
    this.rejectResult(err);
    this.wake();
  }

  /** @internal */
  finishCancelled(): void {
    if (this.done) return;
    this.done = true;
    this.rejectResult(new RoomcastError("cancelled", "the AI request was cancelled"));
    this.wake();
  }

  private wake(): void {
    const w = this.waiter;
    this.waiter = null;
    w?.();
  }

  async *[Symbol.asyncIterator](): AsyncIterator<string> {
    for (;;) {
      if (this.queue.length > 0) {
        yield this.queue.shift()!;
        continue;
      }
      if (this.failure) throw this.failure;
      if (this.done) return;
      await new Promise<void>((resolve) => (this.waiter = resolve));
    }
  }
}

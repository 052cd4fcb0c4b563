// Reconnect delays: exponential backoff with full jitter, as in the AWS
// architecture note "Exponential Backoff And Jitter". Full jitter spreads a
// crowd of clients that lost the same server over the whole window, so a
// restarted server is not hit by all of them in the same instant.

export interface BackoffOptions {
  /** Delay ceiling of the first retry, in ms. */
  initialDelayMs: number;
  /** Largest delay ever waited, in ms. */
  maxDelayMs: number;
  /** Growth of the ceiling per attempt. */
  factor: number;
  /**
   * Share of the delay that is random: 1 is full jitter (uniform in
   * [0, ceiling]), 0 none (always the ceiling).
   */
  jitter: number;
}

export const DEFAULT_BACKOFF: BackoffOptions = {
  initialDelayMs: 500,
  maxDelayMs: 30_000,
  factor: 2,
  jitter: 0.5,
};

/**
 * Delay before retry number `attempt` (0 for the first retry).
 * `random` returns a number in [0, 1); tests pass a fixed one.
 */
export function backoffDelay(
  attempt: number,
  options: BackoffOptions = DEFAULT_BACKOFF,
  random: () => number = Math.random,
): number {
  const ceiling = Math.min(options.maxDelayMs, options.initialDelayMs * Math.pow(options.factor, Math.max(0, attempt)));
  const jitter = Math.min(1, Math.max(0, options.jitter));
  return Math.round(ceiling * (1 - jitter) + ceiling * jitter * random());
}

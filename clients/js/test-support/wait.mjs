// Helpers shared by the tests that run the real server (test-server/, e2e/).
import net from "node:net";

export const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

/** Polls `cond` until it holds, or fails after `timeoutMs` naming `what`. */
export async function until(cond, what, timeoutMs = 15000) {
  const start = Date.now();
  while (!(await cond())) {
    if (Date.now() - start > timeoutMs) throw new Error("timed out waiting for " + what);
    await sleep(25);
  }
}

/** A TCP port nothing listens on right now. */
export function freePort() {
  return new Promise((resolve, reject) => {
    const srv = net.createServer();
    srv.listen(0, "127.0.0.1", () => {
      const { port } = srv.address();
      srv.close(() => resolve(port));
    });
    srv.on("error", reject);
  });
}

/** Whether CI is set (then a missing binary or browser fails instead of skipping). */
export const CI = !["", "0", "false", undefined].includes(process.env.CI);

// Serves web/dist the way the server will once it embeds the pages
// (index.html at /, admin.html at /admin, every other file at /assets/<name>)
// and passes everything else — /api, /ws (WebSocket upgrades included),
// /healthz — to a roomcast server, so the pages are same-origin with it.
// For trying the pages before they are embedded, and for the e2e tests.
//
//   node e2e/serve-web.mjs [port] [backend]   (defaults 18081, http://127.0.0.1:18080)
import http from "node:http";
import net from "node:net";
import { readFile } from "node:fs/promises";
import { fileURLToPath } from "node:url";
import { dirname, join, basename } from "node:path";

const DIST = join(dirname(fileURLToPath(import.meta.url)), "..", "..", "..", "web", "dist");
const TYPES = { ".html": "text/html; charset=utf-8", ".js": "text/javascript; charset=utf-8", ".css": "text/css; charset=utf-8" };

export function serveWeb(port, backend) {
  const target = new URL(backend);
  const server = http.createServer(async (req, res) => {
    const path = new URL(req.url, "http://x").pathname;
    let file = null;
    if (path === "/" || path === "/index.html") file = "index.html";
    else if (path === "/admin") file = "admin.html";
    else if (path.startsWith("/assets/")) file = basename(path);
    if (file) {
      try {
        const body = await readFile(join(DIST, file));
        res.writeHead(200, { "content-type": TYPES[file.slice(file.lastIndexOf("."))] ?? "application/octet-stream", "cache-control": "no-cache" });
        res.end(body);
      } catch {
        res.writeHead(404).end();
      }
      return;
    }
    const upstream = http.request(
      { host: target.hostname, port: target.port, method: req.method, path: req.url, headers: { ...req.headers, host: target.host } },
      (up) => {
        res.writeHead(up.statusCode ?? 502, up.headers);
        up.pipe(res);
      },
    );
    upstream.on("error", () => {
      if (!res.headersSent) res.writeHead(502);
      res.end();
    });
    req.pipe(upstream);
  });
  server.on("upgrade", (req, socket, head) => {
    const up = net.connect(Number(target.port), target.hostname, () => {
      let raw = `${req.method} ${req.url} HTTP/1.1\r\n`;
      for (let i = 0; i < req.rawHeaders.length; i += 2) {
        const name = req.rawHeaders[i];
        const value = name.toLowerCase() === "host" ? target.host : req.rawHeaders[i + 1];
        raw += `${name}: ${value}\r\n`;
      }
      up.write(raw + "\r\n");
      if (head?.length) up.write(head);
      up.pipe(socket);
      socket.pipe(up);
    });
    const end = () => {
      up.destroy();
      socket.destroy();
    };
    up.on("error", end);
    socket.on("error", end);
    up.on("close", end);
    socket.on("close", end);
  });
  return new Promise((resolve) => server.listen(port, "127.0.0.1", () => resolve(server)));
}

if (process.argv[1] === fileURLToPath(import.meta.url)) {
  const port = Number(process.argv[2] ?? 18081);
  const backend = process.argv[3] ?? "http://127.0.0.1:18080";
  await serveWeb(port, backend);
  console.log(`web/dist on http://127.0.0.1:${port}/ -> ${backend}`);
}

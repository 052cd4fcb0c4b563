// µWebSockets.js chat server for comparison: `node uws-server.js PORT`.
// Rooms use µWS's own pub/sub, its fastest broadcast path.
'use strict';
const uWS = require('uWebSockets.js');
const { subjectOf, welcome, handle } = require('./protocol');

const port = Number(process.argv[2] || 9200);
const decoder = new TextDecoder();
const app = uWS.App().ws('/ws', {
  maxPayloadLength: 65536,
  idleTimeout: 120,
  maxBackpressure: 4 * 1024 * 1024,
  upgrade: (res, req, context) => {
    const url = req.getUrl() + '?' + req.getQuery();
    res.upgrade({ sub: subjectOf(url) },
      req.getHeader('sec-websocket-key'), req.getHeader('sec-websocket-protocol'),
      req.getHeader('sec-websocket-extensions'), context);
  },
  open: (ws) => {
    const sub = ws.getUserData().sub;
    ws.getUserData().user = { id: sub, username: sub, kind: 'user' };
    ws.send(welcome(ws.getUserData().user));
  },
  message: (ws, message) => handle(
    decoder.decode(message), ws.getUserData().user,
    (room) => ws.subscribe(room),
    (text) => ws.send(text),
    (room, text) => app.publish(room, text),
  ),
}).listen('127.0.0.1', port, (token) => {
  if (!token) { console.error(`cannot listen on ${port}`); process.exit(1); }
  console.log(`µWebSockets.js comparison server on ws://127.0.0.1:${port}/ws`);
});

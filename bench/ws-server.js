// Node.js `ws` chat server for comparison: `node ws-server.js PORT`.
'use strict';
const { WebSocketServer } = require('ws');
const { subjectOf, welcome, handle } = require('./protocol');

const port = Number(process.argv[2] || 9100);
const rooms = new Map();
const server = new WebSocketServer({ port, host: '127.0.0.1', path: '/ws', perMessageDeflate: false });

server.on('connection', (socket, request) => {
  const sub = subjectOf(request.url);
  const user = { id: sub, username: sub, kind: 'user' };
  const joined = new Set();
  socket.send(welcome(user));
  socket.on('message', (data) => handle(
    data.toString(), user,
    (room) => { joined.add(room); if (!rooms.has(room)) rooms.set(room, new Set()); rooms.get(room).add(socket); },
    (text) => socket.send(text),
    (room, text) => { for (const member of rooms.get(room) || []) member.send(text); },
  ));
  socket.on('close', () => { for (const room of joined) rooms.get(room)?.delete(socket); });
});
console.log(`ws comparison server on ws://127.0.0.1:${port}/ws`);

// The subset of the roomcast protocol that `roomcast bench` uses, shared by
// the comparison servers. Tokens are decoded, not verified: these servers
// exist only to be measured side by side with roomcast.
'use strict';

let nextId = 1;
let nextConnection = 1;

function subjectOf(url) {
  const token = new URLSearchParams(url.split('?')[1] || '').get('token') || '';
  try {
    const payload = JSON.parse(Buffer.from(token.split('.')[1] || '', 'base64url').toString());
    return String(payload.sub || 'anonymous');
  } catch {
    return 'anonymous';
  }
}

function welcome(user) {
  return JSON.stringify({
    type: 'welcome', connection_id: String(nextConnection++),
    server: { name: 'comparison', version: '0' }, heartbeat_interval_ms: 30000,
    authenticated: true, user, recent_messages: [],
    limits: { max_frame_bytes: 65536, max_message_chars: 4000 },
    timestamp: new Date().toISOString(),
  });
}

// Handles one client frame. `join(room)` subscribes the connection,
// `reply(text)` answers it, `publish(room, text)` broadcasts to a room.
function handle(text, user, join, reply, publish) {
  let frame;
  try { frame = JSON.parse(text); } catch { return reply(JSON.stringify({ type: 'error', error_code: 'invalid_json' })); }
  const now = new Date().toISOString();
  switch (frame.type) {
    case 'room_join':
      join(frame.room);
      return reply(JSON.stringify({ type: 'room_joined', room: frame.room, members: [], member_count: 0, recent_messages: [], missed: false, timestamp: now }));
    case 'chat_message': {
      const id = nextId++;
      const room = frame.room || 'global';
      reply(JSON.stringify({ type: 'message_ack', message_id: id, room, client_msg_id: frame.client_msg_id || null, timestamp: now }));
      return publish(room, JSON.stringify({
        type: 'chat_message',
        message: { id, room, user, content: frame.content, created_at: now, client_msg_id: frame.client_msg_id || null, reply_to: null, attachment: null },
        timestamp: now,
      }));
    }
    case 'ping':
      return reply(JSON.stringify({ type: 'pong', server_time: now, timestamp: now }));
    default:
      return reply(JSON.stringify({ type: 'error', error_code: 'unknown_type', timestamp: now }));
  }
}

module.exports = { subjectOf, welcome, handle };

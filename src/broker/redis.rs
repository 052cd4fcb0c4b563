//! Several nodes on one Redis: every broadcast is delivered to this node's
//! connections at once and published once to Redis (sharded pub/sub,
//! `SPUBLISH`), whence the other nodes that have an interest deliver it to
//! theirs.
//!
//! Channels: `roomcast:room:{room}` for a room, which a node subscribes to
//! (`SSUBSCRIBE`) while it has members in the room; `roomcast:everyone`
//! (global chat) and `roomcast:online` (online announcements), which every
//! node subscribes to. One Redis message per broadcast, however many nodes
//! and recipients. Sharded channels keep the same code right on a Redis
//! Cluster, where each channel lives on the shard of its hash slot.

use super::Broker;
use super::envelope::{self, Envelope};
use crate::hub::{Audience, Hub, OutFrame, RoomInterest};
use bytes::Bytes;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{ProtocolVersion, PushInfo, PushKind, Value};
use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;

/// The channel everyone's broadcasts travel on.
const EVERYONE: &str = "roomcast:everyone";
/// The channel of online announcements (to online subscribers).
const ONLINE: &str = "roomcast:online";

fn room_channel(room: &str) -> String {
    format!("roomcast:room:{room}")
}

/// Why the broker could not start.
#[derive(Debug, thiserror::Error)]
#[error("cannot use the Redis broker: {0}")]
pub struct BrokerError(String);

/// Broker for several nodes on one Redis.
pub struct RedisBroker {
    hub: Arc<Hub>,
    /// Encoded broadcasts on their way to Redis, in publish order.
    outgoing: mpsc::UnboundedSender<(String, Bytes)>,
}

/// The broker's tasks, to abort at shutdown.
pub struct RedisTasks {
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl RedisTasks {
    pub fn abort(&self) {
        self.tasks.iter().for_each(tokio::task::JoinHandle::abort);
    }
}

impl RedisBroker {
    /// Connects to Redis at `url` (RESP3), subscribes to the channels every
    /// node hears, and starts following the hub's rooms. Redis being
    /// unreachable does not stop the start: the node serves its own
    /// connections and keeps trying.
    pub fn connect(url: &str, hub: Arc<Hub>) -> Result<(RedisBroker, RedisTasks), BrokerError> {
        let client = client(url)?;
        let (pushes, push_receiver) = mpsc::unbounded_channel::<PushInfo>();
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(Duration::from_secs(5)))
            .set_response_timeout(Some(Duration::from_secs(5)))
            .set_max_delay(Duration::from_secs(2))
            .set_number_of_retries(2);
        let subscriber = ConnectionManager::new_lazy_with_config(
            client.clone(),
            config.clone().set_push_sender(pushes),
        )
        .map_err(|err| BrokerError(describe(&err)))?;
        let publisher = ConnectionManager::new_lazy_with_config(client, config)
            .map_err(|err| BrokerError(describe(&err)))?;
        let interest = hub
            .watch_rooms()
            .ok_or_else(|| BrokerError("the hub already has a broker".into()))?;
        let follower = Follower {
            hub: hub.clone(),
            connection: subscriber,
            subscribed: HashSet::new(),
            lost: false,
        };
        let (outgoing, queue) = mpsc::unbounded_channel();
        let tasks = vec![
            tokio::spawn(follower.run(interest, push_receiver)),
            tokio::spawn(publish(publisher, queue)),
        ];
        Ok((RedisBroker { hub, outgoing }, RedisTasks { tasks }))
    }
}

impl Broker for RedisBroker {
    fn publish(&self, audience: Audience, frame: OutFrame, except: Option<&str>) {
        let channel = match &audience {
            Audience::Room(room) => room_channel(room),
            Audience::Everyone => EVERYONE.to_owned(),
            Audience::Watchers { .. } => ONLINE.to_owned(),
        };
        if let Some(bytes) = envelope::encode(self.hub.node_id(), &audience, except, &frame) {
            // The task is gone only at shutdown.
            let _ = self.outgoing.send((channel, bytes));
        }
        self.hub.broadcast(&audience, &frame, except);
    }

    fn spans_nodes(&self) -> bool {
        true
    }
}

/// A Redis client for `url`, speaking RESP3 (subscriptions and commands on
/// one connection).
fn client(url: &str) -> Result<redis::Client, BrokerError> {
    use redis::IntoConnectionInfo;
    let info = url
        .into_connection_info()
        .map_err(|err| BrokerError(describe(&err)))?;
    let settings = info
        .redis_settings()
        .clone()
        .set_protocol(ProtocolVersion::RESP3);
    redis::Client::open(info.set_redis_settings(settings))
        .map_err(|err| BrokerError(describe(&err)))
}

/// An error without the URL it may carry (and its password).
fn describe(err: &redis::RedisError) -> String {
    match err.kind() {
        redis::ErrorKind::Io => "Redis is unreachable".into(),
        _ => format!("{:?}", err.kind()),
    }
}

/// Publishes broadcasts in order, as many as are waiting in one pipeline.
async fn publish(
    mut connection: ConnectionManager,
    mut queue: mpsc::UnboundedReceiver<(String, Bytes)>,
) {
    let mut failing = false;
    let mut waiting = Vec::new();
    while queue.recv_many(&mut waiting, 512).await > 0 {
        let mut pipeline = redis::pipe();
        for (channel, bytes) in waiting.drain(..) {
            pipeline
                .cmd("SPUBLISH")
                .arg(channel)
                .arg(bytes.as_ref())
                .ignore();
        }
        match pipeline.query_async::<()>(&mut connection).await {
            Ok(()) => {
                if failing {
                    tracing::info!("publishing to Redis again");
                    failing = false;
                }
            }
            Err(err) => {
                if !failing {
                    tracing::error!(
                        error = describe(&err),
                        "cannot publish to Redis: other nodes miss this node's broadcasts until it is back"
                    );
                    failing = true;
                }
            }
        }
    }
}

/// Follows the hub's rooms with subscriptions and delivers what arrives.
struct Follower {
    hub: Arc<Hub>,
    connection: ConnectionManager,
    /// Room channels subscribed to.
    subscribed: HashSet<Arc<str>>,
    /// The connection was lost: subscriptions are to be made again.
    lost: bool,
}

impl Follower {
    async fn run(
        mut self,
        mut interest: mpsc::UnboundedReceiver<RoomInterest>,
        mut pushes: mpsc::UnboundedReceiver<PushInfo>,
    ) {
        if let Err(err) = self.subscribe_all().await {
            self.lose(&err);
        }
        loop {
            tokio::select! {
                change = interest.recv() => match change {
                    Some((room, open)) => self.follow(room, open).await,
                    None => return,
                },
                push = pushes.recv() => match push {
                    Some(push) => self.received(push),
                    None => return,
                },
                () = tokio::time::sleep(Duration::from_millis(500)), if self.lost => {
                    if self.subscribe_all().await.is_ok() {
                        tracing::info!("subscribed to Redis again");
                        self.lost = false;
                    }
                }
            }
        }
    }

    async fn follow(&mut self, room: Arc<str>, open: bool) {
        if self.lost {
            // Done when the connection is back, from the hub's rooms then.
            return;
        }
        let command = if open { "SSUBSCRIBE" } else { "SUNSUBSCRIBE" };
        let result = redis::cmd(command)
            .arg(room_channel(&room))
            .query_async::<Value>(&mut self.connection)
            .await;
        match result {
            Ok(_) if open => {
                self.subscribed.insert(room);
            }
            Ok(_) => {
                self.subscribed.remove(&room);
            }
            Err(err) => self.lose(&err),
        }
    }

    /// Subscribes to the channels every node hears and to every room with
    /// members here.
    async fn subscribe_all(&mut self) -> redis::RedisResult<()> {
        for channel in [EVERYONE, ONLINE] {
            redis::cmd("SSUBSCRIBE")
                .arg(channel)
                .query_async::<Value>(&mut self.connection)
                .await?;
        }
        self.subscribed.clear();
        for room in self.hub.room_names() {
            redis::cmd("SSUBSCRIBE")
                .arg(room_channel(&room))
                .query_async::<Value>(&mut self.connection)
                .await?;
            self.subscribed.insert(room);
        }
        Ok(())
    }

    fn lose(&mut self, err: &redis::RedisError) {
        if !self.lost {
            tracing::error!(
                error = describe(err),
                "lost Redis: this node serves its own connections alone until it is back"
            );
            self.lost = true;
        }
    }

    fn received(&mut self, push: PushInfo) {
        match push.kind {
            PushKind::SMessage | PushKind::Message => {
                let Some(Value::BulkString(payload)) = push.data.get(1) else {
                    return;
                };
                let Some(Envelope {
                    origin,
                    audience,
                    except,
                    frame,
                }) = envelope::decode(&Bytes::copy_from_slice(payload))
                else {
                    tracing::warn!("ignored a Redis message that is not a roomcast broadcast");
                    return;
                };
                if origin != self.hub.node_id() {
                    self.hub.broadcast(&audience, &frame, except.as_deref());
                }
            }
            PushKind::Disconnection if !self.lost => {
                tracing::error!(
                    "lost Redis: this node serves its own connections alone until it is back"
                );
                self.lost = true;
            }
            _ => {}
        }
    }
}

//! One Redis, or a Redis Cluster, behind one connection type. Commands go
//! through either alike; a room's channel is a classic channel on one Redis
//! and a shard channel (`SSUBSCRIBE`/`SPUBLISH`) on a cluster, where it
//! lives on the shard that owns it instead of reaching every shard. (On one
//! Redis, redis-rs 1.8 cannot match `SUNSUBSCRIBE`'s confirmation, issue
//! 2533, and a node must leave a room's channel when its last member
//! leaves; there the two kinds behave the same.)

use redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig};
use redis::cluster_async::ClusterConnection;
use redis::{Cmd, Pipeline, ProtocolVersion, PushInfo, RedisFuture, RedisResult, Value};
use std::time::Duration;
use tokio::sync::mpsc;

/// The scheme of a cluster's seed list:
/// `redis-cluster://[USER:PASSWORD@]HOST:PORT[,HOST:PORT...]`.
pub const CLUSTER_SCHEME: &str = "redis-cluster://";

/// A connection to one Redis or to a Redis Cluster.
#[derive(Clone)]
pub enum Connection {
    Single(ConnectionManager),
    Cluster(ClusterConnection),
}

/// How long connecting and each answer may take.
const TIMEOUT: Duration = Duration::from_secs(5);

impl Connection {
    /// Connects to `url` (RESP3), with pushes (what subscriptions hear) to
    /// `pushes` if given. One Redis is connected lazily (a node starts
    /// while Redis is away and keeps trying); a cluster must answer now,
    /// for its map of shards.
    pub async fn open(
        url: &str,
        pushes: Option<mpsc::UnboundedSender<PushInfo>>,
    ) -> Result<Connection, String> {
        if let Some(seeds) = url.strip_prefix(CLUSTER_SCHEME) {
            // Credentials before the first host are every shard's.
            let (credentials, seeds) = match seeds.split_once('@') {
                Some((credentials, hosts)) => (format!("{credentials}@"), hosts),
                None => (String::new(), seeds),
            };
            let seeds: Vec<String> = seeds
                .trim_end_matches('/')
                .split(',')
                .filter(|seed| !seed.is_empty())
                .map(|seed| format!("redis://{credentials}{seed}"))
                .collect();
            let mut builder = redis::cluster::ClusterClientBuilder::new(seeds)
                .use_protocol(ProtocolVersion::RESP3)
                .connection_timeout(TIMEOUT)
                .response_timeout(TIMEOUT);
            if let Some(pushes) = pushes {
                builder = builder.push_sender(pushes);
            }
            let client = builder.build().map_err(|err| describe(&err))?;
            let connection = client
                .get_async_connection()
                .await
                .map_err(|err| describe(&err))?;
            return Ok(Connection::Cluster(connection));
        }
        use redis::IntoConnectionInfo;
        let info = url.into_connection_info().map_err(|err| describe(&err))?;
        let settings = info
            .redis_settings()
            .clone()
            .set_protocol(ProtocolVersion::RESP3);
        let client =
            redis::Client::open(info.set_redis_settings(settings)).map_err(|err| describe(&err))?;
        let mut config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(TIMEOUT))
            .set_response_timeout(Some(TIMEOUT))
            .set_max_delay(Duration::from_secs(2))
            .set_number_of_retries(2);
        if let Some(pushes) = pushes {
            config = config.set_push_sender(pushes);
        }
        ConnectionManager::new_lazy_with_config(client, config)
            .map(Connection::Single)
            .map_err(|err| describe(&err))
    }

    /// Hears a channel every node hears (classic pub/sub).
    pub async fn subscribe(&mut self, channel: String) -> RedisResult<()> {
        match self {
            Connection::Single(connection) => connection.subscribe(channel).await,
            Connection::Cluster(connection) => connection.subscribe(channel).await,
        }
    }

    /// Hears a room's channel.
    pub async fn follow(&mut self, channel: String) -> RedisResult<()> {
        match self {
            Connection::Single(connection) => connection.subscribe(channel).await,
            Connection::Cluster(connection) => connection.ssubscribe(channel).await,
        }
    }

    /// Stops hearing a room's channel.
    pub async fn unfollow(&mut self, channel: String) -> RedisResult<()> {
        match self {
            Connection::Single(connection) => connection.unsubscribe(channel).await,
            Connection::Cluster(connection) => connection.sunsubscribe(channel).await,
        }
    }

    /// Runs the commands of `pipeline` from the `skip`th on, in order,
    /// their answers ignored: on one Redis as one pipeline (one round
    /// trip), on a cluster one after the other (each to the shard that owns
    /// its key or channel). On failure, how many more went through (none on
    /// one Redis: the pipeline is sent again whole).
    pub async fn run_in_order(
        &mut self,
        pipeline: &Pipeline,
        skip: usize,
    ) -> Result<(), (usize, redis::RedisError)> {
        match self {
            Connection::Single(connection) => pipeline
                .query_async::<()>(connection)
                .await
                .map_err(|err| (0, err)),
            Connection::Cluster(connection) => {
                for (sent, command) in pipeline.cmd_iter().skip(skip).enumerate() {
                    command
                        .query_async::<Value>(connection)
                        .await
                        .map_err(|err| (sent, err))?;
                }
                Ok(())
            }
        }
    }

    /// The command that publishes to a room's channel.
    pub fn room_publish(&self) -> &'static str {
        match self {
            Connection::Single(_) => "PUBLISH",
            Connection::Cluster(_) => "SPUBLISH",
        }
    }
}

impl ConnectionLike for Connection {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Connection::Single(connection) => connection.req_packed_command(cmd),
            Connection::Cluster(connection) => connection.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        cmd: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Connection::Single(connection) => connection.req_packed_commands(cmd, offset, count),
            Connection::Cluster(connection) => connection.req_packed_commands(cmd, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Connection::Single(connection) => connection.get_db(),
            Connection::Cluster(connection) => connection.get_db(),
        }
    }
}

/// An error without the URL it may carry (and its password).
pub fn describe(err: &redis::RedisError) -> String {
    match err.kind() {
        redis::ErrorKind::Io => "Redis is unreachable".into(),
        _ => format!("{:?}", err.kind()),
    }
}

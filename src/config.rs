//! Configuration: command-line flags, `ROOMCAST_*` environment variables and an
//! optional TOML file, resolved into one [`Config`] with every default in one
//! place.
//!
//! Precedence, highest first: flag, environment variable, config file, default.
//! A config file that is named but cannot be read or parsed stops start-up; it
//! never falls back silently. Unknown keys in the file are errors too, so a typo
//! does not go unnoticed.

use crate::store::Retention;
use clap::Args;
use serde::Deserialize;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Most runtime threads `--threads` accepts.
const MAX_THREADS: usize = 1024;

/// Why a configuration could not be built.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("invalid config file {path}: {source}")]
    Parse {
        path: PathBuf,
        #[source]
        source: toml::de::Error,
    },
    #[error("invalid setting `{name}`: {reason}")]
    Invalid { name: &'static str, reason: String },
}

/// Flags of `roomcast serve`. Every field is optional so that a value given
/// nowhere can fall back to the config file and then to the default; the same
/// struct is what the TOML file deserializes into.
#[derive(Debug, Clone, Default, Args, Deserialize, serde::Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct ServeArgs {
    /// TOML file with any of these settings (keys as the flags, with `_`).
    #[arg(long, env = "ROOMCAST_CONFIG")]
    #[serde(skip)]
    pub config: Option<PathBuf>,

    /// Address to listen on [default: 0.0.0.0:8080].
    #[arg(long, env = "ROOMCAST_BIND")]
    pub bind: Option<SocketAddr>,

    /// Message store: `sqlite::memory:`, `sqlite://PATH`, a file path, or
    /// `postgres://...` [default: sqlite file `roomcast.db` in the data dir].
    #[arg(long, env = "ROOMCAST_DATABASE")]
    pub database: Option<String>,

    /// How broadcasts reach other nodes: `local` (one process) or
    /// `redis://HOST:PORT[/DB]` to run several nodes on one Redis and one
    /// PostgreSQL, or `redis-cluster://HOST:PORT[,HOST:PORT...]` on a Redis
    /// Cluster [default: local].
    #[arg(long, env = "ROOMCAST_BROKER")]
    pub broker: Option<String>,

    /// Prefix of this deployment's Redis channels: deployments sharing one
    /// Redis set different ones [default: roomcast].
    #[arg(long, env = "ROOMCAST_BROKER_NAMESPACE")]
    pub broker_namespace: Option<String>,

    /// Directory for the default SQLite file [default: ./data].
    #[arg(long, env = "ROOMCAST_DATA_DIR")]
    pub data_dir: Option<PathBuf>,

    /// HS256 secret that signs and verifies tokens [default: random per start].
    #[arg(long, env = "ROOMCAST_JWT_SECRET", hide_env_values = true)]
    pub jwt_secret: Option<String>,

    /// Key for the admin HTTP API [default: none: only tokens with the admin role are admins].
    #[arg(long, env = "ROOMCAST_ADMIN_KEY", hide_env_values = true)]
    pub admin_key: Option<String>,

    /// Allow `POST /api/users` to create accounts.
    #[arg(
        long,
        env = "ROOMCAST_OPEN_REGISTRATION",
        num_args = 0..=1,
        require_equals = true,
        default_missing_value = "true",
        value_parser = clap::builder::BoolishValueParser::new()
    )]
    pub open_registration: Option<bool>,

    /// Serve the chat page at `/` and the admin page at `/admin`
    /// (`--web-ui false` turns them off) [default: true].
    #[arg(
        long,
        env = "ROOMCAST_WEB_UI",
        num_args = 0..=1,
        default_missing_value = "true",
        value_parser = clap::builder::BoolishValueParser::new()
    )]
    pub web_ui: Option<bool>,

    /// Allow guests to name themselves with `user_join` and chat.
    #[arg(
        long,
        env = "ROOMCAST_GUEST_CHAT",
        num_args = 0..=1,
        require_equals = true,
        default_missing_value = "true",
        value_parser = clap::builder::BoolishValueParser::new()
    )]
    pub guest_chat: Option<bool>,

    /// OpenAI-compatible API base URL for the assistant.
    #[arg(long, env = "ROOMCAST_AI_BASE_URL")]
    pub ai_base_url: Option<String>,

    /// Model name sent to the AI API [default: default].
    #[arg(long, env = "ROOMCAST_AI_MODEL")]
    pub ai_model: Option<String>,

    /// File holding the AI API key (else `ROOMCAST_AI_API_KEY`; never a flag).
    #[arg(long, env = "ROOMCAST_AI_API_KEY_FILE")]
    pub ai_api_key_file: Option<PathBuf>,

    /// System prompt for the assistant.
    #[arg(long, env = "ROOMCAST_AI_SYSTEM_PROMPT")]
    pub ai_system_prompt: Option<String>,

    /// Longest an AI answer may take, in ms; then `ai_timeout` [default: 60000].
    #[arg(long, env = "ROOMCAST_AI_TIMEOUT_MS")]
    pub ai_timeout_ms: Option<u64>,

    /// The assistant's username in rooms [default: assistant].
    #[arg(long, env = "ROOMCAST_AI_NAME")]
    pub ai_name: Option<String>,

    /// Recent room messages given to the model as context [default: 20].
    #[arg(long, env = "ROOMCAST_AI_CONTEXT_MESSAGES")]
    pub ai_context_messages: Option<usize>,

    /// Budget for that context, in characters; the oldest messages are
    /// dropped first [default: 16000].
    #[arg(long, env = "ROOMCAST_AI_CONTEXT_CHARS")]
    pub ai_context_chars: Option<usize>,

    /// Rooms where the assistant answers every message (comma-separated);
    /// elsewhere it answers messages that mention `@<ai-name>`.
    #[arg(long, env = "ROOMCAST_AI_ANSWER_ALL_ROOMS", value_delimiter = ',')]
    pub ai_answer_all_rooms: Option<Vec<String>>,

    /// AI requests per user per minute [default: 10].
    #[arg(long, env = "ROOMCAST_AI_REQUESTS_PER_USER_PER_MINUTE")]
    pub ai_requests_per_user_per_minute: Option<u32>,

    /// AI requests per room per minute [default: 30].
    #[arg(long, env = "ROOMCAST_AI_REQUESTS_PER_ROOM_PER_MINUTE")]
    pub ai_requests_per_room_per_minute: Option<u32>,

    /// Provider calls at once, over all users; more wait in order [default: 4].
    #[arg(long, env = "ROOMCAST_AI_MAX_CONCURRENT")]
    pub ai_max_concurrent: Option<usize>,

    /// Interval of WebSocket pings, in ms [default: 30000].
    #[arg(long, env = "ROOMCAST_HEARTBEAT_INTERVAL_MS")]
    pub heartbeat_interval_ms: Option<u64>,

    /// Close a connection silent for this long with 4001, in ms [default: 90000].
    #[arg(long, env = "ROOMCAST_IDLE_TIMEOUT_MS")]
    pub idle_timeout_ms: Option<u64>,

    /// Largest frame accepted; larger ones close with 1009 [default: 65536].
    #[arg(long, env = "ROOMCAST_MAX_FRAME_BYTES")]
    pub max_frame_bytes: Option<usize>,

    /// Longest chat message or AI prompt, in characters [default: 4000].
    #[arg(long, env = "ROOMCAST_MAX_MESSAGE_CHARS")]
    pub max_message_chars: Option<usize>,

    /// Messages of `global` in the welcome frame [default: 50].
    #[arg(long, env = "ROOMCAST_WELCOME_HISTORY")]
    pub welcome_history: Option<usize>,

    /// Messages in `room_joined.recent_messages` [default: 50].
    #[arg(long, env = "ROOMCAST_ROOM_HISTORY")]
    pub room_history: Option<usize>,

    /// Most messages replayed by `room_join` with `since_id` [default: 1000].
    #[arg(long, env = "ROOMCAST_MAX_RECOVERY")]
    pub max_recovery: Option<usize>,

    /// Most members listed in `room_joined` [default: 100].
    #[arg(long, env = "ROOMCAST_MAX_MEMBERS_LISTED")]
    pub max_members_listed: Option<usize>,

    /// Distinct members online above which a room is large: its members get
    /// a `presence_count` at most once a second instead of a `presence`
    /// event per join and leave [default: 1000].
    #[arg(long, env = "ROOMCAST_PRESENCE_MAX_MEMBERS")]
    pub presence_max_members: Option<usize>,

    /// Frames queued for one connection before it is closed with 4002 as a
    /// slow consumer [default: 4096].
    #[arg(long, env = "ROOMCAST_OUTBOX_CAPACITY")]
    pub outbox_capacity: Option<usize>,

    /// Chat messages of one connection waiting for storage at once; more are
    /// read only when earlier ones are stored [default: 64].
    #[arg(long, env = "ROOMCAST_MAX_PENDING_WRITES")]
    pub max_pending_writes: Option<usize>,

    /// Rooms one user may create per hour by joining rooms that do not
    /// exist yet, where rooms are auto-created; 0 = no limit [default: 100].
    #[arg(long, env = "ROOMCAST_MAX_ROOMS_CREATED_PER_HOUR")]
    pub max_rooms_created_per_hour: Option<u32>,

    /// How long a frame may wait for storage (behind a connection's chat
    /// messages in flight) before it is answered with `unavailable`, in ms
    /// [default: 10000].
    #[arg(long, env = "ROOMCAST_STORE_TIMEOUT_MS")]
    pub store_timeout_ms: Option<u64>,

    /// Keep at most this many of the newest messages per room [default: all].
    #[arg(long, env = "ROOMCAST_RETENTION_MAX_MESSAGES")]
    pub retention_max_messages: Option<u64>,

    /// Delete messages older than this: `90s`, `15m`, `12h`, `30d` [default: never].
    #[arg(long, env = "ROOMCAST_RETENTION_MAX_AGE")]
    pub retention_max_age: Option<String>,

    /// How often retention runs, in ms [default: 60000].
    #[arg(long, env = "ROOMCAST_RETENTION_INTERVAL_MS")]
    pub retention_interval_ms: Option<u64>,

    /// Lifetime of tokens issued by `POST /api/login` [default: 24h].
    #[arg(long, env = "ROOMCAST_TOKEN_TTL")]
    pub token_ttl: Option<String>,

    /// After a connection's token expires, how long it has to send a new one
    /// before it is closed with 1008, in ms [default: 30000].
    #[arg(long, env = "ROOMCAST_TOKEN_GRACE_MS")]
    pub token_grace_ms: Option<u64>,

    /// PEM public key (RSA or EC) that verifies RS256/ES256 tokens minted by
    /// another backend.
    #[arg(long, env = "ROOMCAST_JWT_PUBLIC_KEY")]
    pub jwt_public_key: Option<PathBuf>,

    /// Rooms must be created with `POST /api/rooms`; joining an unknown room
    /// is `not_found` instead of creating it.
    #[arg(
        long,
        env = "ROOMCAST_NO_ROOM_AUTO_CREATE",
        num_args = 0..=1,
        require_equals = true,
        default_missing_value = "true",
        value_parser = clap::builder::BoolishValueParser::new()
    )]
    pub no_room_auto_create: Option<bool>,

    /// Frames per second one connection may send (ping excepted); 0 = no
    /// limit [default: 100].
    #[arg(long, env = "ROOMCAST_RATE_LIMIT_MESSAGES")]
    pub rate_limit_messages: Option<u32>,

    /// Frames a connection may send at once above the rate [default: 200].
    #[arg(long, env = "ROOMCAST_RATE_LIMIT_BURST")]
    pub rate_limit_burst: Option<u32>,

    /// Open connections per user; more are closed with 4004; 0 = no limit
    /// [default: 32].
    #[arg(long, env = "ROOMCAST_MAX_CONNECTIONS_PER_USER")]
    pub max_connections_per_user: Option<usize>,

    /// Open connections per client IP; more are closed with 4004; 0 = no
    /// limit [default: 1000].
    #[arg(long, env = "ROOMCAST_MAX_CONNECTIONS_PER_IP")]
    pub max_connections_per_ip: Option<usize>,

    /// Open connections in all; more are answered with 503 at once
    /// [default: what the file-descriptor limit allows].
    #[arg(long, env = "ROOMCAST_MAX_CONNECTIONS")]
    pub max_connections: Option<usize>,

    /// Threads that run connections [default: one per CPU core]. Storage
    /// has a thread of its own besides.
    #[arg(long, env = "ROOMCAST_THREADS")]
    pub threads: Option<usize>,

    /// Log lines as `text` (colours only on a terminal) or `json` (one
    /// object per line, for log collectors) [default: text].
    #[arg(long, env = "ROOMCAST_LOG_FORMAT", value_enum)]
    pub log_format: Option<LogFormat>,

    /// Rooms one connection may be in at once [default: 100].
    #[arg(long, env = "ROOMCAST_MAX_ROOMS_PER_CONNECTION")]
    pub max_rooms_per_connection: Option<usize>,

    /// Failed logins allowed per client IP per minute; more wait
    /// (`rate_limited`, HTTP 429) [default: 10].
    #[arg(long, env = "ROOMCAST_LOGIN_ATTEMPTS_PER_MINUTE")]
    pub login_attempts_per_minute: Option<u32>,

    /// Largest HTTP request body for the JSON API [default: 65536].
    #[arg(long, env = "ROOMCAST_MAX_HTTP_BODY_BYTES")]
    pub max_http_body_bytes: Option<usize>,

    /// Comma-separated browser origins allowed to open WebSockets (e.g.
    /// `https://chat.example.com`); others are closed with 1008 [default: any].
    #[arg(long, env = "ROOMCAST_ALLOWED_ORIGINS", value_delimiter = ',')]
    pub allowed_origins: Option<Vec<String>>,

    /// PEM certificate chain: serve HTTPS and WSS directly (with --tls-key).
    #[arg(long, env = "ROOMCAST_TLS_CERT")]
    pub tls_cert: Option<PathBuf>,

    /// PEM private key for --tls-cert.
    #[arg(long, env = "ROOMCAST_TLS_KEY")]
    pub tls_key: Option<PathBuf>,

    /// Largest file a user may upload, in bytes [default: 26214400 (25 MiB)].
    #[arg(long, env = "ROOMCAST_MAX_UPLOAD_BYTES")]
    pub max_upload_bytes: Option<u64>,

    /// Comma-separated content types users may upload; `none` turns file
    /// sharing off [default: image/png,image/jpeg,image/gif,image/webp,
    /// application/pdf,text/plain,application/zip].
    #[arg(long, env = "ROOMCAST_UPLOAD_TYPES", value_delimiter = ',')]
    pub upload_types: Option<Vec<String>>,

    /// Where uploaded files are kept: a directory, or `s3://BUCKET[/PREFIX]`
    /// for an S3-compatible bucket (credentials, region and endpoint from
    /// the usual AWS_* variables) [default: `files` in the data dir].
    #[arg(long, env = "ROOMCAST_FILE_STORE")]
    pub file_store: Option<String>,

    /// How long an upload authorization may wait for its PUT [default: 15m].
    #[arg(long, env = "ROOMCAST_UPLOAD_TTL")]
    pub upload_ttl: Option<String>,

    /// URL that receives the rooms' messages, shared files and project and
    /// ticket events as signed JSON POSTs; repeat for several.
    #[arg(long = "webhook", env = "ROOMCAST_WEBHOOK", value_delimiter = ',')]
    pub webhook: Option<Vec<String>>,

    /// Secret that signs webhook deliveries (HMAC-SHA256) [default: none: unsigned].
    #[arg(long, env = "ROOMCAST_WEBHOOK_SECRET", hide_env_values = true)]
    pub webhook_secret: Option<String>,

    /// Comma-separated rooms whose activity goes to the --webhook URLs
    /// [default: every room].
    #[arg(long, env = "ROOMCAST_WEBHOOK_ROOMS", value_delimiter = ',')]
    pub webhook_rooms: Option<Vec<String>>,

    /// How long a webhook has to answer a delivery, in milliseconds [default: 10000].
    #[arg(long, env = "ROOMCAST_WEBHOOK_TIMEOUT_MS")]
    pub webhook_timeout_ms: Option<u64>,

    /// Tries per webhook delivery before it is recorded as failed [default: 12].
    #[arg(long, env = "ROOMCAST_WEBHOOK_MAX_ATTEMPTS")]
    pub webhook_max_attempts: Option<u32>,

    /// Wait before the first retry of a failed delivery, in milliseconds;
    /// it doubles with each further try, up to 10 minutes [default: 1000].
    #[arg(long, env = "ROOMCAST_WEBHOOK_RETRY_BASE_MS")]
    pub webhook_retry_base_ms: Option<u64>,

    /// Webhooks with their own rooms and secrets (config file only:
    /// `[[webhooks]]` tables with `url`, `rooms` and `secret`).
    #[arg(skip)]
    pub webhooks: Option<Vec<WebhookSpec>>,
}

/// One webhook as the config file gives it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct WebhookSpec {
    pub url: String,
    /// Rooms whose activity it receives; every room when absent or empty.
    #[serde(default)]
    pub rooms: Vec<String>,
    #[serde(default)]
    pub secret: Option<String>,
}

/// A webhook the server delivers to.
#[derive(Clone, PartialEq, Eq)]
pub struct Webhook {
    pub url: String,
    /// Empty: every room.
    pub rooms: Vec<String>,
    pub secret: Option<Secret>,
}

impl std::fmt::Debug for Webhook {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Webhook")
            .field("url", &without_password(&self.url))
            .field("rooms", &self.rooms)
            .field("secret", &self.secret.as_ref().map(|_| "***"))
            .finish()
    }
}

/// Where uploaded files are kept.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FileStoreLocation {
    Directory(PathBuf),
    /// `s3://bucket[/prefix]`.
    S3(String),
}

/// The content types users may upload when `--upload-types` is not given.
pub const DEFAULT_UPLOAD_TYPES: &[&str] = &[
    "image/png",
    "image/jpeg",
    "image/gif",
    "image/webp",
    "application/pdf",
    "text/plain",
    "application/zip",
];

/// A secret that prints as `***`.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(pub String);

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("***")
    }
}

/// Where messages are stored.
#[derive(Clone, PartialEq, Eq)]
pub enum DatabaseLocation {
    SqliteMemory,
    SqliteFile(PathBuf),
    Postgres(String),
}

impl std::fmt::Debug for DatabaseLocation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DatabaseLocation::SqliteMemory => f.write_str("SqliteMemory"),
            DatabaseLocation::SqliteFile(path) => write!(f, "SqliteFile({path:?})"),
            DatabaseLocation::Postgres(url) => write!(f, "Postgres({:?})", without_password(url)),
        }
    }
}

/// `url` with the password of its user part, if any, replaced by `***`:
/// what may be logged of a database or Redis URL.
pub fn without_password(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    match rest.split_once('@') {
        Some((user, host)) => match user.split_once(':') {
            Some((name, _)) => format!("{scheme}://{name}:***@{host}"),
            None => url.to_owned(),
        },
        None => url.to_owned(),
    }
}

impl DatabaseLocation {
    /// Reads `sqlite::memory:`, `sqlite://PATH`, `sqlite:PATH`,
    /// `postgres://...`/`postgresql://...`, or a plain file path.
    /// Any other `scheme://` is refused, rather than taken for a file path.
    pub fn parse(text: &str) -> Result<DatabaseLocation, String> {
        Ok(if text == "sqlite::memory:" || text == ":memory:" {
            DatabaseLocation::SqliteMemory
        } else if text.starts_with("postgres://") || text.starts_with("postgresql://") {
            DatabaseLocation::Postgres(text.to_owned())
        } else if let Some(path) = text.strip_prefix("sqlite://") {
            DatabaseLocation::SqliteFile(PathBuf::from(path))
        } else if let Some(path) = text.strip_prefix("sqlite:") {
            DatabaseLocation::SqliteFile(PathBuf::from(path))
        } else if let Some((scheme, _)) = text.split_once("://") {
            return Err(format!(
                "unknown database scheme `{scheme}`: use sqlite://PATH, sqlite::memory:, \
                 postgres://... or a file path"
            ));
        } else {
            DatabaseLocation::SqliteFile(PathBuf::from(text))
        })
    }
}

/// How log lines are written.
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum, Deserialize, serde::Serialize,
)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

/// How broadcasts reach the other nodes.
#[derive(Clone, PartialEq, Eq)]
pub enum BrokerLocation {
    /// One process: broadcasts stay in it.
    Local,
    /// Several nodes on one Redis (`redis://...`) or a Redis Cluster
    /// (`redis-cluster://...`).
    Redis(String),
}

impl std::fmt::Debug for BrokerLocation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            BrokerLocation::Local => f.write_str("local"),
            BrokerLocation::Redis(url) => f.write_str(&without_password(url)),
        }
    }
}

impl BrokerLocation {
    /// Reads `local`, `redis://...` / `rediss://...` or `redis-cluster://...`.
    pub fn parse(text: &str) -> Result<BrokerLocation, String> {
        if text == "local" {
            Ok(BrokerLocation::Local)
        } else if text.starts_with("redis://")
            || text.starts_with("rediss://")
            || text.starts_with(crate::broker::CLUSTER_SCHEME)
        {
            Ok(BrokerLocation::Redis(text.to_owned()))
        } else {
            Err("must be `local`, a `redis://HOST:PORT[/DB]` URL, or \
                 `redis-cluster://HOST:PORT[,HOST:PORT...]` for a Redis Cluster"
                .into())
        }
    }
}

/// The resolved configuration of a running server. See [`ServeArgs`] for what
/// each setting means; defaults are in [`Config::resolve`].
#[derive(Debug, Clone)]
pub struct Config {
    pub bind: SocketAddr,
    pub database: DatabaseLocation,
    pub broker: BrokerLocation,
    pub broker_namespace: String,
    pub data_dir: PathBuf,
    /// Secret for HS256 tokens; random per start when not configured.
    pub jwt_secret: String,
    /// Whether `jwt_secret` was configured (a random one cannot verify tokens
    /// minted elsewhere, which start-up warns about).
    pub jwt_secret_configured: bool,
    pub admin_key: Option<String>,
    pub open_registration: bool,
    pub guest_chat: bool,
    pub web_ui: bool,
    pub ai_base_url: Option<String>,
    pub ai_model: String,
    /// Never logged; `Debug` of the config leaves it out.
    pub ai_api_key: Option<Secret>,
    pub ai_system_prompt: String,
    pub ai_timeout: Duration,
    pub ai_name: String,
    pub ai_context_messages: usize,
    pub ai_context_chars: usize,
    pub ai_answer_all_rooms: Vec<String>,
    pub ai_requests_per_user_per_minute: u32,
    pub ai_requests_per_room_per_minute: u32,
    pub ai_max_concurrent: usize,
    pub heartbeat_interval: Duration,
    pub idle_timeout: Duration,
    pub max_frame_bytes: usize,
    pub max_message_chars: usize,
    pub welcome_history: usize,
    pub room_history: usize,
    pub max_recovery: usize,
    pub max_members_listed: usize,
    pub presence_max_members: usize,
    pub outbox_capacity: usize,
    pub max_pending_writes: usize,
    pub store_timeout: Duration,
    pub max_rooms_created_per_hour: Option<u32>,
    pub retention: Retention,
    pub retention_interval: Duration,
    pub token_ttl: Duration,
    pub token_grace: Duration,
    pub jwt_public_key: Option<PathBuf>,
    pub room_auto_create: bool,
    /// Frames per second per connection; `None` = no limit.
    pub rate_limit: Option<(u32, u32)>,
    pub max_connections_per_user: Option<usize>,
    /// Set by the operator; the server lowers it to what its file-descriptor
    /// limit allows.
    pub max_connections: Option<usize>,
    pub max_connections_per_ip: Option<usize>,
    /// Runtime worker threads.
    pub threads: usize,
    pub log_format: LogFormat,
    pub max_rooms_per_connection: usize,
    pub login_attempts_per_minute: u32,
    pub max_http_body_bytes: usize,
    /// Allowed `Origin` values; empty = any.
    pub allowed_origins: Vec<String>,
    /// Certificate and key files, for TLS.
    pub tls: Option<(PathBuf, PathBuf)>,
    pub max_upload_bytes: u64,
    /// Lower-case content types users may upload; empty: file sharing is off.
    pub upload_types: Vec<String>,
    pub file_store: FileStoreLocation,
    pub upload_ttl: Duration,
    pub webhooks: Vec<Webhook>,
    pub webhook_timeout: Duration,
    pub webhook_max_attempts: u32,
    pub webhook_retry_base: Duration,
}

impl Default for Config {
    fn default() -> Self {
        Config::resolve(ServeArgs::default()).unwrap_or_else(|err| {
            unreachable!("defaults are valid, but resolving them failed: {err}")
        })
    }
}

impl Config {
    /// Loads the config file named by `--config` (if any), merges it under the
    /// flags and environment, applies defaults and validates the result.
    pub fn load(args: ServeArgs) -> Result<Config, ConfigError> {
        let file = match &args.config {
            Some(path) => read_file(path)?,
            None => ServeArgs::default(),
        };
        Config::resolve(merge(args, file)?)
    }

    /// Applies defaults to settings given nowhere and validates the result.
    pub fn resolve(args: ServeArgs) -> Result<Config, ConfigError> {
        let data_dir = args.data_dir.unwrap_or_else(|| PathBuf::from("./data"));
        let file_store = match args.file_store {
            Some(url) if url.starts_with("s3://") => FileStoreLocation::S3(url),
            Some(dir) => FileStoreLocation::Directory(PathBuf::from(dir)),
            None => FileStoreLocation::Directory(data_dir.join("files")),
        };
        let database = match &args.database {
            Some(text) => DatabaseLocation::parse(text).map_err(|reason| ConfigError::Invalid {
                name: "database",
                reason,
            })?,
            None => DatabaseLocation::SqliteFile(data_dir.join("roomcast.db")),
        };
        let broker = match &args.broker {
            Some(text) => BrokerLocation::parse(text).map_err(|reason| ConfigError::Invalid {
                name: "broker",
                reason,
            })?,
            None => BrokerLocation::Local,
        };
        let jwt_secret_configured = args.jwt_secret.is_some();
        let config = Config {
            bind: args
                .bind
                .unwrap_or_else(|| SocketAddr::from(([0, 0, 0, 0], 8080))),
            database,
            broker,
            broker_namespace: args.broker_namespace.unwrap_or_else(|| "roomcast".into()),
            data_dir,
            jwt_secret: match args.jwt_secret {
                Some(secret) => secret,
                None => random_secret().ok_or_else(|| ConfigError::Invalid {
                    name: "jwt_secret",
                    reason: "none given, and the operating system gave no random bytes for one"
                        .into(),
                })?,
            },
            jwt_secret_configured,
            admin_key: args.admin_key.filter(|key| !key.is_empty()),
            open_registration: args.open_registration.unwrap_or(false),
            guest_chat: args.guest_chat.unwrap_or(false),
            web_ui: args.web_ui.unwrap_or(true),
            ai_base_url: args.ai_base_url.filter(|url| !url.is_empty()),
            ai_model: args.ai_model.unwrap_or_else(|| "default".into()),
            ai_api_key: match &args.ai_api_key_file {
                Some(path) => Some(Secret(
                    std::fs::read_to_string(path)
                        .map_err(|source| ConfigError::Read {
                            path: path.clone(),
                            source,
                        })?
                        .trim()
                        .to_owned(),
                )),
                None => std::env::var("ROOMCAST_AI_API_KEY")
                    .ok()
                    .filter(|key| !key.is_empty())
                    .map(Secret),
            },
            ai_system_prompt: args.ai_system_prompt.unwrap_or_else(|| {
                "You are a helpful assistant in a team chat. Answer briefly.".into()
            }),
            ai_timeout: Duration::from_millis(args.ai_timeout_ms.unwrap_or(60_000)),
            ai_name: args.ai_name.unwrap_or_else(|| "assistant".into()),
            ai_context_messages: args.ai_context_messages.unwrap_or(20),
            ai_context_chars: args.ai_context_chars.unwrap_or(16_000),
            ai_answer_all_rooms: args.ai_answer_all_rooms.unwrap_or_default(),
            ai_requests_per_user_per_minute: args.ai_requests_per_user_per_minute.unwrap_or(10),
            ai_requests_per_room_per_minute: args.ai_requests_per_room_per_minute.unwrap_or(30),
            ai_max_concurrent: args.ai_max_concurrent.unwrap_or(4),
            heartbeat_interval: Duration::from_millis(args.heartbeat_interval_ms.unwrap_or(30_000)),
            idle_timeout: Duration::from_millis(args.idle_timeout_ms.unwrap_or(90_000)),
            max_frame_bytes: args.max_frame_bytes.unwrap_or(65_536),
            max_message_chars: args.max_message_chars.unwrap_or(4000),
            welcome_history: args.welcome_history.unwrap_or(50),
            room_history: args.room_history.unwrap_or(50),
            max_recovery: args.max_recovery.unwrap_or(1000),
            max_members_listed: args.max_members_listed.unwrap_or(100),
            presence_max_members: args.presence_max_members.unwrap_or(1000),
            outbox_capacity: args.outbox_capacity.unwrap_or(4096),
            max_pending_writes: args.max_pending_writes.unwrap_or(64),
            store_timeout: Duration::from_millis(args.store_timeout_ms.unwrap_or(10_000)),
            max_rooms_created_per_hour: Some(args.max_rooms_created_per_hour.unwrap_or(100))
                .filter(|n| *n > 0),
            retention: Retention {
                max_messages_per_room: args.retention_max_messages,
                max_age: args
                    .retention_max_age
                    .as_deref()
                    .map(parse_duration)
                    .transpose()
                    .map_err(|reason| ConfigError::Invalid {
                        name: "retention_max_age",
                        reason,
                    })?,
            },
            retention_interval: Duration::from_millis(args.retention_interval_ms.unwrap_or(60_000)),
            token_ttl: match args.token_ttl.as_deref() {
                Some(text) => parse_duration(text).map_err(|reason| ConfigError::Invalid {
                    name: "token_ttl",
                    reason,
                })?,
                None => Duration::from_secs(86_400),
            },
            token_grace: Duration::from_millis(args.token_grace_ms.unwrap_or(30_000)),
            jwt_public_key: args.jwt_public_key,
            room_auto_create: !args.no_room_auto_create.unwrap_or(false),
            rate_limit: match args.rate_limit_messages.unwrap_or(100) {
                0 => None,
                rate => Some((rate, args.rate_limit_burst.unwrap_or(200).max(1))),
            },
            max_connections_per_user: Some(args.max_connections_per_user.unwrap_or(32))
                .filter(|n| *n > 0),
            max_connections_per_ip: Some(args.max_connections_per_ip.unwrap_or(1000))
                .filter(|n| *n > 0),
            max_rooms_per_connection: args.max_rooms_per_connection.unwrap_or(100),
            max_connections: args.max_connections,
            log_format: args.log_format.unwrap_or_default(),
            threads: args.threads.unwrap_or_else(|| {
                std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get)
            }),
            login_attempts_per_minute: args.login_attempts_per_minute.unwrap_or(10),
            max_http_body_bytes: args.max_http_body_bytes.unwrap_or(65_536),
            allowed_origins: args
                .allowed_origins
                .unwrap_or_default()
                .into_iter()
                .map(|origin| origin.trim().trim_end_matches('/').to_owned())
                .filter(|origin| !origin.is_empty())
                .collect(),
            max_upload_bytes: args.max_upload_bytes.unwrap_or(25 * 1024 * 1024),
            upload_types: upload_types(args.upload_types)?,
            file_store,
            upload_ttl: match args.upload_ttl.as_deref() {
                Some(text) => parse_duration(text).map_err(|reason| ConfigError::Invalid {
                    name: "upload_ttl",
                    reason,
                })?,
                None => Duration::from_secs(15 * 60),
            },
            webhook_timeout: Duration::from_millis(
                args.webhook_timeout_ms.unwrap_or(10_000).max(1),
            ),
            webhook_max_attempts: args.webhook_max_attempts.unwrap_or(12).max(1),
            webhook_retry_base: Duration::from_millis(
                args.webhook_retry_base_ms.unwrap_or(1000).max(1),
            ),
            webhooks: webhooks(
                args.webhook.unwrap_or_default(),
                args.webhook_secret,
                args.webhook_rooms.unwrap_or_default(),
                args.webhooks.unwrap_or_default(),
            )?,
            tls: match (args.tls_cert, args.tls_key) {
                (Some(cert), Some(key)) => Some((cert, key)),
                (None, None) => None,
                _ => {
                    return Err(ConfigError::Invalid {
                        name: "tls_cert",
                        reason: "--tls-cert and --tls-key go together".into(),
                    });
                }
            },
        };
        config.validate()?;
        Ok(config)
    }

    fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |name, reason: &str| ConfigError::Invalid {
            name,
            reason: reason.to_owned(),
        };
        if self.heartbeat_interval.is_zero() {
            return Err(invalid("heartbeat_interval_ms", "must be at least 1"));
        }
        if self.idle_timeout.is_zero() {
            return Err(invalid("idle_timeout_ms", "must be at least 1"));
        }
        if self.max_frame_bytes < 256 {
            return Err(invalid("max_frame_bytes", "must be at least 256"));
        }
        if self.max_message_chars == 0 {
            return Err(invalid("max_message_chars", "must be at least 1"));
        }
        if self.max_recovery == 0 {
            return Err(invalid("max_recovery", "must be at least 1"));
        }
        if self.outbox_capacity < 16 {
            return Err(invalid("outbox_capacity", "must be at least 16"));
        }
        if self.store_timeout.is_zero() {
            return Err(invalid("store_timeout_ms", "must be at least 1"));
        }
        if self.max_pending_writes == 0 {
            return Err(invalid("max_pending_writes", "must be at least 1"));
        }
        // Each pending write comes back as an acknowledgement and the
        // sender's own copy; the outbox must hold a full window of them.
        if self.outbox_capacity < 2 * self.max_pending_writes + 16 {
            return Err(invalid(
                "outbox_capacity",
                "must be at least 2 × max_pending_writes + 16",
            ));
        }
        if self.retention.max_messages_per_room == Some(0) {
            return Err(invalid("retention_max_messages", "must be at least 1"));
        }
        if self.retention_interval.is_zero() {
            return Err(invalid("retention_interval_ms", "must be at least 1"));
        }
        if !(1..=MAX_THREADS).contains(&self.threads) {
            return Err(invalid(
                "threads",
                &format!("must be between 1 and {MAX_THREADS}"),
            ));
        }
        if self.max_rooms_per_connection == 0 {
            return Err(invalid("max_rooms_per_connection", "must be at least 1"));
        }
        if self.login_attempts_per_minute == 0 {
            return Err(invalid("login_attempts_per_minute", "must be at least 1"));
        }
        if self.max_http_body_bytes < 1024 {
            return Err(invalid("max_http_body_bytes", "must be at least 1024"));
        }
        if self.max_upload_bytes == 0 {
            return Err(invalid("max_upload_bytes", "must be at least 1"));
        }
        if matches!(self.broker, BrokerLocation::Redis(_))
            && !matches!(self.database, DatabaseLocation::Postgres(_))
        {
            return Err(invalid(
                "broker",
                "a Redis broker runs several nodes, which need one shared PostgreSQL: \
                 give --database postgres://... (an SQLite file belongs to one process)",
            ));
        }
        if self.broker_namespace.is_empty()
            || !self
                .broker_namespace
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
        {
            return Err(invalid(
                "broker_namespace",
                "must be letters, digits, `-`, `_` or `.`",
            ));
        }
        if self.jwt_secret.len() < 8 {
            return Err(invalid("jwt_secret", "must be at least 8 bytes"));
        }
        Ok(())
    }
}

fn read_file(path: &Path) -> Result<ServeArgs, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.to_owned(),
        source,
    })?;
    toml::from_str(&text).map_err(|source| ConfigError::Parse {
        path: path.to_owned(),
        source,
    })
}

/// Layers the settings: each one given as a flag or an environment
/// variable (`args`) wins over the config file's. Settings are declared once,
/// in [`ServeArgs`]; the layering goes through their serialized form, so a
/// new setting needs nothing here.
fn merge(args: ServeArgs, file: ServeArgs) -> Result<ServeArgs, ConfigError> {
    let invalid = |err: serde_json::Error| ConfigError::Invalid {
        name: "config",
        reason: err.to_string(),
    };
    let config = args.config.clone();
    let mut layered = serde_json::to_value(file).map_err(invalid)?;
    if let (serde_json::Value::Object(settings), serde_json::Value::Object(given)) =
        (&mut layered, serde_json::to_value(args).map_err(invalid)?)
    {
        settings.extend(given.into_iter().filter(|(_, value)| !value.is_null()));
    }
    let mut merged: ServeArgs = serde_json::from_value(layered).map_err(invalid)?;
    merged.config = config;
    Ok(merged)
}

/// The allow-list of uploads: lower-case `type/subtype`s, each one whose
/// content the server can check ([`crate::files::checkable`]).
fn upload_types(given: Option<Vec<String>>) -> Result<Vec<String>, ConfigError> {
    let Some(given) = given else {
        return Ok(DEFAULT_UPLOAD_TYPES
            .iter()
            .map(|t| (*t).to_owned())
            .collect());
    };
    let mut types = Vec::new();
    for text in given {
        let text = text.trim().to_ascii_lowercase();
        if text.is_empty() || text == "none" {
            continue;
        }
        if !crate::files::checkable(&text) {
            return Err(ConfigError::Invalid {
                name: "upload_types",
                reason: format!(
                    "`{text}` is not a type whose content roomcast can check \
                     (text/*, or a binary format with a known signature such as image/png)"
                ),
            });
        }
        if !types.contains(&text) {
            types.push(text);
        }
    }
    Ok(types)
}

/// The webhooks of the flags and of the config file's `[[webhooks]]`.
fn webhooks(
    urls: Vec<String>,
    secret: Option<String>,
    rooms: Vec<String>,
    specs: Vec<WebhookSpec>,
) -> Result<Vec<Webhook>, ConfigError> {
    let rooms: Vec<String> = rooms
        .into_iter()
        .map(|room| room.trim().to_owned())
        .filter(|room| !room.is_empty())
        .collect();
    let given = urls
        .into_iter()
        .map(|url| WebhookSpec {
            url,
            rooms: rooms.clone(),
            secret: secret.clone(),
        })
        .chain(specs);
    let mut webhooks = Vec::new();
    for spec in given {
        let url = spec.url.trim().to_owned();
        if url.is_empty() {
            continue;
        }
        let parsed = reqwest::Url::parse(&url).map_err(|err| ConfigError::Invalid {
            name: "webhook",
            reason: format!("`{}` is not a URL: {err}", without_password(&url)),
        })?;
        if !matches!(parsed.scheme(), "http" | "https") {
            return Err(ConfigError::Invalid {
                name: "webhook",
                reason: format!("`{}` is not an http or https URL", without_password(&url)),
            });
        }
        if let Some(room) = spec
            .rooms
            .iter()
            .find(|room| !crate::protocol::validate_room_name(room))
        {
            return Err(ConfigError::Invalid {
                name: "webhook_rooms",
                reason: format!("`{room}` is not a room name"),
            });
        }
        webhooks.push(Webhook {
            url,
            rooms: spec.rooms,
            secret: spec.secret.filter(|s| !s.is_empty()).map(Secret),
        });
    }
    Ok(webhooks)
}

/// Reads a duration such as `90s`, `15m`, `12h`, `30d` or `1h 30m`
/// (humantime's format); zero is refused.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let duration = humantime::parse_duration(text).map_err(|err| {
        format!("`{text}` is not a duration such as 90s, 15m, 12h or 30d ({err})")
    })?;
    if duration.is_zero() {
        return Err("must be longer than zero".into());
    }
    Ok(duration)
}

/// A secret nobody else knows (32 random bytes from the operating system),
/// for a server started without `--jwt-secret`; `None` if the operating
/// system has no randomness to give.
fn random_secret() -> Option<String> {
    crate::auth::random_hex(32)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn database_urls() {
        assert_eq!(
            DatabaseLocation::parse("sqlite::memory:"),
            Ok(DatabaseLocation::SqliteMemory)
        );
        assert_eq!(
            DatabaseLocation::parse("sqlite:///tmp/x.db"),
            Ok(DatabaseLocation::SqliteFile("/tmp/x.db".into()))
        );
        assert_eq!(
            DatabaseLocation::parse("data/x.db"),
            Ok(DatabaseLocation::SqliteFile("data/x.db".into()))
        );
        assert!(matches!(
            DatabaseLocation::parse("postgres://localhost/test"),
            Ok(DatabaseLocation::Postgres(_))
        ));
        for unknown in ["mysql://root@db/chat", "redis://x", "file://tmp/x.db"] {
            assert!(DatabaseLocation::parse(unknown).is_err(), "{unknown}");
        }
    }

    #[test]
    fn flags_win_over_the_file_and_defaults_fill_the_rest() {
        let file: ServeArgs =
            toml::from_str("max_frame_bytes = 1000\nidle_timeout_ms = 5\nguest_chat = true")
                .expect("valid toml");
        let args = ServeArgs {
            max_frame_bytes: Some(2000),
            ..ServeArgs::default()
        };
        let config = Config::resolve(merge(args, file).expect("merged")).expect("valid config");
        assert_eq!(config.max_frame_bytes, 2000);
        assert_eq!(config.idle_timeout, Duration::from_millis(5));
        assert!(config.guest_chat);
        assert_eq!(config.max_message_chars, 4000);
    }

    #[test]
    fn layering_keeps_every_kind_of_setting_and_flags_win() {
        let file: ServeArgs = toml::from_str(
            "bind = \"127.0.0.1:1\"\nallowed_origins = [\"https://a.example\"]\n\
             log_format = \"json\"\nguest_chat = true\nmax_frame_bytes = 1000\n\
             data_dir = \"/tmp/x\"\nbroker_namespace = \"n1\"",
        )
        .expect("valid toml");
        let args = ServeArgs {
            guest_chat: Some(false),
            max_frame_bytes: Some(2000),
            config: Some(PathBuf::from("roomcast.toml")),
            ..ServeArgs::default()
        };
        let merged = merge(args, file).expect("merged");
        assert_eq!(merged.bind, "127.0.0.1:1".parse().ok());
        assert_eq!(
            merged.allowed_origins,
            Some(vec!["https://a.example".to_owned()])
        );
        assert_eq!(merged.log_format, Some(LogFormat::Json));
        assert_eq!(merged.guest_chat, Some(false));
        assert_eq!(merged.max_frame_bytes, Some(2000));
        assert_eq!(merged.data_dir, Some(PathBuf::from("/tmp/x")));
        assert_eq!(merged.broker_namespace.as_deref(), Some("n1"));
        assert_eq!(merged.config, Some(PathBuf::from("roomcast.toml")));
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("90s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration("30d"), Ok(Duration::from_secs(30 * 86_400)));
        assert!(parse_duration("30").is_err());
        assert!(parse_duration("0h").is_err());
        assert!(parse_duration("-1d").is_err());
        assert!(parse_duration("").is_err());
        assert_eq!(parse_duration("1h 30m"), Ok(Duration::from_secs(5400)));
        // Not a unit, and a character of more than one byte: refused, no panic.
        assert!(parse_duration("5é").is_err());
        assert_eq!(
            format!(
                "{:?}",
                DatabaseLocation::parse("postgres://rc:hunter2@db:5432/chat").expect("valid")
            ),
            r#"Postgres("postgres://rc:***@db:5432/chat")"#
        );
        assert_eq!(
            format!(
                "{:?}",
                BrokerLocation::parse("redis://:hunter2@cache:6379/1")
            ),
            r#"Ok(redis://:***@cache:6379/1)"#
        );
        assert_eq!(without_password("redis://cache:6379"), "redis://cache:6379");
        assert!(parse_duration("é").is_err());
        assert!(parse_duration("99999999999999999999d").is_err());
    }

    #[test]
    fn unknown_keys_in_the_file_are_errors() {
        assert!(toml::from_str::<ServeArgs>("max_frame_byte = 1").is_err());
    }

    #[test]
    fn nonsense_values_are_refused() {
        let args = ServeArgs {
            heartbeat_interval_ms: Some(0),
            ..ServeArgs::default()
        };
        assert!(Config::resolve(args).is_err());
        for threads in [0, MAX_THREADS + 1] {
            let args = ServeArgs {
                threads: Some(threads),
                ..ServeArgs::default()
            };
            assert!(Config::resolve(args).is_err(), "{threads} threads");
        }
    }

    #[test]
    fn webhooks_from_flags_and_from_the_file() {
        let file: ServeArgs = toml::from_str(
            "webhook_secret = \"shared\"\n\
             [[webhooks]]\nurl = \"https://a.example/hook\"\nrooms = [\"support\"]\nsecret = \"own\"\n\
             [[webhooks]]\nurl = \"http://b.example/hook\"\n",
        )
        .expect("parses");
        let args = ServeArgs {
            webhook: Some(vec!["https://c.example/in".into()]),
            webhook_rooms: Some(vec!["ops".into()]),
            ..ServeArgs::default()
        };
        let config = Config::resolve(merge(args, file).expect("merge")).expect("valid");
        let hooks: Vec<(&str, Vec<String>, Option<&str>)> = config
            .webhooks
            .iter()
            .map(|w| {
                (
                    w.url.as_str(),
                    w.rooms.clone(),
                    w.secret.as_ref().map(|s| s.0.as_str()),
                )
            })
            .collect();
        assert_eq!(
            hooks,
            vec![
                (
                    "https://c.example/in",
                    vec!["ops".to_owned()],
                    Some("shared")
                ),
                (
                    "https://a.example/hook",
                    vec!["support".to_owned()],
                    Some("own")
                ),
                ("http://b.example/hook", vec![], None),
            ]
        );
        assert!(
            !format!("{:?}", config.webhooks).contains("own"),
            "secrets stay out of logs"
        );
        for bad in ["ftp://x.example/", "not a url"] {
            let args = ServeArgs {
                webhook: Some(vec![bad.into()]),
                ..ServeArgs::default()
            };
            assert!(Config::resolve(args).is_err(), "{bad}");
        }
    }

    #[test]
    fn upload_types_are_checked() {
        let config = Config::resolve(ServeArgs::default()).expect("valid");
        assert!(config.upload_types.contains(&"image/png".to_owned()));
        let args = ServeArgs {
            upload_types: Some(vec!["IMAGE/PNG".into(), "text/markdown".into()]),
            ..ServeArgs::default()
        };
        let config = Config::resolve(args).expect("valid");
        assert_eq!(config.upload_types, ["image/png", "text/markdown"]);
        let args = ServeArgs {
            upload_types: Some(vec!["application/x-unknowable".into()]),
            ..ServeArgs::default()
        };
        assert!(Config::resolve(args).is_err());
        let args = ServeArgs {
            upload_types: Some(vec!["none".into()]),
            ..ServeArgs::default()
        };
        assert!(
            Config::resolve(args)
                .expect("valid")
                .upload_types
                .is_empty()
        );
    }

    #[test]
    fn one_thread_per_core_unless_told() {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        let config = Config::resolve(ServeArgs::default()).expect("valid config");
        assert_eq!(config.threads, cores);
        let args = ServeArgs {
            threads: Some(1),
            ..ServeArgs::default()
        };
        assert_eq!(Config::resolve(args).expect("valid config").threads, 1);
    }
}

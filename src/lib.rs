//! roomcast: a self-hosted WebSocket chat server.
//!
//! [`serve`] runs a server on a listener until a shutdown future resolves;
//! `main.rs` is a thin command line around it, and the integration tests call
//! it directly on `127.0.0.1:0`.
//!
//! # Layout
//!
//! - [`ai`]: the assistant's model provider (OpenAI-compatible, streaming).
//! - [`config`]: flags, `ROOMCAST_*` variables and the TOML file, with defaults.
//! - [`protocol`]: client and server message types, error and close codes; no I/O.
//! - [`hub`]: the connection manager — connections, users, rooms, fan-out, counters.
//! - [`broker`]: how broadcasts reach every node's hub (in-process for one node).
//! - [`session`]: the task per WebSocket — read, dispatch, write, heartbeat, close.
//! - [`handlers`]: one file per client message type.
//! - [`store`]: durable messages, rooms, events, uploads and the webhook
//!   outbox; SQLite with group commit, PostgreSQL.
//! - [`files`]: file sharing — upload tokens, receiving and serving files,
//!   the file store (a directory or an S3 bucket), the janitor.
//! - [`webhooks`]: delivering the webhook outbox, signed, with retries.
//! - [`auth`]: tokens (JWT), password hashing, accounts.
//! - [`limits`]: token buckets for rate limits.
//! - [`server`]: the HTTP router, the upgrade, the HTTP API and metrics.
//! - [`app`]: the shared state handed to all of the above.
//! - [`bench`]: `roomcast bench`, the load generator.

pub mod ai;
pub mod app;
pub mod auth;
pub mod bench;
pub mod broker;
pub mod config;
pub mod files;
pub mod handlers;
pub mod hub;
pub mod limits;
pub mod protocol;
pub mod server;
pub mod session;
pub mod store;
pub mod webhooks;
pub mod wire;

use app::App;
use auth::{Accounts, Tokens};
use broker::{LocalBroker, RedisBroker};
use config::{BrokerLocation, Config, DatabaseLocation};
use hub::Hub;
use server::tls::TlsListener;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;
use store::{MessageStore, PostgresStore, SqliteStore, StoreError};
use tokio::net::TcpListener;

/// How long shutdown waits for sessions to finish their close handshakes.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(8);

/// Why the server could not start or stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("cannot open the message store: {0}")]
    Store(#[from] StoreError),
    #[error("server I/O failed: {0}")]
    Io(#[from] std::io::Error),
    #[error("{0}")]
    Auth(#[from] auth::AuthError),
    #[error("{0}")]
    Tls(#[from] server::tls::TlsError),
    #[error("{0}")]
    Broker(#[from] broker::BrokerError),
    #[error("file store: {0}")]
    Files(#[from] files::BlobError),
}

/// Opens the message store the configuration names.
pub async fn open_store(config: &Config) -> Result<Arc<dyn MessageStore>, StoreError> {
    match &config.database {
        DatabaseLocation::SqliteMemory => Ok(Arc::new(SqliteStore::open_with_webhooks(
            None,
            webhooks::routes(&config.webhooks),
        )?)),
        DatabaseLocation::SqliteFile(path) => Ok(Arc::new(SqliteStore::open_with_webhooks(
            Some(path),
            webhooks::routes(&config.webhooks),
        )?)),
        DatabaseLocation::Postgres(url) => Ok(Arc::new(
            PostgresStore::open_with_webhooks(url, webhooks::routes(&config.webhooks)).await?,
        )),
    }
}

/// Runs the server on `listener` until `shutdown` resolves, then stops
/// accepting, closes every WebSocket with 1001, waits for the sessions to end
/// and flushes the store.
pub async fn serve(
    config: Config,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServeError> {
    let store = open_store(&config).await?;
    let retention = tokio::spawn(store::enforce_retention(
        store.clone(),
        config.retention,
        config.retention_interval,
    ));
    let hub = Arc::new(Hub::configured(
        config.outbox_capacity,
        config.presence_max_members,
        config.guest_chat,
    ));
    let flusher = tokio::spawn({
        let hub = hub.clone();
        async move { hub.run_flusher().await }
    });
    let (broker, broker_tasks): (Arc<dyn broker::Broker>, _) = match &config.broker {
        BrokerLocation::Local => (Arc::new(LocalBroker::new(hub.clone())), None),
        BrokerLocation::Redis(url) => {
            let (broker, tasks) =
                RedisBroker::connect(url, &config.broker_namespace, hub.clone(), store.clone())
                    .await?;
            tracing::info!(broker = ?config.broker, "broadcasts reach the other nodes through Redis");
            (Arc::new(broker), Some(tasks))
        }
    };
    store.write_through(hub.flusher());
    let mut tokens = Tokens::new(&config.jwt_secret);
    if let Some(path) = &config.jwt_public_key {
        tokens = tokens.with_public_key(path)?;
    }
    let accounts = Accounts::new(
        store.clone(),
        tokens.clone(),
        config.token_ttl,
        config.login_attempts_per_minute,
    );
    let ai = config.ai_base_url.as_ref().map(|url| {
        Arc::new(ai::OpenAiCompatible::new(
            url,
            &config.ai_model,
            config.ai_api_key.as_ref().map(|key| key.0.clone()),
            config.ai_timeout,
        )) as Arc<dyn ai::Provider>
    });
    let ai_control = Arc::new(ai::AiControl::new(
        config.ai_requests_per_user_per_minute,
        config.ai_requests_per_room_per_minute,
        config.ai_max_concurrent,
    ));
    let files = if config.upload_types.is_empty() {
        None
    } else {
        let blobs = files::Blobs::open(&config.file_store)?;
        if matches!(config.broker, BrokerLocation::Redis(_))
            && matches!(config.file_store, config::FileStoreLocation::Directory(_))
        {
            tracing::warn!(
                "files are kept in a local directory: with several nodes, each serves only the \
                 files it received unless the directory is shared (use --file-store s3://...)"
            );
        }
        Some(Arc::new(files::Files::new(
            blobs,
            config.max_upload_bytes,
            config.upload_types.clone(),
            config.upload_ttl,
        )))
    };
    let app = Arc::new(App {
        webhooks: webhooks::Dispatcher::configured(&config),
        files,
        tokens,
        accounts,
        ai,
        ai_control,
        runtime: tokio::runtime::Handle::current(),
        room_creations: config
            .max_rooms_created_per_hour
            .filter(|_| config.room_auto_create)
            .map(|per_hour| limits::KeyedLimiter::new(f64::from(per_hour) / 3600.0, per_hour)),
        broker,
        hub: hub.clone(),
        store: store.clone(),
        config,
    });
    let counts = tokio::spawn(handlers::tell_counts(app.clone()));
    let janitor = tokio::spawn(files::run_janitor(app.clone()));
    let deliveries = tokio::spawn(webhooks::run(app.clone()));
    let mut broker_tasks = broker_tasks;
    let evictions = broker_tasks
        .as_mut()
        .and_then(|tasks| tasks.evictions.take())
        .map(|evictions| tokio::spawn(server::carry_out_evictions(app.clone(), evictions)));
    let router = server::router(app.clone());
    let closing_hub = hub.clone();
    let stopping = async move {
        shutdown.await;
        tracing::info!("shutting down: closing every connection with 1001");
        closing_hub.close_all();
    };
    let capacity = server::connection_capacity();
    let max_connections = app
        .config
        .max_connections
        .map_or(capacity, |wanted| wanted.min(capacity));
    tracing::info!(
        max_connections,
        "the file-descriptor limit allows {capacity} connections; more are answered with 503"
    );
    let (http, ws) = if app.config.tls.is_some() {
        ("https", "wss")
    } else {
        ("http", "ws")
    };
    let address = listener.local_addr()?;
    tracing::info!(
        database = ?app.config.database,
        threads = app.config.threads,
        "roomcast {} listening on {http}://{address} (WebSocket at {ws}://{address}/ws)",
        env!("CARGO_PKG_VERSION")
    );
    if app.config.web_ui && server::web_pages_built() {
        tracing::info!("chat page at {http}://{address}/, admin page at {http}://{address}/admin");
    }
    match &app.config.tls {
        Some((cert, key)) => {
            let listener = TlsListener::new(listener, server::tls::acceptor(cert, key)?)?;
            // Each TLS WebSocket also holds a local socket pair.
            server::tls::serve(app.clone(), listener, router, max_connections / 3, stopping).await;
        }
        None => {
            server::serve_plain(app.clone(), listener, router, max_connections, stopping).await;
        }
    }
    // Wait for the sessions to close their sockets.
    let deadline = tokio::time::Instant::now() + SHUTDOWN_GRACE;
    while hub.stats().active() > 0 && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    retention.abort();
    flusher.abort();
    counts.abort();
    janitor.abort();
    deliveries.abort();
    if let Some(webhooks) = &app.webhooks {
        webhooks.release(&app).await;
    }
    if let Some(tasks) = broker_tasks {
        tasks.abort();
    }
    if let Some(evictions) = evictions {
        evictions.abort();
    }
    store.flush().await?;
    tracing::info!("stopped");
    Ok(())
}

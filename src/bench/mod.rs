//! `roomcast bench`: a load generator that speaks the protocol against any
//! roomcast URL, with three scenarios:
//!
//! - `idle`: many authenticated connections held open (connect rate, connect
//!   latency, server memory per connection);
//! - `fanout`: rooms × members with senders at a fixed rate (deliveries per
//!   second, end-to-end latency, lost messages);
//! - `burst`: one connection sending as fast as its acknowledgement window
//!   allows (acknowledged messages per second).
//!
//! Results print as a table, or as JSON with `--json`. Progress goes to
//! stderr once a second; Ctrl-C stops a run and prints what it has.

mod burst;
mod client;
mod fanout;
mod idle;
mod report;

pub use report::Report;

use clap::{Args, Subcommand};
use std::net::IpAddr;

#[derive(Debug, Args)]
pub struct BenchArgs {
    #[command(subcommand)]
    pub scenario: Scenario,
    /// Print the results as JSON.
    #[arg(long, global = true)]
    pub json: bool,
}

/// Where the server is and how to get in.
#[derive(Debug, Clone, Args)]
pub struct Target {
    /// WebSocket URL of the server.
    #[arg(long, default_value = "ws://127.0.0.1:8080/ws")]
    pub url: String,
    /// The server's HS256 secret, to mint a token per connection.
    #[arg(long, env = "ROOMCAST_JWT_SECRET", hide_env_values = true)]
    pub jwt_secret: String,
    /// Local source addresses to spread connections over, e.g.
    /// `127.0.0.2-127.0.0.9` (each address has its own ephemeral ports).
    #[arg(long, value_parser = parse_ip_range)]
    pub source_ips: Option<IpRange>,
}

#[derive(Debug, Subcommand)]
pub enum Scenario {
    /// Open N authenticated connections and hold them.
    Idle {
        #[command(flatten)]
        target: Target,
        /// Connections to open.
        #[arg(long, default_value_t = 1000)]
        connections: usize,
        /// Connection attempts in flight at once.
        #[arg(long, default_value_t = 256)]
        concurrency: usize,
        /// The server's pid, to report its resident memory per connection.
        #[arg(long)]
        server_pid: Option<u32>,
        /// Seconds to hold the connections before closing them.
        #[arg(long, default_value_t = 2)]
        hold: u64,
        /// Distinct users the connections log in as (0: one per
        /// connection, as a real crowd is).
        #[arg(long, default_value_t = 0)]
        users: usize,
        /// This many of the connections subscribe to every user's online
        /// announcements (`presence_subscribe`) before the others connect;
        /// the run checks they hear of every other user.
        #[arg(long, default_value_t = 0)]
        subscribers: usize,
        /// Every connection joins this room after its welcome; the connect
        /// rate then counts connects+joins.
        #[arg(long)]
        room: Option<String>,
        /// When the server drops the connections (a restart), reconnect
        /// them and rejoin the room with `since_id`, and report how long
        /// until all are back (waits up to `--hold` seconds for it).
        #[arg(long)]
        reconnect: bool,
    },
    /// R rooms × M members, K senders per room at a rate.
    Fanout {
        #[command(flatten)]
        target: Target,
        #[arg(long, default_value_t = 10)]
        rooms: usize,
        #[arg(long, default_value_t = 100)]
        members: usize,
        /// Members of each room that also send.
        #[arg(long, default_value_t = 1)]
        senders: usize,
        /// Messages per second per sender (0: as fast as acknowledgements allow).
        #[arg(long, default_value_t = 50)]
        rate: u64,
        /// Seconds to send for.
        #[arg(long, default_value_t = 10)]
        duration: u64,
        /// Messages a sender may have unacknowledged.
        #[arg(long, default_value_t = 64)]
        window: usize,
        /// Another node's WebSocket URL (repeatable): members are spread
        /// over `--url` and these in turn, so every room has members on
        /// every node.
        #[arg(long)]
        also_url: Vec<String>,
        /// The server's pid, to report its CPU time per delivery
        /// (repeatable: the nodes' CPU time is added up).
        #[arg(long)]
        server_pid: Vec<u32>,
    },
    /// One connection sending with a window of unacknowledged messages.
    Burst {
        #[command(flatten)]
        target: Target,
        #[arg(long, default_value_t = 100_000)]
        messages: u64,
        #[arg(long, default_value_t = 64)]
        window: usize,
    },
}

/// An inclusive range of IPv4 addresses.
#[derive(Debug, Clone)]
pub struct IpRange(pub Vec<IpAddr>);

fn parse_ip_range(text: &str) -> Result<IpRange, String> {
    let (first, last) = text.split_once('-').unwrap_or((text, text));
    let first: std::net::Ipv4Addr = first
        .trim()
        .parse()
        .map_err(|_| format!("bad address `{first}`"))?;
    let last: std::net::Ipv4Addr = last
        .trim()
        .parse()
        .map_err(|_| format!("bad address `{last}`"))?;
    let (from, to) = (u32::from(first), u32::from(last));
    if to < from || to - from > 1024 {
        return Err("the range must be ascending and at most 1024 addresses".into());
    }
    Ok(IpRange(
        (from..=to)
            .map(|ip| IpAddr::from(std::net::Ipv4Addr::from(ip)))
            .collect(),
    ))
}

/// Runs a scenario and returns its report.
pub async fn run(args: &BenchArgs) -> Report {
    raise_fd_limit();
    match &args.scenario {
        Scenario::Idle {
            target,
            connections,
            concurrency,
            server_pid,
            hold,
            users,
            subscribers,
            room,
            reconnect,
        } => {
            idle::run(
                target,
                idle::Options {
                    connections: *connections,
                    concurrency: *concurrency,
                    server_pid: *server_pid,
                    hold: *hold,
                    users: *users,
                    subscribers: *subscribers,
                    room: room.clone(),
                    reconnect: *reconnect,
                },
            )
            .await
        }
        Scenario::Fanout {
            target,
            rooms,
            members,
            senders,
            rate,
            duration,
            window,
            also_url,
            server_pid,
        } => {
            fanout::run(
                target,
                also_url,
                fanout::Shape {
                    rooms: *rooms,
                    members: *members,
                    senders: *senders,
                    rate: *rate,
                    duration: std::time::Duration::from_secs(*duration),
                    window: *window,
                },
                server_pid,
            )
            .await
        }
        Scenario::Burst {
            target,
            messages,
            window,
        } => burst::run(target, *messages, *window).await,
    }
}

/// Raises the soft file-descriptor limit to the hard one.
fn raise_fd_limit() {
    use rustix::process::{Resource, getrlimit, setrlimit};
    let mut limit = getrlimit(Resource::Nofile);
    if limit.current != limit.maximum {
        limit.current = limit.maximum;
        if let Err(err) = setrlimit(Resource::Nofile, limit) {
            eprintln!("bench: cannot raise the file-descriptor limit: {err}");
        }
    }
}

/// Resolves when Ctrl-C is pressed.
pub async fn interrupted() {
    if tokio::signal::ctrl_c().await.is_err() {
        std::future::pending::<()>().await;
    }
}

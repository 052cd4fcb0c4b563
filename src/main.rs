//! The `roomcast` command line: `serve` runs the server, `token` mints a token.

use clap::{Args, Parser, Subcommand};
use roomcast::auth::Tokens;
use roomcast::config::{Config, ServeArgs};
use std::process::ExitCode;
use tracing_subscriber::EnvFilter;

#[derive(Debug, Parser)]
#[command(
    name = "roomcast",
    version,
    about = "A self-hosted WebSocket chat server"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the chat server.
    Serve(Box<ServeArgs>),
    /// Print a signed token, for a backend or for trying the server out.
    Token(TokenArgs),
}

#[derive(Debug, Args)]
struct TokenArgs {
    /// User id (`sub` claim).
    #[arg(long)]
    sub: String,
    /// Username (`name` claim); the id where absent.
    #[arg(long)]
    name: Option<String>,
    /// `user`, `assistant` or `admin`.
    #[arg(long, default_value = "user")]
    role: String,
    /// Lifetime in seconds.
    #[arg(long, default_value_t = 3600)]
    ttl: u64,
    /// The server's HS256 secret.
    #[arg(long, env = "ROOMCAST_JWT_SECRET", hide_env_values = true)]
    jwt_secret: String,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Serve(args) => serve(*args),
        Command::Token(args) => {
            let tokens = Tokens::new(&args.jwt_secret);
            println!(
                "{}",
                tokens.mint(&args.sub, args.name.as_deref(), Some(&args.role), args.ttl)
            );
            ExitCode::SUCCESS
        }
    }
}

fn serve(args: ServeArgs) -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("roomcast=info")),
        )
        .with_writer(std::io::stderr)
        .init();
    let config = match Config::load(args) {
        Ok(config) => config,
        Err(err) => {
            eprintln!("roomcast: {err}");
            return ExitCode::from(2);
        }
    };
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("roomcast: cannot start the runtime: {err}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(config)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("roomcast: {err}");
            ExitCode::FAILURE
        }
    }
}

async fn run(config: Config) -> Result<(), Box<dyn std::error::Error>> {
    let listener = tokio::net::TcpListener::bind(config.bind)
        .await
        .map_err(|err| format!("cannot listen on {}: {err}", config.bind))?;
    let address = listener.local_addr()?;
    if !config.jwt_secret_configured {
        tracing::warn!(
            "no --jwt-secret given: using a random one, so tokens minted elsewhere will not verify"
        );
    }
    if config.admin_key.is_none() {
        tracing::warn!("no --admin-key given: the admin API accepts only admin-role tokens");
    }
    tracing::info!(
        database = ?config.database,
        "roomcast {} listening on http://{address} (WebSocket at ws://{address}/ws)",
        env!("CARGO_PKG_VERSION")
    );
    roomcast::serve(config, listener, shutdown_signal()).await?;
    Ok(())
}

/// Resolves on Ctrl-C or SIGTERM.
async fn shutdown_signal() {
    let ctrl_c = async {
        if let Err(err) = tokio::signal::ctrl_c().await {
            tracing::error!(error = %err, "cannot listen for Ctrl-C");
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(err) => {
                tracing::error!(error = %err, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {},
        () = terminate => {},
    }
}

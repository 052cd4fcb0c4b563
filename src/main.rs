//! The `roomcast` command line: `serve` runs the server, `token` mints a token.

use clap::{Args, Parser, Subcommand};
use roomcast::auth::{Accounts, Tokens};
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
    /// Measure a running server: idle connections, fan-out, bursts.
    Bench(roomcast::bench::BenchArgs),
    /// Manage accounts stored by the server.
    #[command(subcommand)]
    User(UserCommand),
}

#[derive(Debug, Subcommand)]
enum UserCommand {
    /// Create an account. The password is read from standard input (one
    /// line), or asked for without echo on a terminal; never from the
    /// command line.
    Add {
        /// Username: 2..32 letters, digits, `_`, `.` or `-`.
        name: String,
        /// `user`, `assistant` or `admin`.
        #[arg(long, default_value = "user")]
        role: String,
        #[command(flatten)]
        store: Box<ServeArgs>,
    },
    /// List accounts.
    List {
        #[command(flatten)]
        store: Box<ServeArgs>,
    },
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
        Command::Bench(args) => bench(&args),
        Command::User(command) => match user_command(command) {
            Ok(()) => ExitCode::SUCCESS,
            Err(err) => {
                eprintln!("roomcast: {err}");
                ExitCode::FAILURE
            }
        },
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

fn bench(args: &roomcast::bench::BenchArgs) -> ExitCode {
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("roomcast: cannot start the runtime: {err}");
            return ExitCode::FAILURE;
        }
    };
    let report = runtime.block_on(roomcast::bench::run(args));
    if args.json {
        println!("{}", report.to_json());
    } else {
        print!("{}", report.to_table());
    }
    ExitCode::SUCCESS
}

fn user_command(command: UserCommand) -> Result<(), Box<dyn std::error::Error>> {
    let runtime = tokio::runtime::Runtime::new()?;
    match command {
        UserCommand::Add { name, role, store } => {
            let config = Config::load(*store)?;
            let password = read_password(&name)?;
            runtime.block_on(async {
                let store = roomcast::open_store(&config).await?;
                let accounts = Accounts::new(
                    store.clone(),
                    Tokens::new(&config.jwt_secret),
                    config.token_ttl,
                    config.login_attempts_per_minute,
                );
                let account = accounts.register(&name, &password, &role).await?;
                store.flush().await?;
                println!(
                    "created {} ({}, role {})",
                    account.username, account.id, account.role
                );
                Ok::<(), Box<dyn std::error::Error>>(())
            })
        }
        UserCommand::List { store } => {
            let config = Config::load(*store)?;
            runtime.block_on(async {
                let store = roomcast::open_store(&config).await?;
                for account in store.list_accounts().await? {
                    println!(
                        "{}\t{}\t{}\t{}",
                        account.username, account.id, account.role, account.created_at
                    );
                }
                Ok::<(), Box<dyn std::error::Error>>(())
            })
        }
    }
}

/// A password from a prompt without echo on a terminal, else one line of
/// standard input.
fn read_password(name: &str) -> Result<String, Box<dyn std::error::Error>> {
    use std::io::{BufRead, IsTerminal};
    let password = if std::io::stdin().is_terminal() {
        rpassword::prompt_password(format!("password for {name}: "))?
    } else {
        let mut line = String::new();
        std::io::stdin().lock().read_line(&mut line)?;
        line.trim_end_matches(['\r', '\n']).to_owned()
    };
    if password.is_empty() {
        return Err("no password given on standard input".into());
    }
    Ok(password)
}

/// Logs to stderr, filtered by `RUST_LOG` (`roomcast=info` by default):
/// text with colours only on a terminal, or one JSON object per line.
fn init_logging(format: roomcast::config::LogFormat) {
    use std::io::IsTerminal;
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("roomcast=info"));
    let logs = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        roomcast::config::LogFormat::Text => logs.with_ansi(std::io::stderr().is_terminal()).init(),
        roomcast::config::LogFormat::Json => logs.json().with_ansi(false).init(),
    }
}

fn serve(args: ServeArgs) -> ExitCode {
    let config = match Config::load(args) {
        Ok(config) => config,
        Err(err) => {
            eprintln!("roomcast: {err}");
            return ExitCode::from(2);
        }
    };
    init_logging(config.log_format);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(config.threads)
        .enable_all()
        .build()
    {
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
    let listener = roomcast::server::listen(config.bind)
        .map_err(|err| format!("cannot listen on {}: {err}", config.bind))?;
    if !config.jwt_secret_configured {
        tracing::warn!(
            "no --jwt-secret given: using a random one, so tokens minted elsewhere will not verify"
        );
    }
    if config.admin_key.is_none() {
        tracing::warn!("no --admin-key given: the admin API accepts only admin-role tokens");
    }
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

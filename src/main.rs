//! The `cachegate` command: serve, check a config, or run the demo.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use cachegate::app::AppState;
use cachegate::config::{Config, Overrides};
use cachegate::devorigin::{self, OriginOptions};
use cachegate::{server, telemetry};

#[derive(Parser)]
#[command(
    name = "cachegate",
    version,
    about = "A caching reverse proxy that never lets a stampede reach the origin"
)]
struct Cli {
    /// Path of routes.yaml.
    #[arg(
        long,
        global = true,
        env = "CACHEGATE_CONFIG",
        default_value = "routes.yaml"
    )]
    config: PathBuf,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Serve (the default).
    Serve,
    /// Validate the config and exit: non-zero with FILE:LINE:COL: field: reason on error.
    Check,
    /// Run a demo origin on 127.0.0.1:3000 and the proxy in front of it.
    Demo,
    /// Show the route, the cache key and the exact request the origin would receive
    /// for a GET of URL (a path with query, or an absolute URL naming the host).
    Key {
        url: String,
        /// A request header, `Name: value` (repeatable).
        #[arg(short = 'H', long = "header")]
        headers: Vec<String>,
    },
    /// Run the load-test origin (configurable delay, body size, Cache-Control).
    Origin {
        #[arg(long, default_value = "127.0.0.1:3000")]
        listen: std::net::SocketAddr,
        /// Delay before each response, e.g. 200ms.
        #[arg(long, default_value = "0s", value_parser = parse_duration)]
        delay: std::time::Duration,
        /// Body size in bytes (0: a small JSON document).
        #[arg(long, default_value_t = 0)]
        body_size: usize,
        /// Cache-Control of responses ("none" for no header).
        #[arg(long, default_value = "max-age=5")]
        cache_control: String,
    },
}

fn parse_duration(s: &str) -> Result<std::time::Duration, String> {
    cachegate::config::parse_duration(s)
        .ok_or_else(|| format!("{s:?} is not a duration (expected e.g. 200ms, 1s)"))
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let _telemetry = telemetry::init();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("cachegate: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(run(cli));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("cachegate: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command.unwrap_or(Command::Serve) {
        Command::Check => {
            let config = Config::load(&cli.config, &Overrides::from_env())?;
            for warning in &config.warnings {
                eprintln!("warning: {warning}");
            }
            println!(
                "{}: ok ({} routes, {} upstreams)",
                cli.config.display(),
                config.routes.len(),
                config.upstreams.len()
            );
            Ok(())
        }
        Command::Serve => serve(&cli.config).await,
        Command::Key { url, headers } => {
            let config = Config::load(&cli.config, &Overrides::from_env())?;
            let mut parsed = Vec::new();
            for h in &headers {
                let (name, value) = h
                    .split_once(':')
                    .ok_or_else(|| anyhow::anyhow!("-H {h:?}: expected 'Name: value'"))?;
                parsed.push((name.trim().to_string(), value.trim().to_string()));
            }
            let client = std::net::SocketAddr::from(([127, 0, 0, 1], 0));
            let text = cachegate::proxy::explain::describe(&config, &url, &parsed, client)
                .map_err(|e| anyhow::anyhow!("{url}: {e}"))?;
            print!("{text}");
            Ok(())
        }
        Command::Demo => {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:3000").await?;
            tracing::info!("demo origin listening on 127.0.0.1:3000");
            tokio::spawn(devorigin::serve(
                listener,
                OriginOptions::default(),
                server::shutdown_signal(),
            ));
            serve(&cli.config).await
        }
        Command::Origin {
            listen,
            delay,
            body_size,
            cache_control,
        } => {
            let listener = tokio::net::TcpListener::bind(listen).await?;
            tracing::info!(%listen, "origin listening");
            let opts = OriginOptions {
                delay,
                body_size,
                cache_control: (cache_control != "none").then_some(cache_control),
            };
            devorigin::serve(listener, opts, server::shutdown_signal()).await?;
            Ok(())
        }
    }
}

async fn serve(path: &std::path::Path) -> anyhow::Result<()> {
    let config = Config::load(path, &Overrides::from_env())?;
    for warning in &config.warnings {
        tracing::warn!(%warning, "config");
    }
    let listener = tokio::net::TcpListener::bind(config.listen).await?;
    let metrics = telemetry::init_metrics().ok();
    let state = AppState::new(config).await?;
    server::run(state, listener, metrics, server::shutdown_signal()).await
}

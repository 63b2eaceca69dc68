//! The `cachegate` command: serve, check a config, or run the demo.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use cachegate::app::AppState;
use cachegate::config::{Config, Overrides};
use cachegate::devorigin::{self, OriginOptions};
use cachegate::{pipeline, server, telemetry};

/// mimalloc instead of glibc's malloc: a proxy allocates on one worker thread and frees on
/// another all the time, and glibc's per-thread arenas answered that with heap growth and
/// trimming (an `mprotect` every other miss, TLB shootdowns across the workers) and
/// ~12% of the CPU in malloc/free (BENCHMARKS.md section 14).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

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
    /// Purge entries through the admin API (for deploy pipelines). Exit codes: 0 ok,
    /// 2 usage, 3 auth, 4 request rejected, 5 network or server error after retries.
    Purge(pipeline::purge::Args),
    /// Request URLs through the proxy so they are cached before traffic arrives; exits 1
    /// when any failed.
    Warm(pipeline::warm::Args),
}

fn parse_duration(s: &str) -> Result<std::time::Duration, String> {
    cachegate::config::parse_duration(s)
        .ok_or_else(|| format!("{s:?} is not a duration (expected e.g. 200ms, 1s)"))
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // Pipeline commands are clients: no logs, traces or metrics of their own.
    match cli.command {
        Some(Command::Purge(args)) => return pipeline::block_on(pipeline::purge::run(args)),
        Some(Command::Warm(args)) => return pipeline::block_on(pipeline::warm::run(args)),
        _ => {}
    }
    if let Err(e) = cachegate::workers::configured() {
        eprintln!("cachegate: {e}");
        return ExitCode::FAILURE;
    }
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
    // Dropped before the runtime: the last spans are flushed while it still runs.
    let _telemetry = match telemetry::init(runtime.handle()) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("cachegate: traces: {e:#}");
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
            print!("{}", edge_summary(&config));
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
        // Dispatched in `main`, before the server's runtime and telemetry.
        Command::Purge(_) | Command::Warm(_) => Ok(()),
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
    state.set_config_path(path.to_path_buf());
    tokio::spawn(cachegate::reload::watch(
        state.clone(),
        path.to_path_buf(),
        std::time::Duration::from_secs(1),
    ));
    let listeners = server::Listeners::bind_rest(&state, listener).await?;
    server::serve(state, listeners, metrics, server::shutdown_signal()).await
}

/// What `check` shows beyond "ok": listeners, limits, the drain and each upstream's
/// transport, as they will apply (defaults filled in).
fn edge_summary(config: &Config) -> String {
    use std::fmt::Write;
    let mut out = String::new();
    let _ = writeln!(out, "listen: http://{}", config.listen);
    if let Some(tls) = &config.tls {
        let _ = writeln!(
            out,
            "tls: https://{} (cert_file {}, key_file {}; ALPN h2, http/1.1)",
            tls.listen,
            tls.cert_file.display(),
            tls.key_file.display()
        );
    }
    let l = &config.limits;
    let _ = writeln!(
        out,
        "limits: header_read_timeout {:?}, idle_timeout {:?}, request_timeout {:?}, \
         max_connections {}, max_h2_streams {}, max_header_bytes {}, max_request_body {}",
        l.header_read_timeout,
        l.idle_timeout,
        l.request_timeout,
        l.max_connections,
        l.max_h2_streams,
        l.max_header_bytes,
        l.max_request_body
    );
    let _ = writeln!(
        out,
        "shutdown: grace {:?}, timeout {:?}",
        config.shutdown.grace, config.shutdown.timeout
    );
    for u in &config.upstreams {
        let mut line = format!(
            "upstream {}: {}://{}{} (http2 {}",
            u.name,
            u.scheme,
            u.authority,
            u.base_path,
            u.http2.as_str()
        );
        if let Some(host) = u.host.as_ref().and_then(|h| h.to_str().ok()) {
            let _ = write!(line, ", host {host}");
        }
        if let Some(tls) = &u.tls {
            if let Some(name) = &tls.server_name {
                let _ = write!(line, ", server_name {}", name.to_str());
            }
            if tls.client_auth {
                line.push_str(", client certificate");
            }
            if tls.insecure {
                line.push_str(", certificate NOT verified");
            }
        }
        let _ = writeln!(out, "{line})");
    }
    out
}

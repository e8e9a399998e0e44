//! `walkie-bridge` command line. Exit codes: 0 success, 1 runtime failure,
//! 2 unusable configuration (or bad command-line usage, as clap reports it).

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use clap::{Args, Parser, Subcommand};
use tokio_util::sync::CancellationToken;
use tracing_subscriber::EnvFilter;
use walkie_bridge::config::{Config, ConfigErrors, Warning, DEFAULT_PATH};
use walkie_bridge::registration::Registration;

const EXIT_FAILURE: u8 = 1;
const EXIT_CONFIG: u8 = 2;

#[derive(Parser)]
#[command(name = "walkie-bridge", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the bridge.
    Run(ConfigArg),
    /// Check a configuration file: prints a summary and warnings and exits 0, or
    /// prints every error and exits 2.
    CheckConfig {
        /// The file to check; overrides -c and WALKIE_CONFIG.
        #[arg(value_name = "FILE")]
        file: Option<PathBuf>,
        #[command(flatten)]
        config: ConfigArg,
    },
    /// Print the Matrix appservice registration (YAML) for the homeserver.
    GenerateRegistration(ConfigArg),
    /// Force a radio's PTT to unkeyed (for the unit's ExecStopPost): opens the
    /// port or connects to rigctld, unkeys, reads back. Exit 0 only when unkeyed.
    Unkey {
        /// The NAME of `[radio.NAME]`.
        #[arg(long, value_name = "NAME")]
        radio: String,
        #[command(flatten)]
        config: ConfigArg,
    },
    /// List serial ports (with /dev/serial/by-id names) and sound cards.
    Devices,
}

#[derive(Args)]
struct ConfigArg {
    /// Configuration file (TOML); WALKIE__SECTION__KEY variables override its keys.
    #[arg(short, long, value_name = "FILE", env = "WALKIE_CONFIG", default_value = DEFAULT_PATH)]
    config: PathBuf,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Run(arg) => run(&arg.config),
        Command::CheckConfig { file, config } => {
            check_config(file.as_deref().unwrap_or(&config.config))
        }
        Command::GenerateRegistration(arg) => generate_registration(&arg.config),
        Command::Unkey { radio, config } => unkey(&config.config, &radio),
        Command::Devices => {
            print!("{}", walkie_radio::devices::devices());
            ExitCode::SUCCESS
        }
    }
}

/// Loads or explains why not; warnings go to stderr either way.
fn load(path: &Path) -> Result<Config, ExitCode> {
    match Config::load(path) {
        Ok((config, warnings)) => {
            print_warnings(&warnings);
            Ok(config)
        }
        Err(errors) => {
            print_errors(&errors);
            Err(ExitCode::from(EXIT_CONFIG))
        }
    }
}

fn print_warnings(warnings: &[Warning]) {
    for w in warnings {
        eprintln!("warning: {w}");
    }
}

fn print_errors(errors: &ConfigErrors) {
    for e in errors.iter() {
        eprintln!("error: {e}");
    }
    let n = errors.len();
    eprintln!(
        "{n} configuration error{} found",
        if n == 1 { "" } else { "s" }
    );
}

fn check_config(path: &Path) -> ExitCode {
    match load(path) {
        Ok(config) => {
            println!(
                "ok: {} channels, {} endpoints",
                config.channels.len(),
                config.endpoints.len()
            );
            ExitCode::SUCCESS
        }
        Err(code) => code,
    }
}

fn generate_registration(path: &Path) -> ExitCode {
    let config = match load(path) {
        Ok(config) => config,
        Err(code) => return code,
    };
    match Registration::from_config(&config).to_yaml() {
        Ok(yaml) => {
            print!("{yaml}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(EXIT_FAILURE)
        }
    }
}

fn unkey(path: &Path, radio: &str) -> ExitCode {
    let config = match load(path) {
        Ok(config) => config,
        Err(code) => return code,
    };
    match walkie_bridge::radio_cli::unkey(&config, radio) {
        Ok(report) => {
            for action in &report.actions {
                println!("{action}");
            }
            match report.read_back_keyed {
                Some(true) => {
                    eprintln!(
                        "error: radio.{radio} ({}) still reads back KEYED",
                        report.ptt
                    );
                    ExitCode::from(EXIT_FAILURE)
                }
                Some(false) => {
                    println!(
                        "radio.{radio} ({}): unkeyed, confirmed by read-back",
                        report.ptt
                    );
                    ExitCode::SUCCESS
                }
                None => {
                    println!(
                        "radio.{radio} ({}): unkeyed (this PTT cannot be read back)",
                        report.ptt
                    );
                    ExitCode::SUCCESS
                }
            }
        }
        Err(error @ walkie_bridge::radio_cli::UnkeyError::NoSuchRadio(_)) => {
            eprintln!("error: {}: {error}", path.display());
            ExitCode::from(EXIT_CONFIG)
        }
        Err(error) => {
            eprintln!("error: {error}");
            ExitCode::from(EXIT_FAILURE)
        }
    }
}

fn run(path: &Path) -> ExitCode {
    let config = match load(path) {
        Ok(config) => config,
        Err(code) => return code,
    };
    if let Err(e) = init_tracing(&config.logging.level) {
        eprintln!("error: {e:#}");
        return ExitCode::from(EXIT_FAILURE);
    }
    match run_daemon(config) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e:#}");
            ExitCode::from(EXIT_FAILURE)
        }
    }
}

fn init_tracing(level: &str) -> anyhow::Result<()> {
    let filter = match std::env::var("RUST_LOG") {
        Ok(directives) if !directives.trim().is_empty() => {
            EnvFilter::try_new(&directives).with_context(|| format!("RUST_LOG={directives:?}"))?
        }
        _ => EnvFilter::try_new(level).with_context(|| format!("logging.level = {level:?}"))?,
    };
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal());
    // journald stamps every line itself; a second timestamp is noise.
    let result = if std::env::var_os("JOURNAL_STREAM").is_some() {
        builder.without_time().try_init()
    } else {
        builder.try_init()
    };
    result.map_err(|e| anyhow::anyhow!("cannot set up logging: {e}"))
}

fn run_daemon(config: Config) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    // A panic anywhere must not leave a transmitter keyed (DESIGN.md §5).
    walkie_radio::ptt::safety::install_panic_hook();
    runtime.block_on(async {
        let shutdown = CancellationToken::new();
        let on_signal = shutdown.clone();
        let mut signals = Signals::new()?;
        tokio::spawn(async move {
            let name = signals.recv().await;
            // Unkey first, before anything that could hang: the orderly shutdown
            // that follows unkeys again through each radio's controller.
            // PTT calls block (rigctld answers over TCP): off the async workers.
            let _ = tokio::task::spawn_blocking(walkie_radio::ptt::safety::unkey_all).await;
            tracing::info!("{name} received, shutting down");
            on_signal.cancel();
        });
        walkie_bridge::daemon::run(config, shutdown).await
    })
}

/// SIGTERM (systemd stop) and SIGINT (Ctrl-C), registered before the daemon starts
/// so that an early signal is not lost.
struct Signals {
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
}

impl Signals {
    fn new() -> anyhow::Result<Self> {
        use tokio::signal::unix::{signal, SignalKind};
        Ok(Self {
            term: signal(SignalKind::terminate()).context("cannot handle SIGTERM")?,
            int: signal(SignalKind::interrupt()).context("cannot handle SIGINT")?,
        })
    }

    async fn recv(&mut self) -> &'static str {
        tokio::select! {
            _ = self.term.recv() => "SIGTERM",
            _ = self.int.recv() => "SIGINT",
        }
    }
}

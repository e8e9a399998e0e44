//! `walkie-bridge` command line. Exit codes: 0 success, 1 runtime failure,
//! 2 unusable configuration (or bad command-line usage, as clap reports it).

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use clap::{Args, CommandFactory, Parser, Subcommand};
use tokio_util::sync::CancellationToken;
use tracing_subscriber::EnvFilter;
use walkie_bridge::config::{Config, ConfigErrors, Warning, DEFAULT_PATH};
use walkie_bridge::registration::Registration;

/// jemalloc instead of glibc's malloc. Under steady traffic (the soak benchmark:
/// 20 channels, 120 transmissions a minute, for hours) glibc's allocator
/// fragmented: RSS grew for as long as the run lasted (+122 KiB/min over 15
/// minutes, +48 KiB/min over 45) with no task, thread, descriptor or table growing
/// behind it, and its own bookkeeping (`_int_malloc`, `_int_free`,
/// `malloc_consolidate`, `unlink_chunk`) took a growing share of the bridge's CPU
/// (0.6 % → 2.4 % of samples for `_int_malloc` between minute 2 and 14). jemalloc's
/// size classes and per-thread caches keep a long-running process flat; it is what
/// most Rust servers ship for the same reason. docs/bench/soak-*.log has the runs.
/// The `system-allocator` feature leaves it out, for heap profilers that hook
/// malloc (scripts/heap-profile.sh).
#[cfg(not(feature = "system-allocator"))]
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// One jemalloc thread that returns freed pages to the system on time. Without
/// it jemalloc purges only on the allocation path of the arena that freed them:
/// an arena whose thread went quiet kept its dirty pages, and the soak's RSS
/// crept up (+0.36 MiB of jemalloc "resident" in 17 minutes) while the bytes
/// allocated stayed flat (`walkie_heap_bytes`). Failing to start it costs only
/// that, so it is logged and the bridge goes on.
#[cfg(not(feature = "system-allocator"))]
fn purge_in_the_background() {
    use tikv_jemalloc_ctl::{background_thread, max_background_threads};
    let started = max_background_threads::write(1).and_then(|()| background_thread::write(true));
    if let Err(error) = started {
        eprintln!("jemalloc background purging not started: {error}");
    }
}

/// How often the C heap's free pages go back to the system.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
const C_HEAP_TRIM_INTERVAL: std::time::Duration = std::time::Duration::from_secs(30);

/// The C heap (glibc malloc: SQLite's page caches and statements, libopus's
/// coders) kept small and flat. Two knobs, both found by the 2-hour soak's memory
/// map (issue 14 item 9):
/// - glibc gives each thread that mallocs an arena of its own, up to 8 per core;
///   the soak's bridge had nine, each holding its own free chunks and top, and
///   the pages held free grew by a third over two hours. Two arenas are plenty for
///   the handful of threads that call into C (the SQLite workers, the recorder),
///   which take a lock for microseconds at this rate.
/// - glibc returns memory to the system only from the top of an arena, and only
///   on free; pages free in the middle stay resident until `malloc_trim`. A trim
///   every 30 s costs well under a millisecond on heaps this size.
///
/// A thread of its own (not a tokio task): the allocator is the process's.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn keep_the_c_heap_small() {
    // SAFETY: mallopt only sets a glibc tunable; called before the runtime's
    // threads exist, as glibc wants for M_ARENA_MAX.
    if unsafe { libc::mallopt(libc::M_ARENA_MAX, 2) } != 1 {
        eprintln!("glibc refused M_ARENA_MAX=2; the C heap keeps its default arenas");
    }
    let spawned = std::thread::Builder::new()
        .name("c-heap-trim".into())
        .stack_size(64 * 1024)
        .spawn(|| loop {
            std::thread::sleep(C_HEAP_TRIM_INTERVAL);
            // SAFETY: malloc_trim takes the arenas' own locks; 0 keeps no pad.
            unsafe { libc::malloc_trim(0) };
        });
    if let Err(error) = spawned {
        eprintln!("no C heap trim thread ({error}): free C heap pages stay resident");
    }
}

/// jemalloc's own counters for /metrics (`walkie_heap_bytes{heap="rust"}`). They
/// are cached until the epoch advances, so each read advances it first.
#[cfg(not(feature = "system-allocator"))]
fn jemalloc_stats() -> Option<walkie_bridge::ops::metrics::HeapStats> {
    use tikv_jemalloc_ctl::{epoch, stats};
    epoch::advance().ok()?;
    Some(walkie_bridge::ops::metrics::HeapStats {
        allocated: stats::allocated::read().ok()? as u64,
        resident: stats::resident::read().ok()? as u64,
    })
}

/// `--version`: the release and the commit it was built from (build.rs).
const VERSION: &str = concat!(
    env!("CARGO_PKG_VERSION"),
    " (commit ",
    env!("WALKIE_COMMIT"),
    ")"
);

const EXIT_FAILURE: u8 = 1;

/// `walkie-bridge doctor`: the config first (nothing else can be checked
/// without it), then `walkie_bridge::doctor`'s checks, printed as they end.
fn doctor(file: &Path) -> ExitCode {
    let config = match Config::load(file) {
        Ok((config, _warnings)) => {
            println!(
                "✓ config {}: {} channels, {} endpoints",
                file.display(),
                config.channels.len(),
                config.endpoints.len()
            );
            config
        }
        Err(errors) => {
            println!("✗ config {}: {errors}\n    → fix the keys named above (walkie-bridge check-config shows the same)", file.display());
            return ExitCode::from(EXIT_FAILURE);
        }
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("error: cannot start the async runtime: {error}");
            return ExitCode::from(EXIT_FAILURE);
        }
    };
    let checks = runtime.block_on(walkie_bridge::doctor::run(&config, |check| {
        println!("{}", check.line());
    }));
    if checks.iter().all(|c| c.passed()) {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(EXIT_FAILURE)
    }
}
const EXIT_CONFIG: u8 = 2;

/// `walkie-bridge levels`: exit 0 when the meter or tone ran its course, 1 on
/// an error (the radio is unkeyed then), 2 on a bad config.
fn levels(path: &Path, request: walkie_bridge::levels::LevelsRequest) -> ExitCode {
    use std::io::IsTerminal as _;
    let config = match load(path) {
        Ok(config) => config,
        Err(code) => return code,
    };
    let mut out = std::io::stdout();
    let live = out.is_terminal();
    let result = match request.tone {
        Some(tone) => walkie_bridge::levels::transmit_tone(&config, &request, tone, &mut out),
        None => walkie_bridge::levels::receive_meter(&config, &request, &mut out, live),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(walkie_bridge::levels::LevelsError::NoSuchRadio(name)) => {
            eprintln!("error: no [radio.{name}] is configured");
            ExitCode::from(EXIT_CONFIG)
        }
        Err(error) => {
            eprintln!("error: {error}");
            ExitCode::from(EXIT_FAILURE)
        }
    }
}

fn parse_tone_hz(text: &str) -> Result<f64, String> {
    match text.parse::<f64>() {
        Ok(hz) if (50.0..=5_000.0).contains(&hz) => Ok(hz),
        _ => Err("a frequency from 50 to 5000 Hz".into()),
    }
}

fn parse_tone_level(text: &str) -> Result<f64, String> {
    match text.parse::<f64>() {
        Ok(level) if (-60.0..=-3.0).contains(&level) => Ok(level),
        _ => Err("an RMS level from -60 to -3 dBFS (-3 is a full-scale sine)".into()),
    }
}

fn parse_seconds(text: &str) -> Result<f64, String> {
    match text.parse::<f64>() {
        Ok(s) if s > 0.0 && s <= 3_600.0 => Ok(s),
        _ => Err("seconds, more than 0 and at most 3600".into()),
    }
}

/// The man page: the command's and each subcommand's help, as roff.
fn manpage() -> ExitCode {
    let mut out = std::io::stdout().lock();
    match clap_mangen::Man::new(Cli::command()).render(&mut out) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("walkie-bridge manpage: {error}");
            ExitCode::FAILURE
        }
    }
}

#[derive(Parser)]
#[command(name = "walkie-bridge", version = VERSION, about)]
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
        #[arg(long, value_name = "NAME", required_unless_present = "all")]
        radio: Option<String>,
        /// Every configured radio; exit 0 only if all of them are unkeyed (radios
        /// with `ptt = "none"` count as unkeyed).
        #[arg(long, conflicts_with = "radio")]
        all: bool,
        #[command(flatten)]
        config: ConfigArg,
    },
    /// List serial ports (with /dev/serial/by-id names) and sound cards.
    Devices,
    /// Check a setup: the config, the homeserver, the as_token, the homeserver's
    /// way back to the bridge, each room, Mumble server, MQTT broker, reflector
    /// login and radio (port, sound card, PTT). One line per
    /// check, ✓ or ✗ with what to do; exit 0 when all pass, 1 otherwise.
    Doctor(ConfigArg),
    /// Set a radio's audio levels: the receive level live (RMS and peak dBFS,
    /// the VOX threshold, the COS state), or with --tone a test tone keyed
    /// through the radio (tx_timeout_s applies; Ctrl-C stops and unkeys).
    Levels {
        /// The NAME of `[radio.NAME]`.
        #[arg(long, value_name = "NAME")]
        radio: String,
        /// Transmit a sine of this frequency instead of metering.
        #[arg(long, value_name = "HZ", requires = "level", value_parser = parse_tone_hz)]
        tone: Option<f64>,
        /// The tone's RMS level in dBFS (a full-scale sine is -3.0).
        #[arg(long, value_name = "DBFS", requires = "tone", allow_negative_numbers = true, value_parser = parse_tone_level)]
        level: Option<f64>,
        /// Stop after this many seconds (default: until Ctrl-C, or tx_timeout_s).
        #[arg(long, value_name = "SECONDS", value_parser = parse_seconds)]
        seconds: Option<f64>,
        #[command(flatten)]
        config: ConfigArg,
    },
    /// Print the shell completion script for SHELL (bash, zsh, fish, elvish,
    /// powershell), e.g. `walkie-bridge completions bash > /etc/bash_completion.d/walkie-bridge`.
    Completions {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Print the manual page (roff), as the Debian package installs it.
    #[command(hide = true)]
    Manpage,
}

#[derive(Args)]
struct ConfigArg {
    /// Configuration file (TOML); WALKIE__SECTION__KEY variables override its keys.
    #[arg(short, long, value_name = "FILE", env = "WALKIE_CONFIG", default_value = DEFAULT_PATH)]
    config: PathBuf,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    #[cfg(not(feature = "system-allocator"))]
    {
        walkie_bridge::ops::metrics::set_rust_heap_probe(jemalloc_stats);
        purge_in_the_background();
    }
    match cli.command {
        Command::Run(arg) => {
            #[cfg(all(target_os = "linux", target_env = "gnu"))]
            keep_the_c_heap_small();
            run(&arg.config)
        }
        Command::CheckConfig { file, config } => {
            check_config(file.as_deref().unwrap_or(&config.config))
        }
        Command::GenerateRegistration(arg) => generate_registration(&arg.config),
        Command::Unkey {
            radio: Some(radio),
            config,
            ..
        } => unkey(&config.config, &radio),
        Command::Unkey { config, .. } => unkey_all(&config.config),
        Command::Doctor(arg) => doctor(&arg.config),
        Command::Completions { shell } => {
            clap_complete::generate(
                shell,
                &mut Cli::command(),
                "walkie-bridge",
                &mut std::io::stdout(),
            );
            ExitCode::SUCCESS
        }
        Command::Manpage => manpage(),
        Command::Levels {
            radio,
            tone,
            level,
            seconds,
            config,
        } => levels(
            &config.config,
            walkie_bridge::levels::LevelsRequest {
                radio,
                tone: tone
                    .zip(level)
                    .map(|(hz, level_dbfs)| walkie_bridge::levels::Tone { hz, level_dbfs }),
                seconds,
            },
        ),
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

/// Prints what was done for one radio; `true` when it is unkeyed.
fn report_unkey(
    radio: &str,
    result: Result<walkie_radio::ptt::UnkeyReport, walkie_bridge::radio_cli::UnkeyError>,
) -> bool {
    match result {
        Ok(report) => {
            for action in &report.actions {
                println!("radio.{radio}: {action}");
            }
            match report.read_back_keyed {
                Some(true) => {
                    eprintln!(
                        "error: radio.{radio} ({}) still reads back KEYED",
                        report.ptt
                    );
                    false
                }
                Some(false) => {
                    println!(
                        "radio.{radio} ({}): unkeyed, confirmed by read-back",
                        report.ptt
                    );
                    true
                }
                None => {
                    println!(
                        "radio.{radio} ({}): unkeyed (this PTT cannot be read back)",
                        report.ptt
                    );
                    true
                }
            }
        }
        Err(error) => {
            eprintln!("error: {error}");
            false
        }
    }
}

/// `unkey --all`, the unit's ExecStopPost: every radio is tried even when one
/// fails, and the exit code says whether all of them are unkeyed.
fn unkey_all(path: &Path) -> ExitCode {
    let config = match load(path) {
        Ok(config) => config,
        Err(code) => return code,
    };
    let results = walkie_bridge::radio_cli::unkey_all(&config);
    if results.is_empty() {
        println!("no [radio.*] is configured; nothing to unkey");
        return ExitCode::SUCCESS;
    }
    let total = results.len();
    let mut failed = 0;
    for (radio, result) in results {
        if !report_unkey(&radio, result) {
            failed += 1;
        }
    }
    if failed == 0 {
        println!("all {total} radios unkeyed");
        ExitCode::SUCCESS
    } else {
        eprintln!("error: {failed} of {total} radios may still be keyed");
        ExitCode::from(EXIT_FAILURE)
    }
}

fn run(path: &Path) -> ExitCode {
    let config = match load(path) {
        Ok(config) => config,
        Err(code) => return code,
    };
    let log_level = match init_tracing(&config.logging.level) {
        Ok(handle) => handle,
        Err(e) => {
            eprintln!("error: {e:#}");
            return ExitCode::from(EXIT_FAILURE);
        }
    };
    match run_daemon(config, path.to_owned(), log_level) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e:#}");
            ExitCode::from(EXIT_FAILURE)
        }
    }
}

/// Changes the log filter of the running daemon (SIGHUP with a new `logging.level`).
type LogLevel = tracing_subscriber::reload::Handle<EnvFilter, tracing_subscriber::Registry>;

fn log_filter(level: &str) -> anyhow::Result<EnvFilter> {
    match std::env::var("RUST_LOG") {
        Ok(directives) if !directives.trim().is_empty() => {
            EnvFilter::try_new(&directives).with_context(|| format!("RUST_LOG={directives:?}"))
        }
        _ => EnvFilter::try_new(level).with_context(|| format!("logging.level = {level:?}")),
    }
}

fn init_tracing(level: &str) -> anyhow::Result<LogLevel> {
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    let (filter, handle) = tracing_subscriber::reload::Layer::new(log_filter(level)?);
    let journal = walkie_bridge::ops::logging::stderr_is_journal();
    let fmt = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_ansi(!journal && std::io::stderr().is_terminal());
    let registry = tracing_subscriber::registry().with(filter);
    let result = if journal {
        // journald stamps every line itself, and reads the "<N>" prefix as the
        // line's priority (journalctl -p warning).
        registry
            .with(fmt.event_format(walkie_bridge::ops::logging::JournalFormat::default()))
            .try_init()
    } else {
        registry.with(fmt).try_init()
    };
    result.map_err(|e| anyhow::anyhow!("cannot set up logging: {e}"))?;
    Ok(handle)
}

fn run_daemon(config: Config, path: PathBuf, log_level: LogLevel) -> anyhow::Result<()> {
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
        let (reload_tx, reload_rx) = tokio::sync::mpsc::channel(1);
        tokio::spawn(async move {
            let name = loop {
                match signals.recv().await {
                    Signal::Stop(name) => break name,
                    Signal::Reload => reload(&path, &log_level, &reload_tx).await,
                }
            };
            // Unkey first, before anything that could hang: the orderly shutdown
            // that follows unkeys again through each radio's controller.
            // PTT calls block (rigctld answers over TCP): off the async workers.
            let _ = tokio::task::spawn_blocking(walkie_radio::ptt::safety::unkey_all).await;
            tracing::info!("{name} received, shutting down");
            on_signal.cancel();
        });
        walkie_bridge::daemon::Daemon::new(config)
            .with_reload(reload_rx)
            .with_notifier(walkie_bridge::ops::notify::Notifier::from_env())
            .run(shutdown)
            .await
    })
}

/// SIGHUP: reads and checks the file again; a file with errors changes nothing.
async fn reload(path: &Path, log_level: &LogLevel, daemon: &tokio::sync::mpsc::Sender<Config>) {
    tracing::info!(file = %path.display(), "SIGHUP received, reloading the configuration");
    let file = path.to_owned();
    let loaded = match tokio::task::spawn_blocking(move || Config::load(&file)).await {
        Ok(loaded) => loaded,
        Err(error) => {
            tracing::error!(%error, "reload failed; the running configuration stays");
            return;
        }
    };
    let config = match loaded {
        Ok((config, warnings)) => {
            for warning in &warnings {
                tracing::warn!("{warning}");
            }
            config
        }
        Err(errors) => {
            for error in errors.iter() {
                tracing::error!("{error}");
            }
            tracing::error!(
                errors = errors.len(),
                "the configuration has errors; the running configuration stays"
            );
            return;
        }
    };
    match log_filter(&config.logging.level) {
        Ok(filter) => {
            if let Err(error) = log_level.reload(filter) {
                tracing::warn!(%error, "logging.level not applied");
            }
        }
        Err(error) => tracing::warn!("{error:#}"),
    }
    // Never wait here: this task also handles SIGTERM. The daemon takes a config
    // off the channel as it starts applying it, so the slot is only full when
    // SIGHUPs come faster than reloads finish.
    match daemon.try_send(config) {
        Ok(()) => {}
        Err(tokio::sync::mpsc::error::TrySendError::Full(_)) => {
            tracing::warn!("a reload is still pending; send SIGHUP again once it is done");
        }
        Err(tokio::sync::mpsc::error::TrySendError::Closed(_)) => {}
    }
}

enum Signal {
    Stop(&'static str),
    Reload,
}

/// SIGTERM (systemd stop), SIGINT (Ctrl-C) and SIGHUP (systemctl reload),
/// registered before the daemon starts so that an early signal is not lost.
struct Signals {
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
    hup: tokio::signal::unix::Signal,
}

impl Signals {
    fn new() -> anyhow::Result<Self> {
        use tokio::signal::unix::{signal, SignalKind};
        Ok(Self {
            term: signal(SignalKind::terminate()).context("cannot handle SIGTERM")?,
            int: signal(SignalKind::interrupt()).context("cannot handle SIGINT")?,
            // Registered before the daemon starts: SIGHUP's default action ends
            // the process.
            hup: signal(SignalKind::hangup()).context("cannot handle SIGHUP")?,
        })
    }

    async fn recv(&mut self) -> Signal {
        tokio::select! {
            _ = self.term.recv() => Signal::Stop("SIGTERM"),
            _ = self.int.recv() => Signal::Stop("SIGINT"),
            _ = self.hup.recv() => Signal::Reload,
        }
    }
}

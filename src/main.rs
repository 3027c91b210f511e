//! tidewater: change-data-capture from database logs into lake tables.
//!
//! The binary only wires things together: CLI and config here, the
//! coordinator in [`pipeline`], the error policy in [`policy`].

mod config;
mod forget;
mod lease;
mod lineage;
mod metrics;
mod pipeline;
mod policy;
mod reverse;
mod status;
mod verify;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};
use tokio::sync::watch;
use tracing::{error, info, warn};

use crate::config::Config;
use crate::pipeline::{Mode, Outcome, PipelineError, Settings, SourceSettings};
use crate::policy::{action, exit_code, RetryStreak};

#[derive(Parser)]
#[command(
    name = "tidewater",
    version,
    about = "Change-data-capture from Postgres into Delta Lake tables"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
    /// Log format on stderr.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
}

#[derive(Clone, Copy, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Subcommand)]
enum Command {
    /// Snapshot if needed, then stream changes until SIGTERM/SIGINT.
    Run {
        #[arg(long)]
        config: PathBuf,
    },
    /// Take a consistent snapshot into the lake, then exit. The replication slot
    /// is kept so a later `run` continues without a gap.
    Snapshot {
        #[arg(long)]
        config: PathBuf,
        /// Drop the replication slot afterwards (no later `run` can continue).
        #[arg(long)]
        drop_slot: bool,
        /// Copy only this table again (`schema.table`; repeatable) into a
        /// lake that streams already — e.g. one stopped by an error — keeping
        /// every other table's position.
        #[arg(long = "table", value_name = "TABLE", conflicts_with = "drop_slot")]
        tables: Vec<String>,
    },
    /// Check the config and the source server; print every problem with its fix.
    Check {
        #[arg(long)]
        config: PathBuf,
    },
    /// Print per-table state, committed positions and replication lag.
    Status {
        #[arg(long)]
        config: PathBuf,
        #[arg(long, value_enum, default_value_t = status::Format::Text)]
        format: status::Format,
        /// Only this table, `schema.table` (`database.table` on MySQL);
        /// exit 2 when the pipeline has no such table.
        #[arg(long)]
        table: Option<String>,
        /// With --table: every schema version of the table, where it took
        /// effect and how its columns landed.
        #[arg(long, requires = "table")]
        history: bool,
    },
    /// Run the [[reverse_etl]] jobs once: query the lake, push the
    /// difference since the last push into each target table, print what
    /// changed, exit.
    ReverseEtl {
        #[arg(long)]
        config: PathBuf,
        /// Only this job.
        #[arg(long)]
        job: Option<String>,
        /// Print what would be added, changed and deleted; write nothing.
        #[arg(long)]
        dry_run: bool,
        /// Push every result row again, whatever was pushed before (e.g.
        /// after the target table was changed by hand).
        #[arg(long)]
        full: bool,
    },
    /// Compare the source with what landed in the lake, table by table, at
    /// one source position while the pipeline runs: row counts and
    /// checksums over key ranges, then the keys that differ (never other
    /// values). Exit 0 equal, 1 different, 4 could not finish.
    ///
    /// Example: tidewater verify --config tidewater.toml --table public.orders --repair
    Verify {
        /// The pipeline's config file.
        #[arg(long)]
        config: PathBuf,
        /// Only this table (`schema.table`, `database.table` on MySQL;
        /// repeatable). Default: every table of the lake.
        #[arg(long = "table", value_name = "TABLE")]
        tables: Vec<String>,
        /// Ask the running pipeline to copy the differing tables again,
        /// then verify them until equal (or --wait passes).
        #[arg(long)]
        repair: bool,
        /// Seconds to wait for the pipeline to commit the compared source
        /// position (and, with --repair, for the copy to land).
        #[arg(long, default_value_t = 300)]
        wait: u64,
        /// Memory for the lake side's keys; past it they go to temp files.
        #[arg(long, default_value_t = 256)]
        memory_mb: usize,
        /// Keys printed per table and kind of difference.
        #[arg(long, default_value_t = 20)]
        max_keys: usize,
    },
    /// Erase every row of some keys of a table: from a Delta lake's change
    /// log and current-state table and every file and log version that
    /// held them (time travel to earlier versions stops working; the
    /// running pipeline does it between two commits), or from a
    /// warehouse's table and change log (rewritten). An audit entry (when,
    /// table, key hash, rows removed — never a value) is recorded.
    ///
    /// Example: tidewater forget --config tidewater.toml --table public.people --key '{"id": 42}'
    Forget {
        /// The pipeline's config file.
        #[arg(long)]
        config: PathBuf,
        /// The table (`schema.table`, `database.table` on MySQL).
        #[arg(long)]
        table: String,
        /// A key as JSON: an object by key column, or a bare value for a
        /// one-column key (repeatable).
        #[arg(long = "key", value_name = "JSON")]
        keys: Vec<String>,
        /// A file of keys, one JSON per line.
        #[arg(long)]
        keys_file: Option<PathBuf>,
        /// Seconds to wait for the running pipeline to do it.
        #[arg(long, default_value_t = 300)]
        wait: u64,
    },
    /// Print the JSON Schema of the config file.
    Schema,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(cli.log_format);
    tidewater_lake::quiet_caught_storage_panics();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("tidewater")
        .build()
    {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("error: cannot start the async runtime: {err}");
            return ExitCode::from(exit_code::FAILED as u8);
        }
    };
    let code = runtime.block_on(dispatch(cli.command));
    ExitCode::from(code as u8)
}

/// Our own logs at info; the Delta libraries log every snapshot load at info
/// (and the kernel logs an expected "no files in log segment" as an error when
/// a table is created), so they only speak through the errors they return.
const DEFAULT_LOG_FILTER: &str =
    "info,deltalake=error,deltalake_core=error,buoyant_kernel=off,delta_kernel=off";

fn init_logging(format: LogFormat) {
    // TIDEWATER_LOG adds to the defaults, so `TIDEWATER_LOG=debug` does not
    // unleash the Delta kernel's per-commit logs (name its target to do so).
    let directives = match std::env::var("TIDEWATER_LOG") {
        Ok(extra) if !extra.trim().is_empty() => format!("{DEFAULT_LOG_FILTER},{extra}"),
        _ => DEFAULT_LOG_FILTER.to_string(),
    };
    let filter = tracing_subscriber::EnvFilter::try_new(&directives)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(DEFAULT_LOG_FILTER));
    use std::io::IsTerminal;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

fn load(path: &std::path::Path) -> Result<Config, i32> {
    Config::load(path).map_err(|err| {
        eprintln!("error: {}", chain(&err));
        exit_code::CONFIG
    })
}

/// The settings of `config`; the exit code when they cannot be made (an
/// object store that cannot be built), after saying why.
fn settings(config: &Config) -> Result<Settings, i32> {
    Settings::from_config(config).map_err(|err| {
        eprintln!("error: {}", chain(&err));
        exit_code::CONFIG
    })
}

/// An error and its causes, one per line.
fn chain(err: &dyn std::error::Error) -> String {
    let mut out = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        out.push_str(&format!("\n  caused by: {cause}"));
        source = cause.source();
    }
    out
}

async fn dispatch(command: Command) -> i32 {
    match command {
        Command::Schema => {
            print!("{}", config::json_schema());
            exit_code::OK
        }
        Command::Run { config } => match load(&config) {
            Ok(config) => run(&config, Mode::Continuous).await,
            Err(code) => code,
        },
        Command::Snapshot {
            config,
            drop_slot,
            tables,
        } => match load(&config) {
            Ok(config) => {
                let mut recopy = Vec::new();
                for name in &tables {
                    match name.split_once('.') {
                        Some((schema, table)) if !schema.is_empty() && !table.is_empty() => {
                            recopy.push(tidewater_core::TableId::new(schema, table))
                        }
                        _ => {
                            eprintln!("error: --table {name:?} is not schema.table\nhint: write it as the lake names it, e.g. public.orders");
                            return exit_code::CONFIG;
                        }
                    }
                }
                run_with(&config, Mode::SnapshotOnly, recopy, drop_slot).await
            }
            Err(code) => code,
        },
        Command::ReverseEtl {
            config,
            job,
            dry_run,
            full,
        } => match load(&config) {
            Ok(config) => {
                let options = tidewater_reverse::RunOptions { dry_run, full };
                reverse::command(&config, job.as_deref(), options).await
            }
            Err(code) => code,
        },
        Command::Check { config } => match load(&config) {
            Ok(config) => match settings(&config) {
                Ok(settings) => status::check(&settings).await,
                Err(code) => code,
            },
            Err(code) => code,
        },
        Command::Forget {
            config,
            table,
            keys,
            keys_file,
            wait,
        } => match load(&config) {
            Ok(config) => match settings(&config) {
                Ok(settings) => {
                    let options = forget::Options {
                        table,
                        keys,
                        keys_file,
                        wait: std::time::Duration::from_secs(wait),
                    };
                    forget::forget(&settings, &options).await
                }
                Err(code) => code,
            },
            Err(code) => code,
        },
        Command::Verify {
            config,
            tables,
            repair,
            wait,
            memory_mb,
            max_keys,
        } => match load(&config) {
            Ok(config) => match settings(&config) {
                Ok(settings) => {
                    let options = verify::Options {
                        tables,
                        repair,
                        wait: std::time::Duration::from_secs(wait),
                        memory_bytes: memory_mb.max(16) << 20,
                        max_keys,
                    };
                    verify::verify(&settings, &options).await
                }
                Err(code) => code,
            },
            Err(code) => code,
        },
        Command::Status {
            config,
            format,
            table,
            history,
        } => match load(&config) {
            Ok(config) => match settings(&config) {
                Ok(settings) if history => {
                    let table = table.expect("clap requires --table with --history");
                    status::history(&settings, &table, format).await
                }
                Ok(settings) => status::status(&settings, format, table.as_deref()).await,
                Err(code) => code,
            },
            Err(code) => code,
        },
    }
}

/// How long a clean shutdown (flush, commit, ack) may take before the
/// process exits anyway.
const SHUTDOWN_GRACE: std::time::Duration = std::time::Duration::from_secs(60);

/// Runs the pipeline, retrying transient errors with backoff, until shutdown,
/// a completed snapshot (in snapshot mode) or an error that cannot be retried.
async fn run(config: &Config, mode: Mode) -> i32 {
    run_with(config, mode, Vec::new(), false).await
}

/// [`run`], copying the tables of `recopy` again first, and dropping the
/// slot at the end when asked (`snapshot --drop-slot`). The pipeline's lease
/// is taken before anything else and held until the end.
async fn run_with(
    config: &Config,
    mode: Mode,
    recopy: Vec<tidewater_core::TableId>,
    drop_slot: bool,
) -> i32 {
    let mut settings = match settings(config) {
        Ok(settings) => settings,
        Err(code) => return code,
    };
    if !recopy.is_empty() {
        // Beside a running `run`: it copies the tables itself.
        if let Ok(Some(holder)) = lease::probe(&settings).await {
            return ask_running(&settings, &recopy, &holder).await;
        }
    }
    settings.recopy = recopy;
    settings.lineage = lineage::Lineage::start(config, &settings.metrics);
    if mode == Mode::SnapshotOnly {
        // A one-off load: `run` merges the current state as it starts (a
        // merge here would only slow the copy, or be cut short at its end).
        settings.maintenance.current_state = None;
    }
    let lease = match lease::take(&settings).await {
        Ok(lease) => lease,
        Err(code) => return code,
    };
    let mut code = run_holding(config, &settings, mode).await;
    if code == exit_code::OK && drop_slot {
        code = status::drop_slot(&settings).await;
    }
    lease.release().await;
    code
}

/// `snapshot --table` while `run` holds the lease: the request is recorded
/// for it (it copies the tables beside the stream).
async fn ask_running(
    settings: &Settings,
    tables: &[tidewater_core::TableId],
    holder: &tidewater_core::Holder,
) -> i32 {
    let filter = settings.source.filter();
    if let Some(table) = tables.iter().find(|t| !filter.matches(t)) {
        eprintln!(
            "error: {table} is not among this pipeline's tables (source.tables)
hint: name a table the pipeline replicates"
        );
        return exit_code::CONFIG;
    }
    match pipeline::ask_copies(settings, tables).await {
        Ok(()) => {
            let names: Vec<String> = tables.iter().map(|t| t.to_string()).collect();
            println!(
                "pipeline {} is running ({holder}): asked it to copy {} again beside the stream; its log says \"copying a table while streaming\" when it starts, and shows the table's snapshot progress until it is done",
                settings.pipeline,
                names.join(", ")
            );
            exit_code::OK
        }
        Err(err) => {
            eprintln!("error: {}", chain(&err));
            action(err.class()).exit_code
        }
    }
}

/// [`run_with`] once the lease is held.
async fn run_holding(config: &Config, settings: &Settings, mode: Mode) -> i32 {
    if let Some(listen) = config.metrics.as_ref().map(|m| m.listen.clone()) {
        if let Err(err) = metrics::serve(listen.clone(), settings.metrics.clone()).await {
            eprintln!(
                "error: cannot listen on metrics.listen {listen}: {err}\nhint: pick a free port"
            );
            return exit_code::CONFIG;
        }
    }
    settings.metrics.phase("starting", "");
    let (shutdown_tx, shutdown_rx) = watch::channel(false);
    for table in config::echo_exclusions(config) {
        info!(table = %table, "not capturing this table: a reverse-ETL job writes it");
    }
    if mode == Mode::Continuous {
        reverse::spawn_schedules(config, settings, shutdown_rx.clone());
    }
    let mut signals = StopSignals::new();
    tokio::spawn(async move {
        signals.recv().await;
        info!("signal received, stopping: flushing, committing and acknowledging (a second signal exits at once)");
        let _ = shutdown_tx.send(true);
        // A second signal, or a shutdown that outlasts its grace period,
        // ends the process at once. That is safe: nothing is acknowledged
        // that is not durable, and the next start resumes from the marks.
        tokio::select! {
            _ = signals.recv() => {
                warn!("second signal: exiting without flushing; the next start resumes exactly once");
            }
            _ = tokio::time::sleep(SHUTDOWN_GRACE) => {
                warn!(grace_seconds = SHUTDOWN_GRACE.as_secs(), "shutdown did not finish in time: exiting without flushing; the next start resumes exactly once");
            }
        }
        std::process::exit(exit_code::FAILED);
    });
    settings.lineage.run_started(mode == Mode::SnapshotOnly);
    let (code, error) = run_until_done(settings, mode, shutdown_rx).await;
    settings.lineage.run_ended(error.as_deref());
    settings.lineage.flush().await;
    code
}

/// The pipeline, restarted after transient errors, until it ends: the
/// exit code, and the error it ended on (for lineage).
async fn run_until_done(
    settings: &Settings,
    mode: Mode,
    shutdown_rx: watch::Receiver<bool>,
) -> (i32, Option<String>) {
    let mut retries = RetryStreak::default();
    loop {
        match pipeline::run(settings, mode, shutdown_rx.clone()).await {
            Ok(Outcome::Shutdown) if mode == Mode::SnapshotOnly => {
                eprintln!(
                    "error: stopped before the snapshot completed\nhint: run `tidewater snapshot` (or `tidewater run`) again; it resumes after what the lake holds (the last committed chunk or key of each table), and says so where it must start over"
                );
                return (
                    exit_code::FAILED,
                    Some("stopped before the snapshot completed".into()),
                );
            }
            Ok(Outcome::Shutdown) => {
                info!("stopped cleanly");
                return (exit_code::OK, None);
            }
            Ok(Outcome::SnapshotComplete) => {
                match &settings.source {
                    SourceSettings::Postgres(pg) => info!(slot = %pg.slot, "snapshot complete; the replication slot is kept so `tidewater run` continues from it (it retains WAL until then)"),
                    SourceSettings::Mysql(_) => info!("snapshot complete; `tidewater run` continues from its binlog position while the server keeps that binlog"),
                }
                return (exit_code::OK, None);
            }
            Ok(Outcome::AlreadySnapshotted) => {
                info!("every table is already snapshotted; nothing to do");
                return (exit_code::OK, None);
            }
            Err(err) => {
                // Read before the phase below ends the run's health.
                let healthy_for = settings.metrics.healthy_for();
                let class = err.class();
                let action = action(class);
                settings.metrics.error(&format!("{class:?}").to_lowercase());
                settings.metrics.phase(
                    if action.retry { "retrying" } else { "stopped" },
                    chain(&err),
                );
                if let PipelineError::Preflight(_) = err {
                    eprintln!("error: {}", chain(&err));
                    return (exit_code::PREFLIGHT, Some(chain(&err)));
                }
                if action.retry && !*shutdown_rx.borrow() {
                    let (attempt, wait) = retries.next_wait(healthy_for);
                    warn!(error = %chain(&err), attempt, wait_ms = wait.as_millis() as u64, "{}", action.hint);
                    let mut shutdown = shutdown_rx.clone();
                    tokio::select! {
                        _ = tokio::time::sleep(wait) => continue,
                        _ = shutdown.changed() => return (exit_code::OK, None),
                    }
                }
                error!(class = ?class, "{}", action.hint);
                eprintln!("error: {}\nhint: {}", chain(&err), action.hint);
                return (action.exit_code, Some(chain(&err)));
            }
        }
    }
}

/// SIGTERM and SIGINT, listened to from the moment it is made: a second
/// signal that arrives while the first is being handled waits in the
/// listener for the next [`StopSignals::recv`] instead of being lost.
struct StopSignals {
    term: Option<tokio::signal::unix::Signal>,
    int: Option<tokio::signal::unix::Signal>,
}

impl StopSignals {
    fn new() -> StopSignals {
        use tokio::signal::unix::{signal, SignalKind};
        StopSignals {
            term: signal(SignalKind::terminate()).ok(),
            int: signal(SignalKind::interrupt()).ok(),
        }
    }

    /// The next SIGTERM or SIGINT (never, where neither could be listened to).
    async fn recv(&mut self) {
        async fn next(signal: &mut Option<tokio::signal::unix::Signal>) {
            match signal {
                Some(signal) => {
                    signal.recv().await;
                }
                None => std::future::pending().await,
            }
        }
        let StopSignals { term, int } = self;
        tokio::select! {
            _ = next(term) => {}
            _ = next(int) => {}
        }
    }
}

//! Reverse ETL from the binary's side: `tidewater reverse-etl`, the
//! schedule under `tidewater run`, and keeping a job's target table out of
//! capture when it lives in the source database (no echo loop).
//!
//! ```text
//!  tidewater reverse-etl ── each job (or --job) ─▶ run_job ─▶ report line on stdout
//!  tidewater run ─┬─ pipeline (streaming)
//!                 └─ scheduler: per job, sleep until due (every / cron, UTC)
//!                      ─▶ run_job ─▶ log + metrics; errors wait for the next turn
//! ```

use std::time::Duration;

use tidewater_core::Classified;
use tidewater_lake::{IcebergSink, LakeSink, LakeStore};
use tidewater_reverse::{run_job, Lake, Report, RunOptions};
use tokio::sync::watch;
use tracing::{error, info, warn};

use crate::config::{Config, ReverseEtlConfig, Schedule};
use crate::pipeline::Settings;
use crate::policy::exit_code;

/// `tidewater reverse-etl`: runs each job (or the one named) once.
pub async fn command(config: &Config, job: Option<&str>, options: RunOptions) -> i32 {
    let jobs: Vec<&ReverseEtlConfig> = config
        .reverse_etl
        .iter()
        .filter(|j| job.is_none_or(|name| j.name == name))
        .collect();
    if jobs.is_empty() {
        match job {
            Some(name) => eprintln!(
                "error: no [[reverse_etl]] job is named {name:?}\nhint: jobs in this config: {}",
                names(config)
            ),
            None => eprintln!(
                "error: the config has no [[reverse_etl]] job\nhint: add one (README: Reverse ETL)"
            ),
        }
        return exit_code::CONFIG;
    }
    let settings = match Settings::from_config(config) {
        Ok(settings) => settings,
        Err(err) => {
            eprintln!("error: {err}");
            return exit_code::CONFIG;
        }
    };
    let mut sink = open_lake(
        &settings.lake,
        &settings.pipeline,
        settings.iceberg.as_ref(),
    );
    let state_dir = config.pipeline.state_dir();
    let lineage = crate::lineage::Lineage::start(config, &settings.metrics);
    let mut code = exit_code::OK;
    for job in jobs {
        let run = lineage.reverse_etl(&job.name, job.target_url.expose(), &job.target_table);
        match run_job(&job.spec(), &mut sink, &state_dir, options, None).await {
            Ok(report) => {
                run.ended(Ok(&report));
                println!("{}", describe(&job.name, &job.target_table, &report));
            }
            Err(err) => {
                run.ended(Err(&crate::chain(&err)));
                eprintln!("error: job {}: {}", job.name, crate::chain(&err));
                code = exit_code::FAILED;
            }
        }
    }
    lineage.flush().await;
    code
}

/// The pipeline's lake as reverse ETL reads it: Iceberg tables through the
/// catalog when the sink's format is Iceberg, else Delta tables.
pub(crate) fn open_lake(
    lake: &LakeStore,
    pipeline: &str,
    iceberg: Option<&tidewater_lake::Catalog>,
) -> Lake {
    match iceberg {
        Some(catalog) => IcebergSink::new(lake.clone(), pipeline, catalog.clone()).into(),
        None => LakeSink::new(lake.clone(), pipeline).into(),
    }
}

fn names(config: &Config) -> String {
    let names: Vec<&str> = config.reverse_etl.iter().map(|j| j.name.as_str()).collect();
    if names.is_empty() {
        "none".into()
    } else {
        names.join(", ")
    }
}

/// One line per job run, for people and scripts alike.
pub fn describe(name: &str, table: &str, r: &Report) -> String {
    let seconds = r.millis as f64 / 1000.0;
    if r.dry_run {
        format!(
            "{name}: dry run: {} result rows; would add {}, change {}, delete {}; {} unchanged{}",
            r.result_rows,
            r.added,
            r.changed,
            r.deleted,
            r.unchanged,
            if r.created {
                format!("; would create {table}")
            } else {
                String::new()
            }
        )
    } else {
        format!(
            "{name}: {} result rows; added {}, changed {}, deleted {}; {} unchanged; {} transactions, {} retries, {seconds:.2} s{}{}",
            r.result_rows,
            r.added,
            r.changed,
            r.deleted,
            r.unchanged,
            r.transactions,
            r.retries,
            if r.created {
                format!("; created {table}")
            } else {
                String::new()
            },
            if r.interrupted {
                "; interrupted (the next run continues)"
            } else {
                ""
            }
        )
    }
}

/// Under `tidewater run`: every scheduled job in its own task, until
/// shutdown. A job that fails is logged and tried again at its next turn.
pub fn spawn_schedules(config: &Config, settings: &Settings, shutdown: watch::Receiver<bool>) {
    for job in &config.reverse_etl {
        let Some(schedule) = job.schedule() else {
            continue;
        };
        let spec = job.spec();
        let table = job.target_table.clone();
        let lake = settings.lake.clone();
        let iceberg = settings.iceberg.clone();
        let pipeline = settings.pipeline.clone();
        let state_dir = config.pipeline.state_dir();
        let metrics = settings.metrics.clone();
        let lineage = settings.lineage.clone();
        let target_url = job.target_url.expose().to_string();
        let mut shutdown = shutdown.clone();
        tokio::spawn(async move {
            loop {
                let wait = until_next(&schedule);
                tokio::select! {
                    _ = tokio::time::sleep(wait) => {}
                    _ = shutdown.changed() => return,
                }
                if *shutdown.borrow() {
                    return;
                }
                let mut sink = open_lake(&lake, &pipeline, iceberg.as_ref());
                let options = RunOptions::default();
                let run = lineage.reverse_etl(&spec.name, &target_url, &table);
                match run_job(
                    &spec,
                    &mut sink,
                    &state_dir,
                    options,
                    Some(shutdown.clone()),
                )
                .await
                {
                    Ok(report) => {
                        run.ended(Ok(&report));
                        metrics.reverse_etl(&spec.name, &report, true);
                        info!(job = %spec.name, added = report.added, changed = report.changed, deleted = report.deleted, unchanged = report.unchanged, millis = report.millis, "{}", describe(&spec.name, &table, &report));
                    }
                    Err(err) => {
                        run.ended(Err(&crate::chain(&err)));
                        metrics.reverse_etl(&spec.name, &Report::default(), false);
                        let class = err.class();
                        error!(job = %spec.name, class = ?class, error = %crate::chain(&err), "reverse-ETL job failed; it runs again at its next turn");
                    }
                }
            }
        });
    }
}

/// How long until the schedule is due next.
fn until_next(schedule: &Schedule) -> Duration {
    match schedule {
        Schedule::Every(every) => *every,
        Schedule::Cron(cron) => {
            let now = chrono::Utc::now();
            match cron.find_next_occurrence(&now, false) {
                Ok(next) => (next - now).to_std().unwrap_or(Duration::from_secs(1)),
                Err(err) => {
                    warn!(error = %err, "the cron expression has no next time; checking again in an hour");
                    Duration::from_secs(3600)
                }
            }
        }
    }
}

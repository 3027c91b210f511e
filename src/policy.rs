//! The one table that maps an error class to what the daemon does and what the
//! operator is told, plus the retry backoff.

use std::time::Duration;

use tidewater_core::ErrorClass;

/// Process exit codes (documented in the README).
pub mod exit_code {
    /// Success, or a clean shutdown on SIGTERM/SIGINT.
    pub const OK: i32 = 0;
    /// The pipeline stopped on an error it cannot retry.
    pub const FAILED: i32 = 1;
    /// The config file or the command line is invalid.
    pub const CONFIG: i32 = 2;
    /// Preflight found problems with the source server (see `tidewater check`).
    pub const PREFLIGHT: i32 = 3;
}

/// What to do about an error of a class.
pub struct Action {
    pub retry: bool,
    pub exit_code: i32,
    pub hint: &'static str,
}

pub fn action(class: ErrorClass) -> Action {
    match class {
        ErrorClass::Transient => Action {
            retry: true,
            exit_code: exit_code::FAILED,
            hint: "retrying from the last durable position",
        },
        ErrorClass::Config => Action {
            retry: false,
            exit_code: exit_code::CONFIG,
            hint: "fix the configuration or the server setting named above and start again",
        },
        ErrorClass::Definite => Action {
            retry: false,
            exit_code: exit_code::FAILED,
            hint: "a table cannot be replicated as it is; the error names it and the fix",
        },
        _ => Action {
            retry: false,
            exit_code: exit_code::FAILED,
            hint: "this is a bug in tidewater: please report it with the log",
        },
    }
}

/// Backoff before retry `attempt` (from 0): exponential from 1 s, capped at
/// 30 s, with up to 25% jitter so many daemons do not reconnect in step.
pub fn backoff(attempt: u32) -> Duration {
    let base_ms = 1000u64.saturating_mul(1 << attempt.min(5)).min(30_000);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos() as u64)
        .unwrap_or(0);
    Duration::from_millis(base_ms + nanos % (base_ms / 4 + 1))
}

/// A run that made progress (streamed or snapshotted, committing or
/// acknowledging) for this long ends a streak of failures: the next outage
/// is retried after 1 s again, not after the 30 s the streak had reached.
/// Long against the time a run needs to fail again when something stays
/// broken (connect, preflight, the first commit: seconds), so a pipeline
/// that fails soon after every start still backs off to the cap; short
/// against a daemon's life, so every new outage of a healthy daemon starts
/// over.
pub const HEALTHY_RESETS_BACKOFF: Duration = Duration::from_secs(60);

/// The retries of one daemon's life: each failure waits longer than the
/// last, until a run stays healthy for [`HEALTHY_RESETS_BACKOFF`].
#[derive(Debug, Default)]
pub struct RetryStreak {
    attempt: u32,
}

impl RetryStreak {
    /// The attempt number and the wait before retrying a run that failed
    /// after making progress for `healthy_for` (zero when it failed during
    /// start-up).
    pub fn next_wait(&mut self, healthy_for: Duration) -> (u32, Duration) {
        if healthy_for >= HEALTHY_RESETS_BACKOFF {
            self.attempt = 0;
        }
        let attempt = self.attempt;
        self.attempt = self.attempt.saturating_add(1);
        (attempt, backoff(attempt))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_healthy_period_resets_the_backoff() {
        let mut retries = RetryStreak::default();
        // Failures soon after each start: the wait grows to the cap.
        let waits: Vec<(u32, Duration)> = (0..7)
            .map(|_| retries.next_wait(Duration::from_secs(5)))
            .collect();
        assert_eq!(
            waits.iter().map(|w| w.0).collect::<Vec<_>>(),
            [0, 1, 2, 3, 4, 5, 6]
        );
        assert!(waits[0].1 < Duration::from_millis(1251));
        assert!(waits[6].1 >= Duration::from_secs(30));
        // Just short of the healthy period: still at the cap.
        let (attempt, wait) = retries.next_wait(Duration::from_secs(59));
        assert_eq!(attempt, 7);
        assert!(wait >= Duration::from_secs(30));
        // After a minute of progress the next outage waits about 1 s again,
        // and the one after that 2 s.
        let (attempt, wait) = retries.next_wait(HEALTHY_RESETS_BACKOFF);
        assert_eq!(attempt, 0);
        assert!(wait < Duration::from_millis(1251));
        let (attempt, wait) = retries.next_wait(Duration::ZERO);
        assert_eq!(attempt, 1);
        assert!(wait >= Duration::from_secs(2) && wait < Duration::from_millis(2501));
    }

    #[test]
    fn backoff_grows_and_caps() {
        assert!(backoff(0) >= Duration::from_secs(1) && backoff(0) < Duration::from_millis(1251));
        assert!(backoff(3) >= Duration::from_secs(8));
        assert!(backoff(30) <= Duration::from_millis(37_500));
    }
}

//! Who holds a pipeline: the identity a process writes into its lease, and
//! the one question every lease store asks of a lease it finds — is its
//! holder provably gone?
//!
//! A pipeline is run by one process at a time. Before it touches the source
//! a process takes the pipeline's lease in the state store (next to the
//! lake, or in the warehouse) and holds it until it exits; a second process
//! finds it held and is refused, naming the holder. How a lease ends when
//! its holder dies depends on the store (a file lock ends with the process,
//! an advisory lock with its session, an object in S3 by expiry), but on one
//! host a holder whose process is gone can always be replaced at once.

use std::sync::OnceLock;

/// The process holding (or asking for) a pipeline's lease.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Holder {
    /// The host name (`/proc/sys/kernel/hostname`).
    pub host: String,
    pub pid: u32,
    /// When the process took the lease, RFC 3339 UTC.
    pub since: String,
}

impl std::fmt::Display for Holder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "host {}, pid {}, since {}",
            self.host, self.pid, self.since
        )
    }
}

impl Holder {
    /// This process. `since` is fixed at the first call.
    pub fn me() -> Holder {
        static SINCE: OnceLock<String> = OnceLock::new();
        Holder {
            host: host_name(),
            pid: std::process::id(),
            since: SINCE
                .get_or_init(|| {
                    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
                })
                .clone(),
        }
    }

    /// True when this lease's holder is provably not running: it ran on this
    /// host and its pid is this process's own (an earlier incarnation, e.g.
    /// pid 1 in a restarted container), or no process with that pid runs
    /// tidewater (a program of our name, or one whose name says tidewater).
    /// A holder on another host is never provably dead: only the store's
    /// own expiry ends its lease.
    pub fn is_gone(&self) -> bool {
        if self.host != host_name() {
            return false;
        }
        if self.pid == std::process::id() {
            return true;
        }
        let own = std::fs::read_to_string("/proc/self/comm");
        match (
            own,
            std::fs::read_to_string(format!("/proc/{}/comm", self.pid)),
        ) {
            (Ok(own), Ok(theirs)) => own != theirs && !theirs.contains("tidewater"),
            (Ok(_), Err(err)) => err.kind() == std::io::ErrorKind::NotFound,
            // No /proc: nothing can be proved.
            (Err(_), _) => false,
        }
    }
}

/// This host's name; `unknown` where it cannot be read.
pub fn host_name() -> String {
    static NAME: OnceLock<String> = OnceLock::new();
    NAME.get_or_init(|| {
        std::fs::read_to_string("/proc/sys/kernel/hostname")
            .ok()
            .map(|s| s.trim().to_string())
            .filter(|s| !s.is_empty())
            .or_else(|| std::env::var("HOSTNAME").ok().filter(|s| !s.is_empty()))
            .unwrap_or_else(|| "unknown".to_string())
    })
    .clone()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn this_process_is_not_gone_to_another_one_but_its_own_pid_is() {
        let me = Holder::me();
        assert_eq!(me.pid, std::process::id());
        // The same pid as ours is an earlier incarnation: it cannot be us,
        // since we are only now asking.
        assert!(me.is_gone());
        let parent = Holder {
            pid: std::os::unix::process::parent_id(),
            ..me.clone()
        };
        // The parent (cargo's test runner or a shell) runs another program.
        assert!(parent.is_gone());
        let elsewhere = Holder {
            host: format!("{}-other", me.host),
            ..me
        };
        assert!(!elsewhere.is_gone());
    }

    #[test]
    fn a_pid_that_does_not_exist_is_gone() {
        let holder = Holder {
            pid: u32::MAX - 1,
            ..Holder::me()
        };
        assert!(holder.is_gone());
    }
}

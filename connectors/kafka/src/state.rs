//! The pipeline's state in a compacted topic of its own.
//!
//! ```text
//!  state topic (1 partition, cleanup.policy=compact), latest value per key wins
//!   table/<schema>.<table>        mark, position, snapshot state   ─ in the data's transaction
//!   history/<schema>.<table>/<v>  a schema version and its DDL     ─ in the data's transaction
//!   record/<kind>                 phase, stopped tables, plans, …  ─ written on their own
//!
//!  start: init_transactions (fences an older process, aborts its open
//!         transaction) ─▶ read the topic from the beginning to its end,
//!         read_committed ─▶ the map below
//! ```
//!
//! A table's record is produced in the same Kafka transaction as its
//! messages, after they are delivered, so a `read_committed` reader sees
//! both or neither. Pipeline records ([`RecordKind`]) are written at points
//! the start-up logic tolerates a crash around, on a producer of their own
//! (idempotent, not transactional), so they never wait for an open data
//! transaction. The whole topic is read once at start and kept in memory:
//! it holds one record per table and per schema version, never rows.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::producer::{BaseRecord, DefaultProducerContext, Producer, ThreadedProducer};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};
use serde::{Deserialize, Serialize};
use tidewater_core::state::{RecordKind, StateStore, TableState};
use tidewater_core::{Mark, TableId};

use crate::error::{classify, KafkaError};

/// How long reading the state topic at start may take.
const READ_TIMEOUT: Duration = Duration::from_secs(60);
/// How long a pipeline record's write may wait for the brokers.
const WRITE_TIMEOUT: Duration = Duration::from_secs(30);

/// A table's record in the state topic.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct TableRecord {
    pub format: u32,
    pub seq: u64,
    pub ord: u64,
    pub position: String,
    pub snapshot_done: bool,
    pub commits: i64,
    /// Change events written to the table's topic (tombstones not counted).
    pub messages: u64,
    pub topic: String,
    /// When it was committed (RFC 3339, UTC).
    #[serde(default)]
    pub committed_at: String,
}

impl TableRecord {
    pub fn state(&self) -> TableState {
        TableState {
            mark: Mark::new(self.seq, self.ord),
            position: self.position.clone(),
            snapshot_done: self.snapshot_done,
            version: self.commits.max(0) as u64,
            commits: self.commits,
        }
    }
}

pub(crate) fn table_key(table: &TableId) -> String {
    format!("table/{}.{}", table.schema, table.table)
}

pub(crate) fn history_key(table: &TableId, version: u64) -> String {
    format!("history/{}.{}/{version:010}", table.schema, table.table)
}

fn record_key(kind: RecordKind) -> String {
    format!("record/{}", kind.key())
}

struct Shared {
    topic: String,
    client: ClientConfig,
    values: Mutex<BTreeMap<String, String>>,
    records: ThreadedProducer<DefaultProducerContext>,
}

/// The pipeline's records in the state topic (a [`StateStore`]); clones
/// share one map and one producer.
#[derive(Clone)]
pub struct KafkaState {
    shared: Arc<Shared>,
}

impl KafkaState {
    /// Reads `topic` from its beginning to its end (`read_committed`) with
    /// `client` (brokers and security settings).
    pub(crate) async fn load(client: &ClientConfig, topic: &str) -> Result<KafkaState, KafkaError> {
        let values = {
            let client = client.clone();
            let topic = topic.to_string();
            tokio::task::spawn_blocking(move || read_topic(&client, &topic))
                .await
                .map_err(|e| KafkaError::Timeout(format!("reading the state topic: {e}")))??
        };
        let records: ThreadedProducer<DefaultProducerContext> = client
            .clone()
            .set("enable.idempotence", "true")
            .set("acks", "all")
            .set("linger.ms", "0")
            .create()
            .map_err(KafkaError::broker("creating the state producer"))?;
        Ok(KafkaState {
            shared: Arc::new(Shared {
                topic: topic.to_string(),
                client: client.clone(),
                values: Mutex::new(values),
                records,
            }),
        })
    }

    /// The state of the pipeline `settings` names, read beside a running
    /// process (nothing is fenced or created).
    pub async fn open(settings: &crate::KafkaSettings) -> Result<KafkaState, KafkaError> {
        KafkaState::load(&settings.client(), &settings.state_topic).await
    }

    pub fn topic(&self) -> &str {
        &self.shared.topic
    }

    fn values(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, String>> {
        match self.shared.values.lock() {
            Ok(guard) => guard,
            Err(poisoned) => poisoned.into_inner(),
        }
    }

    pub(crate) fn value(&self, key: &str) -> Option<String> {
        self.values().get(key).cloned()
    }

    /// Records what a committed transaction wrote.
    pub(crate) fn remember(&self, key: String, value: Option<String>) {
        let mut values = self.values();
        match value {
            Some(v) => values.insert(key, v),
            None => values.remove(&key),
        };
    }

    /// Every table with a record, and the record.
    pub fn tables(&self) -> Result<Vec<(TableId, TableRecord)>, KafkaError> {
        let values = self.values();
        let mut out = Vec::new();
        for (key, text) in values.range("table/".to_string()..) {
            let Some(name) = key.strip_prefix("table/") else {
                break;
            };
            let Some((schema, table)) = name.split_once('.') else {
                continue;
            };
            out.push((TableId::new(schema, table), self.decode_table(key, text)?));
        }
        Ok(out)
    }

    pub(crate) fn decode_table(&self, key: &str, text: &str) -> Result<TableRecord, KafkaError> {
        serde_json::from_str(text).map_err(|e| KafkaError::Corrupt {
            topic: self.shared.topic.clone(),
            key: key.to_string(),
            problem: e.to_string(),
            fix: "restore the topic from a backup, or remove the pipeline's state topic and \
                  start again with a fresh snapshot (consumers then see every row again as `r`)"
                .into(),
        })
    }

    /// The table's record, if it has one.
    pub fn table(&self, table: &TableId) -> Result<Option<TableRecord>, KafkaError> {
        let key = table_key(table);
        match self.value(&key) {
            Some(text) => Ok(Some(self.decode_table(&key, &text)?)),
            None => Ok(None),
        }
    }

    /// The schema history of `table`: (version, record text) in order.
    pub fn history(&self, table: &TableId) -> Vec<(String, String)> {
        let prefix = format!("history/{}.{}/", table.schema, table.table);
        self.values()
            .range(prefix.clone()..)
            .take_while(|(k, _)| k.starts_with(&prefix))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect()
    }

    /// Writes `key` on its own (a tombstone for None) and waits until the
    /// brokers have it.
    pub(crate) async fn write_alone(
        &self,
        key: String,
        value: Option<String>,
    ) -> Result<(), KafkaError> {
        let shared = self.shared.clone();
        let (k, v) = (key.clone(), value.clone());
        tokio::task::spawn_blocking(move || -> Result<(), KafkaError> {
            let mut record: BaseRecord<'_, str, str> = BaseRecord::to(&shared.topic).key(&k);
            if let Some(v) = v.as_deref() {
                record = record.payload(v);
            }
            shared
                .records
                .send(record)
                .map_err(|(e, _)| classify(format!("writing {k} to the state topic"), e))?;
            shared
                .records
                .flush(WRITE_TIMEOUT)
                .map_err(|e| classify(format!("writing {k} to the state topic"), e))?;
            Ok(())
        })
        .await
        .map_err(|e| KafkaError::Timeout(format!("writing {key} to the state topic: {e}")))??;
        self.remember(key, value);
        Ok(())
    }
}

/// A reader's context that does not log reaching the end of a partition
/// as an error (it is how the reader knows it is done).
struct QuietEof;

impl rdkafka::ClientContext for QuietEof {
    fn error(&self, error: rdkafka::error::KafkaError, reason: &str) {
        if !matches!(error, rdkafka::error::KafkaError::PartitionEOF(_)) {
            tracing::warn!(error = %error, reason, "state topic reader");
        }
    }
}

impl rdkafka::consumer::ConsumerContext for QuietEof {}

/// Every key's latest value in `topic`, read from its beginning to its end
/// with `read_committed`.
fn read_topic(client: &ClientConfig, topic: &str) -> Result<BTreeMap<String, String>, KafkaError> {
    let consumer: BaseConsumer<QuietEof> = client
        .clone()
        .set("group.id", format!("tidewater-state-reader-{topic}"))
        .set("enable.auto.commit", "false")
        .set("enable.partition.eof", "true")
        .set("isolation.level", "read_committed")
        .set("auto.offset.reset", "earliest")
        .create_with_context(QuietEof)
        .map_err(KafkaError::broker("creating the state reader"))?;
    let mut partitions = TopicPartitionList::new();
    partitions
        .add_partition_offset(topic, 0, Offset::Beginning)
        .map_err(KafkaError::broker("reading the state topic"))?;
    consumer
        .assign(&partitions)
        .map_err(KafkaError::broker("reading the state topic"))?;
    let (_, high) =
        consumer
            .fetch_watermarks(topic, 0, READ_TIMEOUT)
            .map_err(KafkaError::broker(format!(
                "reading the end of state topic {topic}"
            )))?;
    let mut values = BTreeMap::new();
    if high <= 0 {
        return Ok(values);
    }
    let started = Instant::now();
    loop {
        if started.elapsed() > READ_TIMEOUT {
            return Err(KafkaError::Timeout(format!(
                "reading state topic {topic} took longer than {}s",
                READ_TIMEOUT.as_secs()
            )));
        }
        match consumer.poll(Duration::from_millis(500)) {
            None => continue,
            Some(Err(rdkafka::error::KafkaError::PartitionEOF(_))) => break,
            Some(Err(e)) => return Err(classify(format!("reading state topic {topic}"), e)),
            Some(Ok(message)) => {
                let Some(key) = message
                    .key()
                    .map(|k| String::from_utf8_lossy(k).into_owned())
                else {
                    continue;
                };
                match message.payload() {
                    Some(value) => {
                        values.insert(key, String::from_utf8_lossy(value).into_owned());
                    }
                    None => {
                        values.remove(&key);
                    }
                }
                if message.offset() + 1 >= high {
                    break;
                }
            }
        }
    }
    Ok(values)
}

impl StateStore for KafkaState {
    type Error = KafkaError;

    async fn get(&self, kind: RecordKind) -> Result<Option<String>, KafkaError> {
        let key = record_key(kind);
        if kind == RecordKind::CopyRequests {
            // Written by `tidewater snapshot --table` beside the running
            // process: read from the topic, not from what start-up read.
            let client = self.shared.client.clone();
            let topic = self.shared.topic.clone();
            let values = tokio::task::spawn_blocking(move || read_topic(&client, &topic))
                .await
                .map_err(|e| KafkaError::Timeout(format!("reading the state topic: {e}")))??;
            let value = values.get(&key).cloned();
            self.remember(key, value.clone());
            return Ok(value);
        }
        Ok(self.value(&key))
    }

    async fn put(&self, kind: RecordKind, text: &str) -> Result<(), KafkaError> {
        self.write_alone(record_key(kind), Some(text.to_string()))
            .await
    }

    async fn delete(&self, kind: RecordKind) -> Result<(), KafkaError> {
        if self.value(&record_key(kind)).is_none() {
            return Ok(());
        }
        self.write_alone(record_key(kind), None).await
    }

    fn corrupt(&self, kind: RecordKind, problem: String) -> KafkaError {
        KafkaError::Corrupt {
            topic: self.shared.topic.clone(),
            key: record_key(kind),
            problem,
            fix: kind.fix().to_string(),
        }
    }
}

/// Counters the sink keeps for the metrics endpoint.
#[derive(Debug, Default)]
pub struct KafkaStats {
    pub messages: std::sync::atomic::AtomicU64,
    pub bytes: std::sync::atomic::AtomicU64,
    pub delivery_errors: std::sync::atomic::AtomicU64,
    /// Messages queued in the producer, not yet acknowledged by a broker.
    pub queued: std::sync::atomic::AtomicU64,
    /// Messages per topic, committed.
    pub per_topic: Mutex<std::collections::BTreeMap<String, u64>>,
}

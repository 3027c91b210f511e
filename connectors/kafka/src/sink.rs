//! The Kafka sink: Debezium change events, one topic per table, committed
//! with each table's mark.
//!
//! ```text
//!  write(batch) ──▶ [begin txn] ─▶ produce key/value (+ tombstone per delete),
//!                                   headers tidewater.position/seq/ord
//!  commit(pos)  ──▶ flush (every message acknowledged)
//!                   ─▶ produce table/<t> records (mark, position) to the state topic
//!                   ─▶ commit txn                        exactly-once
//!                   ─▶ (or: flush again)                 at-least-once
//! ```
//!
//! **Exactly once** (`delivery = "exactly-once"`, the default): a commit is
//! one Kafka transaction holding the messages and the marks, so a crash
//! anywhere before the commit returns leaves nothing a `read_committed`
//! consumer sees, and the restart resumes after the last committed mark.
//! The state records are produced only after every message was
//! acknowledged, so even a broker that does not hide aborted records
//! (which some Kafka-compatible brokers do not) never shows a mark whose
//! messages are missing: there, an aborted commit shows up as duplicates,
//! never as loss.
//!
//! **At least once** (`delivery = "at-least-once"`, for brokers without
//! transactions): messages are flushed, then the marks are written. A crash
//! between the two repeats the changes since the last mark; each message
//! carries its mark in headers so a consumer can drop what it has seen.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arrow_array::cast::AsArray;
use arrow_array::types::{TimestampMicrosecondType, UInt64Type};
use arrow_array::Array;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{BaseRecord, DeliveryResult, Producer, ProducerContext, ThreadedProducer};
use rdkafka::{ClientConfig, ClientContext};
use tidewater_core::state::TableState;
use tidewater_core::TableSchema;
use tidewater_core::{ChangeBatch, ColumnType, Datum, Mark, Sink, SnapshotPhase, TableId};
use tracing::{debug, info, warn};

use crate::envelope::{source_columns, Format, RowSource, SourceInfo, TableEncoder, UNAVAILABLE};
use crate::error::{classify, KafkaError};
use crate::state::{history_key, table_key, KafkaState, KafkaStats, TableRecord};

/// How a commit makes messages durable.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Delivery {
    ExactlyOnce,
    AtLeastOnce,
}

/// A Kafka sink's settings, resolved from the config.
#[derive(Clone)]
pub struct KafkaSettings {
    pub pipeline: String,
    /// `bootstrap.servers`.
    pub brokers: String,
    pub topic_prefix: String,
    pub state_topic: String,
    pub transactional_id: String,
    pub format: Format,
    pub delivery: Delivery,
    /// librdkafka properties from `sink.properties` (TLS, SASL, client id),
    /// validated by the config.
    pub properties: Vec<(String, String)>,
    pub transaction_timeout_ms: u64,
    pub linger_ms: u64,
    pub batch_bytes: u64,
    pub max_queued_bytes: u64,
    pub compression: String,
    pub max_message_bytes: u64,
    /// Partitions and replication of the topics tidewater creates (-1: the
    /// brokers' default).
    pub topic_partitions: i32,
    pub replication_factor: i32,
    pub source: SourceInfo,
    /// Counters for the metrics endpoint, shared across the pipeline's
    /// retries (each retry connects a new sink).
    pub stats: Arc<KafkaStats>,
}

impl KafkaSettings {
    /// The client settings every connection shares: brokers and security.
    pub fn client(&self) -> ClientConfig {
        let mut client = ClientConfig::new();
        client.set("bootstrap.servers", &self.brokers);
        for (key, value) in &self.properties {
            client.set(key, value);
        }
        client
    }

    /// The topic of `table`: `<prefix>.<schema>.<table>`, characters Kafka
    /// does not allow replaced by `_` (as Debezium does).
    pub fn topic_of(&self, table: &TableId) -> String {
        let raw = format!("{}.{}.{}", self.topic_prefix, table.schema, table.table);
        raw.chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-') {
                    c
                } else {
                    '_'
                }
            })
            .collect()
    }
}

/// The first delivery failure since the last commit, and the counters.
struct Delivered {
    failure: Mutex<Option<(Option<String>, rdkafka::error::KafkaError)>>,
    stats: Arc<KafkaStats>,
}

impl ClientContext for Delivered {}

impl ProducerContext for Delivered {
    type DeliveryOpaque = ();

    fn delivery(&self, result: &DeliveryResult<'_>, _: ()) {
        self.stats.queued.fetch_sub(1, Ordering::Relaxed);
        if let Err((error, message)) = result {
            use rdkafka::message::Message;
            self.stats.delivery_errors.fetch_add(1, Ordering::Relaxed);
            let mut failure = match self.failure.lock() {
                Ok(f) => f,
                Err(p) => p.into_inner(),
            };
            if failure.is_none() {
                *failure = Some((Some(message.topic().to_string()), error.clone()));
            }
        }
    }
}

struct Known {
    topic: String,
    encoder: Option<TableEncoder>,
    record: Option<TableRecord>,
    /// Mark and events of what was written since the last commit.
    pending: Option<(Mark, u64)>,
    /// Schema versions already in the history.
    recorded: HashSet<u64>,
    ddl: Vec<(u64, String)>,
}

pub struct KafkaSink {
    settings: KafkaSettings,
    producer: Arc<ThreadedProducer<Delivered>>,
    state: KafkaState,
    tables: HashMap<TableId, Known>,
    phases: HashMap<TableId, (SnapshotPhase, Mark)>,
    created: HashSet<String>,
    in_transaction: bool,
    staged_bytes: u64,
    stats: Arc<KafkaStats>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    match m.lock() {
        Ok(g) => g,
        Err(p) => p.into_inner(),
    }
}

impl KafkaSink {
    /// Connects: creates the state topic if it is missing, takes the
    /// transactional id (fencing any older process that had it and aborting
    /// its open transaction), then reads the state topic.
    pub async fn connect(settings: KafkaSettings) -> Result<KafkaSink, KafkaError> {
        let client = settings.client();
        create_topics(
            &client,
            &[(settings.state_topic.clone(), 1, true)],
            settings.replication_factor,
            false,
        )
        .await?;
        let stats = settings.stats.clone();
        let mut config = client.clone();
        config
            .set("enable.idempotence", "true")
            .set("acks", "all")
            .set("partitioner", "murmur2_random")
            .set("linger.ms", settings.linger_ms.to_string())
            .set("batch.size", settings.batch_bytes.to_string())
            .set(
                "queue.buffering.max.kbytes",
                (settings.max_queued_bytes / 1024).max(1).to_string(),
            )
            .set("queue.buffering.max.messages", "1000000")
            .set("compression.type", &settings.compression)
            .set("message.max.bytes", settings.max_message_bytes.to_string());
        if settings.delivery == Delivery::ExactlyOnce {
            config
                .set("transactional.id", &settings.transactional_id)
                .set(
                    "transaction.timeout.ms",
                    settings.transaction_timeout_ms.to_string(),
                );
        }
        let producer: ThreadedProducer<Delivered> = config
            .create_with_context(Delivered {
                failure: Mutex::new(None),
                stats: stats.clone(),
            })
            .map_err(KafkaError::broker("creating the producer"))?;
        let producer = Arc::new(producer);
        if settings.delivery == Delivery::ExactlyOnce {
            let p = producer.clone();
            let timeout = Duration::from_millis(settings.transaction_timeout_ms.max(30_000));
            tokio::task::spawn_blocking(move || p.init_transactions(timeout))
                .await
                .map_err(|e| KafkaError::Timeout(format!("taking the transactional id: {e}")))?
                .map_err(|e| classify("taking the transactional id".into(), e))?;
        }
        let state = KafkaState::load(&client, &settings.state_topic).await?;
        info!(
            brokers = %settings.brokers,
            state_topic = %settings.state_topic,
            tables = state.tables()?.len(),
            "connected to the brokers"
        );
        Ok(KafkaSink {
            settings,
            producer,
            state,
            tables: HashMap::new(),
            phases: HashMap::new(),
            created: HashSet::new(),
            in_transaction: false,
            staged_bytes: 0,
            stats,
        })
    }

    pub fn state(&self) -> KafkaState {
        self.state.clone()
    }

    pub fn stats(&self) -> Arc<KafkaStats> {
        self.stats.clone()
    }

    pub fn existing_tables(&self) -> Result<Vec<TableId>, KafkaError> {
        Ok(self.state.tables()?.into_iter().map(|(t, _)| t).collect())
    }

    pub fn table_state(&self, table: &TableId) -> Result<Option<TableState>, KafkaError> {
        if let Some(known) = self.tables.get(table) {
            return Ok(known.record.as_ref().map(TableRecord::state));
        }
        Ok(self.state.table(table)?.map(|r| r.state()))
    }

    /// Forgets `table`'s mark so it is copied again (its topic keeps what it
    /// holds: consumers see the copy as `r` events, as after a Debezium
    /// incremental snapshot).
    pub async fn remove_table(&mut self, table: &TableId) -> Result<(), KafkaError> {
        self.tables.remove(table);
        if self.state.value(&table_key(table)).is_some() {
            self.state.write_alone(table_key(table), None).await?;
        }
        Ok(())
    }

    async fn known(&mut self, table: &TableId) -> Result<&mut Known, KafkaError> {
        if !self.tables.contains_key(table) {
            let record = self.state.table(table)?;
            let recorded = self
                .state
                .history(table)
                .into_iter()
                .filter_map(|(k, _)| k.rsplit('/').next().and_then(|v| v.parse().ok()))
                .collect();
            self.tables.insert(
                table.clone(),
                Known {
                    topic: self.settings.topic_of(table),
                    encoder: None,
                    record,
                    pending: None,
                    recorded,
                    ddl: Vec::new(),
                },
            );
        }
        Ok(self.tables.get_mut(table).expect("inserted above"))
    }

    async fn ensure_topic(&mut self, topic: &str) -> Result<(), KafkaError> {
        if self.created.contains(topic) {
            return Ok(());
        }
        create_topics(
            &self.settings.client(),
            &[(topic.to_string(), self.settings.topic_partitions, false)],
            self.settings.replication_factor,
            false,
        )
        .await?;
        self.created.insert(topic.to_string());
        Ok(())
    }

    async fn begin(&mut self) -> Result<(), KafkaError> {
        if self.in_transaction || self.settings.delivery != Delivery::ExactlyOnce {
            return Ok(());
        }
        self.producer
            .begin_transaction()
            .map_err(|e| classify("beginning a transaction".into(), e))?;
        self.in_transaction = true;
        Ok(())
    }

    /// Sends one message (librdkafka copies key and value), waiting while
    /// the producer's queue is full.
    async fn send(
        &self,
        topic: &str,
        key: Option<&[u8]>,
        value: Option<&[u8]>,
        headers: OwnedHeaders,
        table: &TableId,
    ) -> Result<(), KafkaError> {
        let mut record: BaseRecord<'_, [u8], [u8]> = BaseRecord::to(topic).headers(headers);
        if let Some(key) = key {
            record = record.key(key);
        }
        if let Some(value) = value {
            record = record.payload(value);
        }
        let size = key.map_or(0, <[u8]>::len) + value.map_or(0, <[u8]>::len);
        loop {
            match self.producer.send(record) {
                Ok(()) => {
                    self.stats.queued.fetch_add(1, Ordering::Relaxed);
                    self.stats.messages.fetch_add(1, Ordering::Relaxed);
                    self.stats.bytes.fetch_add(size as u64, Ordering::Relaxed);
                    return Ok(());
                }
                Err((e, back))
                    if e.rdkafka_error_code()
                        == Some(rdkafka::error::RDKafkaErrorCode::QueueFull) =>
                {
                    record = back;
                    tokio::time::sleep(Duration::from_millis(2)).await;
                }
                Err((e, _)) => {
                    use rdkafka::error::RDKafkaErrorCode as Code;
                    return Err(match e.rdkafka_error_code() {
                        Some(Code::MessageSizeTooLarge | Code::InvalidMessageSize) => {
                            KafkaError::Refused {
                                table: table.clone(),
                                doing: format!("producing a {size}-byte message to {topic}"),
                                hint: "raise sink.max_message_bytes and the brokers' \
                                       message.max.bytes (and the topic's max.message.bytes), \
                                       then copy the table again"
                                    .into(),
                                source: Box::new(e),
                            }
                        }
                        _ => classify(format!("producing to {topic}"), e),
                    });
                }
            }
        }
    }

    async fn write_batch(&mut self, batch: ChangeBatch) -> Result<(), KafkaError> {
        let table = batch.table.clone();
        let format = self.settings.format;
        let source = self.settings.source.clone();
        let known = self.known(&table).await?;
        let durable = known.record.as_ref().map(|r| Mark::new(r.seq, r.ord));
        if durable.is_some_and(|d| batch.last <= d) {
            debug!(table = %table, "batch already committed; skipped");
            return Ok(());
        }
        if known
            .encoder
            .as_ref()
            .is_none_or(|e| e.schema.version != batch.schema.version)
        {
            known.encoder = Some(TableEncoder::new(batch.schema.clone(), format, source));
        }
        let topic = known.topic.clone();
        self.ensure_topic(&topic).await?;
        self.begin().await?;
        let rows = batch.batch.num_rows();
        let meta = |name: &str| batch.batch.column_by_name(name).cloned();
        let (Some(ops), Some(seqs), Some(ords), Some(positions), Some(commits)) = (
            meta("_tw_op"),
            meta("_tw_seq"),
            meta("_tw_ord"),
            meta("_tw_position"),
            meta("_tw_commit_ts"),
        ) else {
            return Err(KafkaError::Timeout(format!(
                "a batch of {table} lacks its metadata columns (a bug)"
            )));
        };
        let txids = meta("_tw_txid");
        let ops = ops.as_string::<i32>();
        let seqs = seqs.as_primitive::<UInt64Type>();
        let ords = ords.as_primitive::<UInt64Type>();
        let positions = positions.as_string::<i32>();
        let commits = commits.as_primitive::<TimestampMicrosecondType>();
        let txids = txids.as_ref().map(|t| t.as_string::<i32>());
        let columns = source_columns(&batch.batch, &batch.schema);
        let encoder = self
            .tables
            .get(&table)
            .and_then(|k| k.encoder.as_ref())
            .expect("set above");
        let now_us = chrono::Utc::now().timestamp_micros();
        let mut events = 0u64;
        let mut bytes = 0u64;
        // Reused for every row: librdkafka copies what it is given. The
        // source block is the same for the rows of one transaction.
        let (mut key, mut value) = (Vec::new(), Vec::new());
        type SourceOf = (bool, i64, String, Option<String>);
        let mut source: Option<(SourceOf, Vec<u8>)> = None;
        for row in 0..rows {
            let mark = Mark::new(seqs.value(row), ords.value(row));
            if durable.is_some_and(|d| mark <= d) {
                continue;
            }
            let op = ops.value(row);
            let at = RowSource {
                schema: &table.schema,
                table: &table.table,
                snapshot: if op == "r" { "true" } else { "false" },
                commit_ts_us: commits.value(row),
                position: positions.value(row),
                txid: txids.and_then(|t| (!t.is_null(row)).then(|| t.value(row))),
            };
            let same = source.as_ref().is_some_and(|((snap, ts, pos, txid), _)| {
                *snap == (op == "r")
                    && *ts == at.commit_ts_us
                    && pos == at.position
                    && txid.as_deref() == at.txid
            });
            if !same {
                source = Some((
                    (
                        op == "r",
                        at.commit_ts_us,
                        at.position.to_string(),
                        at.txid.map(str::to_string),
                    ),
                    encoder.source_block(&at),
                ));
            }
            let block = &source.as_ref().expect("set above").1;
            let keyed = op != "t" && encoder.key_into(&mut key, &columns, row);
            encoder.value_into(&mut value, op, &columns, row, block, now_us);
            let (mut seq, mut ord) = ([0u8; 20], [0u8; 20]);
            let headers = OwnedHeaders::new_with_capacity(3)
                .insert(Header {
                    key: "tidewater.position",
                    value: Some(at.position),
                })
                .insert(Header {
                    key: "tidewater.seq",
                    value: Some(digits(&mut seq, mark.seq)),
                })
                .insert(Header {
                    key: "tidewater.ord",
                    value: Some(digits(&mut ord, mark.ord)),
                });
            let key = keyed.then_some(key.as_slice());
            bytes += (value.len() + key.map_or(0, <[u8]>::len)) as u64;
            let tombstone = (op == "d" && key.is_some()).then(|| headers.clone());
            self.send(&topic, key, Some(&value), headers, &table)
                .await?;
            if let Some(headers) = tombstone {
                self.send(&topic, key, None, headers, &table).await?;
            }
            events += 1;
        }
        self.staged_bytes += bytes;
        let known = self.tables.get_mut(&table).expect("known");
        let pending = known.pending.get_or_insert((Mark::ZERO, 0));
        pending.0 = pending.0.max(batch.last);
        pending.1 += events;
        Ok(())
    }

    /// Waits until every message produced so far is acknowledged; the first
    /// delivery failure since the last commit is the error.
    async fn flush(&self) -> Result<(), KafkaError> {
        let producer = self.producer.clone();
        let timeout = Duration::from_millis(self.settings.transaction_timeout_ms.max(30_000));
        tokio::task::spawn_blocking(move || producer.flush(timeout))
            .await
            .map_err(|e| KafkaError::Timeout(format!("flushing: {e}")))?
            .map_err(|e| classify("waiting for the brokers to acknowledge messages".into(), e))?;
        if let Some((topic, error)) = lock(&self.producer.context().failure).take() {
            return Err(classify(
                format!(
                    "delivering a message to {}",
                    topic.as_deref().unwrap_or("a topic")
                ),
                error,
            ));
        }
        Ok(())
    }

    async fn commit_all(
        &mut self,
        position: &str,
        phase: Option<SnapshotPhase>,
    ) -> Result<usize, KafkaError> {
        let mut records: Vec<(TableId, TableRecord)> = Vec::new();
        let mut histories: Vec<(String, String)> = Vec::new();
        let tables: Vec<TableId> = self
            .tables
            .keys()
            .chain(self.phases.keys())
            .cloned()
            .collect::<HashSet<_>>()
            .into_iter()
            .collect();
        for table in tables {
            let known = self.known(&table).await?;
            let pending = known.pending;
            let copy = self.phases.get(&table).copied();
            let known = self.tables.get_mut(&table).expect("known");
            let phase = copy.map(|(p, _)| p).or(phase);
            let phase_changes = match (phase, &known.record) {
                (Some(SnapshotPhase::Done), Some(r)) => !r.snapshot_done,
                (Some(_), None) => true,
                _ => false,
            };
            if pending.is_none() && !phase_changes {
                continue;
            }
            let before = known.record.as_ref();
            let mark = pending
                .map(|(m, _)| m)
                .or(before.map(|r| Mark::new(r.seq, r.ord)))
                .unwrap_or(Mark::ZERO)
                .max(copy.map_or(Mark::ZERO, |(_, floor)| floor));
            let snapshot_done = match phase {
                Some(SnapshotPhase::Done) => true,
                Some(SnapshotPhase::Running) => false,
                None => before.is_none_or(|r| r.snapshot_done),
            };
            records.push((
                table.clone(),
                TableRecord {
                    format: 1,
                    seq: mark.seq,
                    ord: mark.ord,
                    position: position.to_string(),
                    snapshot_done,
                    commits: before.map_or(0, |r| r.commits) + 1,
                    messages: before.map_or(0, |r| r.messages) + pending.map_or(0, |(_, n)| n),
                    topic: known.topic.clone(),
                    committed_at: chrono::Utc::now()
                        .to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
                },
            ));
            if let Some(encoder) = known.encoder.as_ref() {
                let version = encoder.schema.version;
                if pending.is_some() && !known.recorded.contains(&version) {
                    histories.push((
                        history_key(&table, version),
                        history_record(&encoder.schema, &known.ddl, position),
                    ));
                }
            }
        }
        if records.is_empty() {
            if self.in_transaction {
                self.finish(true).await?;
            }
            return Ok(0);
        }
        // Every message first: a mark never lands before its messages.
        self.flush().await?;
        self.begin().await?;
        let topic = self.state.topic().to_string();
        let mut written: Vec<(String, String)> = Vec::new();
        for (table, record) in &records {
            let text = serde_json::to_string(record).expect("a record serializes");
            written.push((table_key(table), text));
        }
        written.extend(histories.iter().cloned());
        for (key, text) in &written {
            let record: BaseRecord<'_, str, str> = BaseRecord::to(&topic)
                .key(key.as_str())
                .payload(text.as_str());
            if let Err((e, _)) = self.producer.send(record) {
                return Err(classify(format!("writing {key} to the state topic"), e));
            }
            self.stats.queued.fetch_add(1, Ordering::Relaxed);
            self.stats.messages.fetch_add(1, Ordering::Relaxed);
            self.stats
                .bytes
                .fetch_add((key.len() + text.len()) as u64, Ordering::Relaxed);
        }
        if self.settings.delivery == Delivery::ExactlyOnce {
            self.finish(true).await?;
        } else {
            self.flush().await?;
        }
        for (key, text) in written {
            self.state.remember(key, Some(text));
        }
        let committed = records.len();
        let mut per_topic = lock(&self.stats.per_topic);
        for (table, record) in records {
            if record.snapshot_done {
                self.phases.remove(&table);
            }
            if let Some(known) = self.tables.get_mut(&table) {
                if let Some(encoder) = known.encoder.as_ref() {
                    if known.pending.is_some() {
                        known.recorded.insert(encoder.schema.version);
                        known.ddl.clear();
                    }
                }
                known.pending = None;
                per_topic.insert(record.topic.clone(), record.messages);
                known.record = Some(record);
            }
        }
        drop(per_topic);
        self.staged_bytes = 0;
        Ok(committed)
    }

    /// Ends the open transaction: commits it, or aborts it.
    async fn finish(&mut self, commit: bool) -> Result<(), KafkaError> {
        if !self.in_transaction {
            return Ok(());
        }
        self.in_transaction = false;
        let producer = self.producer.clone();
        let timeout = Duration::from_millis(self.settings.transaction_timeout_ms.max(30_000));
        let result = tokio::task::spawn_blocking(move || {
            if commit {
                producer.commit_transaction(timeout)
            } else {
                producer.abort_transaction(timeout)
            }
        })
        .await
        .map_err(|e| KafkaError::Timeout(format!("ending a transaction: {e}")))?;
        if let Some((topic, error)) = lock(&self.producer.context().failure).take() {
            return Err(classify(
                format!(
                    "delivering a message to {}",
                    topic.as_deref().unwrap_or("a topic")
                ),
                error,
            ));
        }
        result.map_err(|e| {
            classify(
                if commit {
                    "committing a transaction".into()
                } else {
                    "aborting a transaction".into()
                },
                e,
            )
        })
    }

    /// After a failed write or commit: the open transaction is aborted and
    /// what was pending is dropped (the pipeline sends it again from the
    /// committed marks).
    async fn roll_back(&mut self) {
        for known in self.tables.values_mut() {
            known.pending = None;
        }
        self.staged_bytes = 0;
        if self.in_transaction {
            if let Err(err) = self.finish(false).await {
                warn!(error = %tidewater_core::error_chain(&err), "aborting the transaction after an error");
            }
        }
        lock(&self.producer.context().failure).take();
    }

    /// Checks that the brokers answer and that the state topic and every
    /// table's topic exist or could be created (nothing is created).
    pub async fn check(
        settings: &KafkaSettings,
        tables: &[TableId],
    ) -> Result<Vec<String>, KafkaError> {
        let client = settings.client();
        let mut topics: Vec<(String, i32, bool)> = vec![(settings.state_topic.clone(), 1, true)];
        topics.extend(
            tables
                .iter()
                .map(|t| (settings.topic_of(t), settings.topic_partitions, false)),
        );
        create_topics(&client, &topics, settings.replication_factor, true).await
    }
}

/// The decimal digits of `n`, written into `buf`.
fn digits(buf: &mut [u8; 20], n: u64) -> &[u8] {
    let mut at = buf.len();
    let mut n = n;
    loop {
        at -= 1;
        buf[at] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    &buf[at..]
}

/// A schema version of a table, as the state topic's history keeps it.
fn history_record(schema: &TableSchema, ddl: &[(u64, String)], position: &str) -> String {
    let columns: Vec<serde_json::Value> = schema
        .columns
        .iter()
        .map(|c| {
            serde_json::json!({
                "name": c.name,
                "type": format!("{:?}", c.ty),
                "source_type": c.source_type,
                "key": c.key,
            })
        })
        .collect();
    serde_json::json!({
        "format": 1,
        "version": schema.version,
        "columns": columns,
        "ddl": ddl.iter().map(|(_, s)| s).collect::<Vec<_>>(),
        "position": position,
    })
    .to_string()
}

/// Creates the `(name, partitions, compacted)` topics that do not exist
/// (`validate_only`: only asks whether they could be). Returns what was
/// found for each, for `check`.
async fn create_topics(
    client: &ClientConfig,
    topics: &[(String, i32, bool)],
    replication: i32,
    validate_only: bool,
) -> Result<Vec<String>, KafkaError> {
    let admin: AdminClient<DefaultClientContext> = client
        .create()
        .map_err(KafkaError::broker("connecting to the brokers"))?;
    let new: Vec<NewTopic<'_>> = topics
        .iter()
        .map(|(name, partitions, compacted)| {
            let topic = NewTopic::new(name, *partitions, TopicReplication::Fixed(replication));
            if *compacted {
                topic.set("cleanup.policy", "compact")
            } else {
                topic
            }
        })
        .collect();
    let options = AdminOptions::new()
        .validate_only(validate_only)
        .operation_timeout(Some(Duration::from_secs(30)))
        .request_timeout(Some(Duration::from_secs(30)));
    let results = admin
        .create_topics(new.iter(), &options)
        .await
        .map_err(KafkaError::broker("creating topics"))?;
    let mut found = Vec::new();
    for result in results {
        match result {
            Ok(name) => found.push(format!(
                "{name}: {}",
                if validate_only {
                    "can be created"
                } else {
                    "created"
                }
            )),
            Err((name, rdkafka::types::RDKafkaErrorCode::TopicAlreadyExists)) => {
                found.push(format!("{name}: exists"))
            }
            Err((name, code)) => {
                return Err(classify(
                    format!("creating topic {name}"),
                    rdkafka::error::KafkaError::AdminOp(code),
                ))
            }
        }
    }
    Ok(found)
}

/// A row of Debezium's placeholders for the values of `schema` a source
/// did not resend (unchanged TOAST columns): what Debezium writes when it
/// has no earlier image. Only the variable-length types can be TOASTed.
fn placeholder_row(schema: &TableSchema) -> Vec<Datum> {
    fn placeholder(ty: &ColumnType) -> Datum {
        match ty {
            ColumnType::Text | ColumnType::Json => Datum::Text(UNAVAILABLE.into()),
            ColumnType::Binary => Datum::Bytes(UNAVAILABLE.as_bytes().to_vec()),
            ColumnType::List(inner) => Datum::List(vec![placeholder(inner)]),
            _ => Datum::Null,
        }
    }
    schema.columns.iter().map(|c| placeholder(&c.ty)).collect()
}

impl Sink for KafkaSink {
    type Error = KafkaError;

    fn staged_bytes(&self) -> u64 {
        self.staged_bytes
    }

    async fn prepare(&mut self, schema: &TableSchema) -> Result<(), KafkaError> {
        let topic = self.known(&schema.table).await?.topic.clone();
        self.ensure_topic(&topic).await
    }

    async fn mark(&mut self, table: &TableId) -> Result<Option<Mark>, KafkaError> {
        Ok(self.table_state(table)?.map(|s| s.mark))
    }

    async fn write(&mut self, batch: ChangeBatch) -> Result<(), KafkaError> {
        let result = self.write_batch(batch).await;
        if result.is_err() {
            self.roll_back().await;
        }
        result
    }

    /// Kafka keeps no row to look up: a value Postgres did not resend gets
    /// Debezium's placeholder, as Debezium writes it (an earlier image in
    /// the same batch is still used first, by the batcher).
    async fn latest_rows(
        &mut self,
        schema: &TableSchema,
        keys: &[Vec<Datum>],
    ) -> Result<HashMap<String, Vec<Datum>>, KafkaError> {
        let row = placeholder_row(schema);
        Ok(keys
            .iter()
            .map(|k| (tidewater_core::key_string(k), row.clone()))
            .collect())
    }

    fn note_ddl(&mut self, table: &TableId, seq: u64, statement: String) {
        if let Some(known) = self.tables.get_mut(table) {
            known.ddl.push((seq, statement));
        }
    }

    fn table_phase(&mut self, table: &TableId, phase: SnapshotPhase, mark: Mark) {
        self.phases.insert(table.clone(), (phase, mark));
    }

    async fn commit(
        &mut self,
        position: &str,
        phase: Option<SnapshotPhase>,
    ) -> Result<usize, KafkaError> {
        let result = self.commit_all(position, phase).await;
        if result.is_err() {
            self.roll_back().await;
        }
        result
    }
}

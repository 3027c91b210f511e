//! Kafka output: Debezium change events that Debezium's consumers read
//! unchanged, committed with each table's mark in Kafka transactions.
//!
//! * [`envelope`]: the event format (Debezium's envelope and value
//!   encodings, with or without Kafka Connect schemas).
//! * [`sink`]: the [`tidewater_core::Sink`] that produces them, exactly once
//!   through transactions or at least once where the brokers have none.
//! * [`state`]: the pipeline's state in a compacted topic.

pub mod envelope;
pub mod error;
pub mod sink;
pub mod state;

pub use envelope::{Connector, Format, SourceInfo};
pub use error::KafkaError;
pub use sink::{Delivery, KafkaSettings, KafkaSink};
pub use state::{KafkaState, KafkaStats, TableRecord};

//! What can go wrong between tidewater and the brokers, each with the one
//! action it calls for ([`ErrorClass`]).

use tidewater_core::{Classified, ErrorClass, TableId};

#[derive(Debug, thiserror::Error)]
pub enum KafkaError {
    /// The brokers, the network or a transaction hiccuped: the pipeline
    /// starts again from the committed marks.
    #[error("{doing}: {source}")]
    Broker {
        doing: String,
        #[source]
        source: Box<rdkafka::error::KafkaError>,
    },
    /// A message the brokers refused for good (too large, for one): its
    /// table stops.
    #[error("{table}: {doing}: {source}\nhint: {hint}")]
    Refused {
        table: TableId,
        doing: String,
        hint: String,
        #[source]
        source: Box<rdkafka::error::KafkaError>,
    },
    /// Another process took this pipeline's transactional id, or the
    /// settings are refused: stopping is the only safe thing to do.
    #[error("{doing}: {source}\nhint: {hint}")]
    Fatal {
        doing: String,
        hint: String,
        #[source]
        source: Box<rdkafka::error::KafkaError>,
    },
    /// The state topic holds something this release cannot read.
    #[error("the record {key:?} of state topic {topic} is damaged: {problem}\nhint: {fix}")]
    Corrupt {
        topic: String,
        key: String,
        problem: String,
        fix: String,
    },
    /// Waiting for the brokers took longer than allowed.
    #[error("{0}")]
    Timeout(String),
}

impl KafkaError {
    pub(crate) fn broker(
        doing: impl Into<String>,
    ) -> impl FnOnce(rdkafka::error::KafkaError) -> Self {
        let doing = doing.into();
        move |source| classify(doing, source)
    }
}

/// Sorts a librdkafka error: fatal ones (fenced, unauthorized, a bad
/// setting) stop the pipeline, the rest are retried.
pub(crate) fn classify(doing: String, source: rdkafka::error::KafkaError) -> KafkaError {
    use rdkafka::error::RDKafkaErrorCode as Code;
    let fatal_hint = match source.rdkafka_error_code() {
        Some(Code::ProducerFenced | Code::InvalidProducerEpoch) => Some(
            "another process uses this pipeline's transactional id (sink.transactional_id): \
             only one tidewater may run a pipeline; stop the other one",
        ),
        Some(
            Code::TopicAuthorizationFailed
            | Code::ClusterAuthorizationFailed
            | Code::TransactionalIdAuthorizationFailed
            | Code::SaslAuthenticationFailed,
        ) => Some(
            "the brokers refuse this client: check sink.properties (sasl.*, ssl.*) and the \
             ACLs of the principal (write and describe on the topics, the transactional id)",
        ),
        Some(Code::InvalidTransactionTimeout) => Some(
            "the brokers refuse sink.transaction_timeout_ms: it must be at most the brokers' \
             transaction.max.timeout.ms",
        ),
        _ => None,
    };
    let fatal = fatal_hint.is_some()
        || matches!(&source, rdkafka::error::KafkaError::ClientCreation(_))
        || matches!(&source, rdkafka::error::KafkaError::Transaction(e) if e.is_fatal());
    if fatal {
        KafkaError::Fatal {
            doing,
            hint: fatal_hint
                .unwrap_or("fix the setting the error names, then start again")
                .into(),
            source: Box::new(source),
        }
    } else {
        KafkaError::Broker {
            doing,
            source: Box::new(source),
        }
    }
}

impl Classified for KafkaError {
    fn class(&self) -> ErrorClass {
        match self {
            KafkaError::Broker { .. } | KafkaError::Timeout(_) => ErrorClass::Transient,
            KafkaError::Refused { .. } => ErrorClass::Definite,
            KafkaError::Fatal { .. } | KafkaError::Corrupt { .. } => ErrorClass::Config,
        }
    }

    fn table(&self) -> Option<&TableId> {
        match self {
            KafkaError::Refused { table, .. } => Some(table),
            _ => None,
        }
    }
}

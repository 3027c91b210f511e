//! Integration tests: real Postgres servers, the real daemon, the lake read
//! back and compared with the source value by value.

#[path = "../support/mod.rs"]
mod support;

mod config_errors;
mod crash;
mod crate_graph;
mod demo;
mod forget;
mod golden;
mod iceberg;
mod kafka;
mod kafka_debezium;
mod lake_maintenance;
mod lake_s3;
mod lake_unwritable;
mod lake_writers;
mod lease;
mod lineage;
mod maria_harness;
mod masking;
mod metrics;
mod mysql;
mod mysql_conformance;
mod mysql_copy_interleave;
mod mysql_schema;
mod mysql_statement;
mod pg_conformance;
mod pg_copy_interleave;
mod pg_identity_full;
mod pg_idle_ack;
mod pg_new_tables;
mod pg_roundtrip;
mod pg_schema;
mod pg_streaming;
mod privileges;
mod replication;
mod retention;
mod retry;
mod reverse_etl;
mod secrets;
mod soft_deletes;
mod state_files;
mod state_upgrade;
mod stopping;
mod tls;
mod verify;
mod warehouse;

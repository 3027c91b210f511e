//! The SQL engine over the lake: DataFusion, with each lake table visible
//! as `<schema>.<table>` (its current state) and `<schema>.<table>__changes`
//! (the raw change log, metadata columns included).
//!
//! ```text
//!  query ─parse─▶ table references ─▶ read only those change logs (LakeSink::read_log)
//!        ─▶ register  <s>.<t>__changes  = the log (in memory)
//!                     <s>.<t>           = view: last row per key by (_tw_seq, _tw_ord),
//!                                         after the last truncate, deletes dropped
//!        ─▶ plan read-only (no DDL, DML or SET) ─▶ collect the result
//! ```
//!
//! Only the tables a query names are read, so a job over one small table
//! does not pay for the whole lake. Names follow SQL: unquoted identifiers
//! fold to lower case, so a MySQL table `Orders` is `shop."Orders"`.

use std::collections::BTreeSet;
use std::sync::Arc;

use datafusion::arrow::array::RecordBatch;
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::catalog::MemorySchemaProvider;
use datafusion::common::TableReference;
use datafusion::datasource::MemTable;
use datafusion::execution::context::{SQLOptions, SessionConfig, SessionContext};
use tidewater_core::TableId;
use tidewater_endpoint::quote::double_quoted as quote;
use tidewater_lake::{LakeLog, LakeSink};

use crate::error::ReverseError;

/// The suffix that names a table's raw change log.
pub const CHANGES_SUFFIX: &str = "__changes";

/// A query's result, whole.
pub struct QueryResult {
    pub schema: SchemaRef,
    pub batches: Vec<RecordBatch>,
    /// Lake tables the query read.
    pub tables: Vec<TableId>,
}

/// Runs `query` over the lake of `sink`'s pipeline.
pub async fn query(sink: &mut LakeSink, query: &str) -> Result<QueryResult, ReverseError> {
    let config = SessionConfig::new()
        .with_information_schema(false)
        .with_target_partitions(2);
    let ctx = SessionContext::new_with_config(config);
    let state = ctx.state();
    let dialect = state.config().options().sql_parser.dialect;
    let statement = state
        .sql_to_statement(query, &dialect)
        .map_err(|source| ReverseError::Query { source })?;
    let references = state
        .resolve_table_references(&statement)
        .map_err(|source| ReverseError::Query { source })?;
    drop(state);

    let lake_tables = sink.existing_tables().await?;
    let mut wanted: BTreeSet<TableId> = BTreeSet::new();
    let mut as_current: BTreeSet<TableId> = BTreeSet::new();
    for reference in &references {
        let (schema, table) = match reference {
            TableReference::Partial { schema, table } => (schema.as_ref(), table.as_ref()),
            TableReference::Full { schema, table, .. } => (schema.as_ref(), table.as_ref()),
            TableReference::Bare { table } => {
                return Err(ReverseError::UnknownTable {
                    name: table.to_string(),
                    hint: "name lake tables with their schema (database on MySQL): public.orders"
                        .into(),
                })
            }
        };
        let base = table.strip_suffix(CHANGES_SUFFIX);
        let id = TableId::new(schema, base.unwrap_or(table));
        if base.is_none() {
            as_current.insert(id.clone());
        }
        if !lake_tables.contains(&id) {
            let known: Vec<String> = lake_tables.iter().map(|t| t.to_string()).collect();
            return Err(ReverseError::UnknownTable {
                name: format!("{schema}.{table}"),
                hint: if known.is_empty() {
                    "the lake has no tables yet: run the pipeline first".into()
                } else {
                    format!(
                        "lake tables: {} (each also as <table>{CHANGES_SUFFIX}); quote mixed-case names",
                        known.join(", ")
                    )
                },
            });
        }
        wanted.insert(id);
    }

    for id in &wanted {
        let log = sink
            .read_log(id)
            .await?
            .ok_or_else(|| ReverseError::UnknownTable {
                name: id.to_string(),
                hint: "it was removed from the lake while the query was planned".into(),
            })?;
        if log.key.is_empty() && as_current.contains(id) {
            return Err(ReverseError::UnknownTable {
                name: id.to_string(),
                hint: format!(
                    "it has no primary key, so it has no current state; query {id}{CHANGES_SUFFIX}"
                ),
            });
        }
        register(&ctx, id, log).await?;
    }

    let options = SQLOptions::new()
        .with_allow_ddl(false)
        .with_allow_dml(false)
        .with_allow_statements(false);
    let frame = ctx
        .sql_with_options(query, options)
        .await
        .map_err(|source| ReverseError::Query { source })?;
    let schema: SchemaRef = Arc::new(frame.schema().as_arrow().clone());
    let batches = frame
        .collect()
        .await
        .map_err(|source| ReverseError::Query { source })?;
    Ok(QueryResult {
        schema,
        batches,
        tables: wanted.into_iter().collect(),
    })
}

/// Registers `id`'s change log and its current-state view.
async fn register(ctx: &SessionContext, id: &TableId, log: LakeLog) -> Result<(), ReverseError> {
    let internal = |source| ReverseError::Engine {
        table: id.to_string(),
        source,
    };
    let catalog = ctx
        .catalog("datafusion")
        .expect("the default catalog exists");
    if catalog.schema(&id.schema).is_none() {
        catalog
            .register_schema(&id.schema, Arc::new(MemorySchemaProvider::new()))
            .map_err(internal)?;
    }
    let changes_name = format!("{}{CHANGES_SUFFIX}", id.table);
    let changes =
        MemTable::try_new(log.schema.clone(), vec![log.batches.clone()]).map_err(internal)?;
    ctx.register_table(
        TableReference::partial(id.schema.as_str(), changes_name.as_str()),
        Arc::new(changes),
    )
    .map_err(internal)?;

    if log.key.is_empty() {
        // No key, no "last row per key": only the log is offered, and
        // naming the current state fails with the reason.
        return Ok(());
    }
    let view = ctx
        .sql(&current_state_sql(id, &log))
        .await
        .map_err(internal)?
        .into_view();
    ctx.register_table(
        TableReference::partial(id.schema.as_str(), id.table.as_str()),
        view,
    )
    .map_err(internal)?;
    Ok(())
}

/// The current state of a change log (DESIGN §3), columns under their
/// source names.
fn current_state_sql(id: &TableId, log: &LakeLog) -> String {
    let columns: Vec<String> = log
        .columns
        .iter()
        .map(|(name, lake)| format!("{} AS {}", quote(lake), quote(name)))
        .collect();
    let key: Vec<String> = log.key.iter().map(|k| quote(k)).collect();
    let (seq, ord) = (log.truncated.seq as i64, log.truncated.ord as i64);
    format!(
        "SELECT {columns} FROM (\
           SELECT *, row_number() OVER (PARTITION BY {key} ORDER BY _tw_seq DESC, _tw_ord DESC) AS __tw_rank \
           FROM {schema}.{changes} \
           WHERE _tw_op <> 't' AND (_tw_seq > {seq} OR (_tw_seq = {seq} AND _tw_ord > {ord}))\
         ) WHERE __tw_rank = 1 AND _tw_op <> 'd'",
        columns = columns.join(", "),
        key = key.join(", "),
        schema = quote(&id.schema),
        changes = quote(&format!("{}{CHANGES_SUFFIX}", id.table)),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::arrow::array::{Array, Int64Array, StringArray};
    use datafusion::arrow::datatypes::{DataType, Field, Schema};
    use tidewater_core::Mark;

    /// A change log: (op, seq, ord, id, v).
    fn log(rows: &[(&str, i64, i64, i64, Option<&str>)], truncated: Mark) -> LakeLog {
        let schema = Arc::new(Schema::new(vec![
            Field::new("id", DataType::Int64, true),
            Field::new("v__v2", DataType::Utf8, true),
            Field::new("_tw_op", DataType::Utf8, false),
            Field::new("_tw_seq", DataType::Int64, false),
            Field::new("_tw_ord", DataType::Int64, false),
        ]));
        let batch = RecordBatch::try_new(
            schema.clone(),
            vec![
                Arc::new(Int64Array::from_iter_values(rows.iter().map(|r| r.3))),
                Arc::new(StringArray::from_iter(rows.iter().map(|r| r.4))),
                Arc::new(StringArray::from_iter_values(rows.iter().map(|r| r.0))),
                Arc::new(Int64Array::from_iter_values(rows.iter().map(|r| r.1))),
                Arc::new(Int64Array::from_iter_values(rows.iter().map(|r| r.2))),
            ],
        )
        .unwrap();
        LakeLog {
            schema,
            batches: vec![batch],
            columns: vec![("id".into(), "id".into()), ("v".into(), "v__v2".into())],
            key: vec!["id".into()],
            truncated,
        }
    }

    async fn current(log: LakeLog) -> Vec<(i64, Option<String>)> {
        let ctx = SessionContext::new();
        register(&ctx, &TableId::new("public", "t"), log)
            .await
            .unwrap();
        let batches = ctx
            .sql("SELECT id, v FROM public.t ORDER BY id")
            .await
            .unwrap()
            .collect()
            .await
            .unwrap();
        let mut out = Vec::new();
        for b in batches {
            let ids = b.column(0).as_any().downcast_ref::<Int64Array>().unwrap();
            let vs = b.column(1).as_any().downcast_ref::<StringArray>().unwrap();
            for i in 0..b.num_rows() {
                out.push((
                    ids.value(i),
                    vs.is_valid(i).then(|| vs.value(i).to_string()),
                ));
            }
        }
        out
    }

    #[tokio::test]
    async fn the_current_state_is_the_last_change_per_key_after_the_last_truncate() {
        let rows = [
            ("r", 1, 0, 1, Some("a")),
            ("r", 1, 1, 2, Some("b")),
            ("r", 1, 2, 3, Some("c")),
            // one transaction: update 1 twice (the later ord wins), delete 2
            ("u", 5, 1, 1, Some("a2")),
            ("u", 5, 0, 1, Some("a1")),
            ("d", 5, 2, 2, Some("b")),
            // a NULL value is a value; a later insert after a delete counts
            ("u", 7, 0, 3, None),
            ("c", 8, 0, 2, Some("b again")),
        ];
        assert_eq!(
            current(log(&rows, Mark::ZERO)).await,
            vec![
                (1, Some("a2".into())),
                (2, Some("b again".into())),
                (3, None)
            ]
        );
        // A truncate at (6, 0): only what came after it is left.
        let mut truncated = rows.to_vec();
        truncated.push(("t", 6, 0, 0, None));
        assert_eq!(
            current(log(&truncated, Mark::new(6, 0))).await,
            vec![(2, Some("b again".into())), (3, None)]
        );
        // The log keeps everything, truncate included.
        let ctx = SessionContext::new();
        register(
            &ctx,
            &TableId::new("public", "t"),
            log(&truncated, Mark::new(6, 0)),
        )
        .await
        .unwrap();
        let n: usize = ctx
            .sql("SELECT * FROM public.t__changes")
            .await
            .unwrap()
            .collect()
            .await
            .unwrap()
            .iter()
            .map(|b| b.num_rows())
            .sum();
        assert_eq!(n, 9);
    }
}

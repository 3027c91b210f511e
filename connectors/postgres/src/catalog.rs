//! What the Postgres catalog tells us: which tables the config selects and
//! their columns, with the same key flags the stream gives them.

use std::collections::HashMap;

use tidewater_core::{Column, TableFilter, TableId};
use tokio_postgres::Client;

/// Quotes an identifier for SQL text.
pub use tidewater_endpoint::quote::double_quoted as quote_ident;

use crate::types::column_type_dims;

/// SQL over `pg_class c`: true when the table's replica identity lets
/// Postgres publish its UPDATEs and DELETEs (FULL, a primary key under
/// DEFAULT, an index under USING INDEX; never NOTHING).
pub(crate) const HAS_REPLICA_IDENTITY: &str = "CASE c.relreplident \
       WHEN 'n' THEN false \
       WHEN 'f' THEN true \
       WHEN 'd' THEN EXISTS (SELECT 1 FROM pg_index i WHERE i.indrelid = c.oid AND i.indisprimary) \
       ELSE EXISTS (SELECT 1 FROM pg_index i WHERE i.indrelid = c.oid AND i.indisreplident) \
     END";

/// Ordinary and partitioned tables outside the system schemas that `filter`
/// selects, sorted.
pub async fn list_tables(
    client: &Client,
    filter: &TableFilter,
) -> Result<Vec<TableId>, tokio_postgres::Error> {
    let rows = client
        .query(
            "SELECT n.nspname, c.relname FROM pg_class c \
             JOIN pg_namespace n ON n.oid = c.relnamespace \
             WHERE c.relkind IN ('r', 'p') AND NOT c.relispartition \
               AND n.nspname NOT IN ('pg_catalog', 'information_schema') \
               AND n.nspname NOT LIKE 'pg\\_toast%' \
             ORDER BY 1, 2",
            &[],
        )
        .await?;
    Ok(rows
        .iter()
        .map(|row| TableId::new(row.get::<_, String>(0), row.get::<_, String>(1)))
        .filter(|table| filter.matches(table))
        .collect())
}

/// Columns of a table as the stream will describe them: generated columns
/// are left out (pgoutput does not send them), and key flags follow the
/// table's replica identity — its primary key under `DEFAULT` and `FULL`
/// (none without one), the index's columns under `USING INDEX`, none under
/// `NOTHING` (the same rule as `source::row_key`).
pub async fn table_columns(
    client: &Client,
    table: &TableId,
) -> Result<Vec<Column>, tokio_postgres::Error> {
    let rows = client
        .query(
            "SELECT a.attname, \
               CASE WHEN t.typtype = 'd' THEN t.typbasetype ELSE a.atttypid END, \
               CASE WHEN t.typtype = 'd' AND t.typtypmod <> -1 THEN t.typtypmod ELSE a.atttypmod END, \
               format_type(a.atttypid, a.atttypmod), \
               CASE c.relreplident \
                 WHEN 'n' THEN false \
                 WHEN 'i' THEN coalesce(a.attnum = ANY(ri.indkey::int2[]), false) \
                 ELSE coalesce(a.attnum = ANY(pk.indkey::int2[]), false) \
               END, \
               a.attndims::int4 \
             FROM pg_attribute a \
             JOIN pg_class c ON c.oid = a.attrelid \
             JOIN pg_type t ON t.oid = a.atttypid \
             LEFT JOIN pg_index pk ON pk.indrelid = c.oid AND pk.indisprimary \
             LEFT JOIN pg_index ri ON ri.indrelid = c.oid AND ri.indisreplident \
             WHERE a.attrelid = (quote_ident($1) || '.' || quote_ident($2))::regclass \
               AND a.attnum > 0 AND NOT a.attisdropped AND a.attgenerated = '' \
             ORDER BY a.attnum",
            &[&table.schema, &table.table],
        )
        .await?;
    Ok(rows
        .iter()
        .map(|row| {
            let type_oid: u32 = row.get(1);
            let type_modifier: i32 = row.get(2);
            Column {
                name: row.get(0),
                ty: column_type_dims(type_oid, type_modifier, row.get(5)),
                source_type: row.get(3),
                key: row.get(4),
            }
        })
        .collect())
}

/// Caches `format_type(oid, typmod)` and domain base types for Relation
/// messages.
#[derive(Default)]
pub struct TypeNames {
    names: HashMap<(u32, i32), String>,
    bases: HashMap<(u32, i32), (u32, i32)>,
}

impl TypeNames {
    /// The type a column's values really have: a domain's base type (one
    /// level, the way the snapshot's catalog query resolves it; the domain's
    /// own modifier wins when it has one), else the type itself.
    pub async fn base(
        &mut self,
        client: &Client,
        type_oid: u32,
        type_modifier: i32,
    ) -> Result<(u32, i32), tokio_postgres::Error> {
        if let Some(base) = self.bases.get(&(type_oid, type_modifier)) {
            return Ok(*base);
        }
        let row = client
            .query_opt(
                "SELECT typbasetype, typtypmod FROM pg_type WHERE oid = $1 AND typtype = 'd'",
                &[&type_oid],
            )
            .await?;
        let base = match row {
            Some(row) => {
                let base_modifier: i32 = row.get(1);
                let modifier = if base_modifier != -1 {
                    base_modifier
                } else {
                    type_modifier
                };
                (row.get::<_, u32>(0), modifier)
            }
            None => (type_oid, type_modifier),
        };
        self.bases.insert((type_oid, type_modifier), base);
        Ok(base)
    }

    pub async fn name(
        &mut self,
        client: &Client,
        type_oid: u32,
        type_modifier: i32,
    ) -> Result<String, tokio_postgres::Error> {
        if let Some(name) = self.names.get(&(type_oid, type_modifier)) {
            return Ok(name.clone());
        }
        let row = client
            .query_one(
                "SELECT format_type($1::oid, $2)",
                &[&type_oid, &type_modifier],
            )
            .await?;
        let name: String = row.get(0);
        self.names.insert((type_oid, type_modifier), name.clone());
        Ok(name)
    }
}

pub fn quote_table(table: &TableId) -> String {
    format!(
        "{}.{}",
        quote_ident(&table.schema),
        quote_ident(&table.table)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quoting() {
        assert_eq!(quote_ident("we\"ird"), "\"we\"\"ird\"");
    }
}

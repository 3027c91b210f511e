//! Decodes every row of binlog files from disk with tidewater's decoder and
//! prints rows/s, MB/s and peak memory. Used by `bench/mysql-decode`.
//!
//! ```text
//! decode_binlog COLLATIONS.tsv BINLOG...
//! ```
//! `COLLATIONS.tsv` is `SELECT ID, CHARACTER_SET_NAME FROM
//! information_schema.COLLATIONS` of the server that wrote the files.

use std::collections::HashMap;
use std::time::Instant;

use tidewater_mysql::{rows, tablemap};

const TABLE_MAP: u8 = 19;
const FORMAT_DESCRIPTION: u8 = 15;

fn peak_rss_mib() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .map_or(0.0, |kb| kb / 1024.0)
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (collations, files) = args
        .split_first()
        .expect("usage: decode_binlog COLLATIONS.tsv BINLOG...");
    let charsets: HashMap<u32, String> = std::fs::read_to_string(collations)
        .expect("collations file")
        .lines()
        .filter_map(|l| {
            let (id, cs) = l.split_once('\t')?;
            Some((id.trim().parse().ok()?, cs.trim().to_string()))
        })
        .collect();
    let data: Vec<Vec<u8>> = files
        .iter()
        .map(|f| std::fs::read(f).expect("binlog file"))
        .collect();
    let bytes: usize = data.iter().map(Vec::len).sum();

    for columnar in [false, true] {
        let started = Instant::now();
        let (rows, events) = decode_all(&data, &charsets, columnar);
        let seconds = started.elapsed().as_secs_f64();
        println!(
            "{}: decoded {rows} rows in {events} events from {:.1} MB of binlog in {seconds:.3} s: \
             {:.0} rows/s, {:.0} MB/s, peak RSS {:.0} MiB (files held in memory)",
            if columnar { "into Arrow (the daemon's path)" } else { "into Datums" },
            bytes as f64 / 1e6,
            rows as f64 / seconds,
            bytes as f64 / 1e6 / seconds,
            peak_rss_mib()
        );
    }
}

/// Decodes every rows event; returns (rows, events).
fn decode_all(data: &[Vec<u8>], charsets: &HashMap<u32, String>, columnar: bool) -> (u64, u64) {
    let mut rows_out = Vec::new();
    let mut rows = 0u64;
    let mut events = 0u64;
    let mut plans: HashMap<u64, (rows::RowPlan, rows::ColumnarRows)> = HashMap::new();
    for file in data {
        assert_eq!(&file[..4], b"\xfebin", "not a binlog file");
        let mut at = 4;
        let mut checksum = 0;
        while at + 19 <= file.len() {
            let event_type = file[at + 4];
            let size = u32::from_le_bytes(file[at + 9..at + 13].try_into().unwrap()) as usize;
            let body = &file[at + 19..at + size];
            events += 1;
            if event_type == FORMAT_DESCRIPTION {
                // The FDE ends with the checksum algorithm byte and its own CRC.
                checksum = if body[body.len() - 5] == 1 { 4 } else { 0 };
            }
            let trailer = if event_type == FORMAT_DESCRIPTION {
                4
            } else {
                checksum
            };
            let body = &body[..body.len() - trailer];
            if event_type == TABLE_MAP {
                let map = tablemap::parse_table_map(body).expect("table map");
                plans.entry(map.table_id).or_insert_with(|| {
                    let plan =
                        rows::plan(&map, &[], &|id| charsets.get(&id).cloned()).expect("plan");
                    let builders = rows::ColumnarRows::new(&plan);
                    (plan, builders)
                });
            } else if rows::rows_kind(event_type).is_some() {
                let table_id = body[..6]
                    .iter()
                    .rev()
                    .fold(0u64, |a, b| (a << 8) | u64::from(*b));
                let (plan, builders) = plans.get_mut(&table_id).expect("table map first");
                if columnar {
                    rows::decode_rows_columnar(event_type, body, plan, builders).expect("rows");
                    let (_, ops) = builders.finish();
                    rows += ops.len() as u64;
                } else {
                    rows_out.clear();
                    rows::decode_rows(event_type, body, plan, &mut rows_out).expect("rows");
                    rows += rows_out.len() as u64;
                }
            }
            at += size;
        }
    }
    (rows, events)
}

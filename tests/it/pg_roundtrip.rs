//! Round-trip property test with the server as the oracle: seeded random
//! values of every typed mapping go into Postgres (through the snapshot and
//! through the stream, in binary and in text mode), and the lake must hold
//! what the server says it holds, value by value. A failure prints the seed.

use crate::support::{pg, Pipeline};

pub(crate) struct Rng(pub u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
    fn range(&mut self, lo: i64, hi: i64) -> i64 {
        lo + self.below((hi - lo) as u64 + 1) as i64
    }
    fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }
}

pub(crate) const DDL: &str = "CREATE TABLE r (
    id int PRIMARY KEY,
    i2 int2, i4 int4, i8 int8, n numeric(12,2), nw numeric(40,10), nf numeric,
    f4 real, f8 double precision, b boolean, t text, by bytea,
    d date, ts timestamp, tz timestamptz, tm time, u uuid, j jsonb,
    ai int4[], at text[]
)";

fn sql_text(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

fn random_text(rng: &mut Rng) -> String {
    const POOL: &[char] = &[
        'a', 'Z', '0', ' ', '\'', '"', '\\', '\n', '\t', ',', '{', '}', 'é', 'ß', '€', '🦀', '中',
    ];
    (0..rng.below(12))
        .map(|_| POOL[rng.below(POOL.len() as u64) as usize])
        .collect()
}

/// Between 1 and `max` digits.
fn some_digits(rng: &mut Rng, max: u64) -> String {
    let n = rng.below(max);
    digits(rng, n)
}

fn digits(rng: &mut Rng, n: u64) -> String {
    (0..n.max(1))
        .map(|_| char::from(b'0' + rng.below(10) as u8))
        .collect()
}

/// One random value per column (NULL one time in ten), as SQL expressions.
pub(crate) fn random_row(rng: &mut Rng, id: i64) -> Vec<String> {
    let mut v = vec![id.to_string()];
    let mut col = |rng: &mut Rng, f: &dyn Fn(&mut Rng) -> String| {
        v.push(if rng.chance(10) {
            "NULL".into()
        } else {
            f(rng)
        });
    };
    col(rng, &|r| {
        r.range(i16::MIN.into(), i16::MAX.into()).to_string()
    });
    col(rng, &|r| {
        r.range(i32::MIN.into(), i32::MAX.into()).to_string()
    });
    col(rng, &|r| (r.next() as i64).to_string());
    col(rng, &|r| {
        let sign = if r.chance(50) { "-" } else { "" };
        format!("{sign}{}.{}", some_digits(r, 10), digits(r, 2))
    });
    col(rng, &|r| {
        let sign = if r.chance(50) { "-" } else { "" };
        format!("{sign}{}.{}", some_digits(r, 30), some_digits(r, 11))
    });
    col(rng, &|r| match r.below(8) {
        0 => "'NaN'".into(),
        1 => "'Infinity'".into(),
        2 => "'-Infinity'".into(),
        _ => {
            let sign = if r.chance(50) { "-" } else { "" };
            format!("'{sign}{}.{}'", some_digits(r, 40), some_digits(r, 30))
        }
    });
    col(rng, &|r| {
        float_literal(f64::from(f32::from_bits(r.next() as u32)), "real")
    });
    col(rng, &|r| {
        float_literal(f64::from_bits(r.next()), "double precision")
    });
    col(rng, &|r| if r.chance(50) { "true" } else { "false" }.into());
    col(rng, &|r| sql_text(&random_text(r)));
    col(rng, &|r| {
        let bytes: String = (0..r.below(20))
            .map(|_| format!("{:02x}", r.below(256)))
            .collect();
        format!("'\\x{bytes}'::bytea")
    });
    col(rng, &|r| match r.below(20) {
        0 => "'infinity'::date".into(),
        1 => "'-infinity'::date".into(),
        _ => format!("'epoch'::date + {}", r.range(-2_400_000, 2_900_000)),
    });
    col(rng, &|r| timestamp_expr(r, "timestamp"));
    col(rng, &|r| timestamp_expr(r, "timestamptz"));
    col(rng, &|r| {
        let micros = r.range(0, 86_400_000_000);
        format!(
            "'{:02}:{:02}:{:02}.{:06}'::time",
            micros / 3_600_000_000,
            micros / 60_000_000 % 60,
            micros / 1_000_000 % 60,
            micros % 1_000_000
        )
    });
    col(rng, &|r| {
        format!("'{:016x}{:016x}'::uuid", r.next(), r.next())
    });
    col(rng, &|r| {
        let text = serde_json::to_string(&random_text(r)).unwrap();
        sql_text(&format!(
            "{{\"k\": {}, \"s\": {text}, \"a\": [null, true]}}",
            r.range(-1000, 1000)
        ))
    });
    col(rng, &|r| {
        let items: Vec<String> = (0..r.below(5))
            .map(|_| {
                if r.chance(20) {
                    "NULL".into()
                } else {
                    r.range(i32::MIN.into(), i32::MAX.into()).to_string()
                }
            })
            .collect();
        format!("ARRAY[{}]::int4[]", items.join(","))
    });
    col(rng, &|r| {
        let items: Vec<String> = (0..r.below(5))
            .map(|_| {
                if r.chance(20) {
                    "NULL".into()
                } else {
                    sql_text(&random_text(r))
                }
            })
            .collect();
        format!("ARRAY[{}]::text[]", items.join(","))
    });
    v
}

fn float_literal(value: f64, ty: &str) -> String {
    if value.is_nan() {
        format!("'NaN'::{ty}")
    } else if value.is_infinite() {
        format!("'{}Infinity'::{ty}", if value < 0.0 { "-" } else { "" })
    } else {
        format!("'{value:e}'::{ty}")
    }
}

fn timestamp_expr(r: &mut Rng, ty: &str) -> String {
    match r.below(20) {
        0 => format!("'infinity'::{ty}"),
        1 => format!("'-infinity'::{ty}"),
        // Years about 4700 BC .. 9999 AD, microsecond precision.
        _ => format!(
            "'epoch'::{ty} + {} * interval '1 microsecond'",
            r.range(-208_000_000_000_000_000, 253_000_000_000_000_000)
        ),
    }
}

async fn round_trip(name: &str, binary: bool, seed: u64) {
    let client = pg().create_database(name).await;
    client.batch_execute(DDL).await.unwrap();
    let mut rng = Rng(seed);
    let insert = |rows: Vec<Vec<String>>| {
        let values: Vec<String> = rows.iter().map(|r| format!("({})", r.join(", "))).collect();
        format!("INSERT INTO r VALUES {}", values.join(", "))
    };
    let first: Vec<_> = (1..=150).map(|id| random_row(&mut rng, id)).collect();
    client
        .batch_execute(&insert(first))
        .await
        .unwrap_or_else(|e| panic!("seed {seed}: {e}"));
    let mut pipeline = Pipeline::with_source(
        name,
        &format!(
            "[source]\ntype = \"postgres\"\nurl = \"{}\"\nbinary = {binary}\n",
            pg().url(name)
        ),
        "",
    );
    pipeline.start();
    pipeline.wait_equal(&client, "r").await;
    // Streamed: new rows, rows rewritten with new random values, deletes.
    let second: Vec<_> = (151..=300).map(|id| random_row(&mut rng, id)).collect();
    client
        .batch_execute(&insert(second))
        .await
        .unwrap_or_else(|e| panic!("seed {seed}: {e}"));
    for id in (1..=300).step_by(7) {
        let row = random_row(&mut rng, id);
        client
            .batch_execute(&format!(
                "DELETE FROM r WHERE id = {id}; {}",
                insert(vec![row])
            ))
            .await
            .unwrap_or_else(|e| panic!("seed {seed}: {e}"));
    }
    client
        .batch_execute("DELETE FROM r WHERE id % 11 = 0")
        .await
        .unwrap();
    pipeline.wait_equal(&client, "r").await;
    assert_eq!(pipeline.terminate(), 0, "seed {seed}");
}

fn seed() -> u64 {
    let seed = std::env::var("TIDEWATER_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos() as u64)
                .unwrap_or(1)
        })
        | 1;
    eprintln!("round-trip seed {seed} (TIDEWATER_SEED={seed} reproduces)");
    seed
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn random_values_round_trip_in_binary_mode() {
    round_trip("roundtrip_bin", true, seed()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn random_values_round_trip_in_text_mode() {
    round_trip("roundtrip_text", false, seed()).await;
}

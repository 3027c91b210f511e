"""Reads the demo's lake with the Python deltalake package (no tidewater code)
and queries it with DuckDB: change counts per table, the current state rebuilt
from the change log, and the top customers by spend."""
import os
import sys

import duckdb
from deltalake import DeltaTable

lake = sys.argv[1]
con = duckdb.connect()
for schema in sorted(os.listdir(lake)):
    if not os.path.isdir(os.path.join(lake, schema)):
        continue  # tidewater's slot marker
    for table in sorted(os.listdir(os.path.join(lake, schema))):
        path = os.path.join(lake, schema, table)
        if os.path.isdir(os.path.join(path, "_delta_log")):
            con.register(f"{table}__changes", DeltaTable(path).to_pyarrow_table())

def current(table, key):
    # Last image per key by (_tw_seq, _tw_ord); deletes dropped (DESIGN §3).
    return f"""
      SELECT * EXCLUDE (rn) FROM (
        SELECT *, row_number() OVER (PARTITION BY {key} ORDER BY _tw_seq DESC, _tw_ord DESC) AS rn
        FROM {table}__changes) WHERE rn = 1 AND _tw_op <> 'd'"""

print(f"{'table':<14} {'changes':>8} {'r':>7} {'c':>6} {'u':>6} {'d':>5} {'current rows':>13}")
for table, key in [("customers", "id"), ("products", "id"), ("orders", "id"), ("order_items", "order_id, line")]:
    ops = dict(con.execute(f"SELECT _tw_op, count(*) FROM {table}__changes GROUP BY 1").fetchall())
    rows = con.execute(f"SELECT count(*) FROM ({current(table, key)})").fetchone()[0]
    print(f"{table:<14} {sum(ops.values()):>8} {ops.get('r', 0):>7} {ops.get('c', 0):>6} "
          f"{ops.get('u', 0):>6} {ops.get('d', 0):>5} {rows:>13}")

print("\ntop 5 customers by spend (current state of the lake):")
top = con.execute(f"""
    SELECT c.name, c.country, count(*) AS orders, sum(o.total) AS spend
    FROM ({current('orders', 'id')}) o JOIN ({current('customers', 'id')}) c ON c.id = o.customer_id
    GROUP BY ALL ORDER BY spend DESC, c.name LIMIT 5""").fetchall()
for name, country, orders, spend in top:
    print(f"  {name:<16} {country}  {orders:>3} orders  {spend:>10}")
lag = con.execute("SELECT max(_tw_commit_ts) FROM orders__changes").fetchone()[0]
print(f"\nnewest change in the lake committed at the source at {lag}")

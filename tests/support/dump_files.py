"""Prints every file under a directory as text a search can read: Parquet
files decoded (every value of every column, and the min/max statistics of
every column chunk), any other file as it is. One JSON object per file:
{"path": ..., "text": ...}. Compression can split a value in the raw bytes
(a Snappy back-reference), so a byte search alone proves nothing."""
import json
import os
import sys

import pyarrow.parquet as pq


def parquet_text(path):
    parts = []
    f = pq.ParquetFile(path)
    meta = f.metadata
    for g in range(meta.num_row_groups):
        group = meta.row_group(g)
        for c in range(group.num_columns):
            stats = group.column(c).statistics
            if stats is not None and stats.has_min_max:
                parts.append(f"{stats.min!r} {stats.max!r}")
    table = f.read()
    parts.append(json.dumps(table.to_pylist(), default=str))
    return "\n".join(parts)


def raw_text(path):
    with open(path, "rb") as f:
        return f.read().decode("latin-1")


# The pipeline may still be writing: a file can vanish between the listing
# and the read (a temporary file renamed into place), or be read while
# half written (then its raw bytes are searched).
for root, _, names in os.walk(sys.argv[1]):
    for name in names:
        path = os.path.join(root, name)
        try:
            try:
                text = parquet_text(path) if name.endswith(".parquet") else raw_text(path)
            except FileNotFoundError:
                raise
            except Exception:  # a Parquet file not complete yet
                text = raw_text(path)
        except FileNotFoundError:
            continue
        print(json.dumps({"path": path, "text": text}))

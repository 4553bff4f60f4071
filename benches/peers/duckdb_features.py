"""Runs an Encore feature plan's SQL on DuckDB over the same Parquet files.

The SQL comes from `plan-sql` (the text Encore runs); two DataFusion
function names are mapped to their DuckDB spellings, nothing else changes:
  to_unixtime(x)          -> epoch(x)           (seconds since 1970)
  last_value(x ORDER BY)  -> last(x ORDER BY)   (ordered aggregate)

  python duckdb_features.py --data DIR --sql plan.sql --out out.parquet
      [--threads 2] [--check encore.parquet --key user_id]

Prints one JSON line: seconds (query + Parquet write), rows, peak RSS of
this process. With --check, first verifies that the other engine's output
has the same rows and values (floats to 1e-6 relative or 2e-5 absolute:
DataFusion's to_unixtime counts whole seconds, DuckDB's epoch keeps the
milliseconds, so day counts may differ by under a second).
"""

import argparse
import json
import math
import os
import re
import resource
import sys
import time

import duckdb
import pyarrow.parquet as pq


def translate(sql: str) -> str:
    sql = re.sub(r"\bto_unixtime\(", "epoch(", sql)
    sql = re.sub(r"\blast_value\(", "last(", sql)
    return sql


def register(con, data: str) -> list:
    names = []
    for name in ["users", "items", "plays", "interactions", "payments"]:
        folder = os.path.join(data, name)
        if not os.path.isdir(folder):
            continue
        nested = any(e.startswith("day=") for e in os.listdir(folder))
        glob = os.path.join(folder, "*/*.parquet" if nested else "*.parquet")
        con.execute(
            f"CREATE VIEW {name} AS SELECT * FROM read_parquet('{glob}', hive_partitioning = {str(nested).lower()})"
        )
        names.append(name)
    return names


def same_tables(a: str, b: str, key: str) -> str:
    """Empty when equal; otherwise what differs."""
    ta = pq.read_table(a).sort_by(key)
    tb = pq.read_table(b).sort_by(key)
    if ta.num_rows != tb.num_rows:
        return f"rows: {ta.num_rows} vs {tb.num_rows}"
    if set(ta.column_names) != set(tb.column_names):
        return f"columns: {ta.column_names} vs {tb.column_names}"
    for name in ta.column_names:
        xs, ys = ta.column(name).to_pylist(), tb.column(name).to_pylist()
        for i, (x, y) in enumerate(zip(xs, ys)):
            if x == y:
                continue
            if isinstance(x, (int, float)) and isinstance(y, (int, float)):
                if math.isclose(x, y, rel_tol=1e-6, abs_tol=2e-5):
                    continue
            return f"{name} row {i}: {x!r} vs {y!r}"
    return ""


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", required=True)
    ap.add_argument("--sql", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--check", help="another engine's output to compare with")
    ap.add_argument("--key", default="user_id")
    ap.add_argument("--result", help="also write the JSON line to this file")
    args = ap.parse_args()

    con = duckdb.connect()
    con.execute("SET TimeZone = 'UTC'")
    con.execute(f"SET threads = {args.threads}")
    tables = register(con, args.data)
    sql = translate(open(args.sql).read())
    start = time.perf_counter()
    con.execute(f"COPY ({sql}) TO '{args.out}' (FORMAT parquet)")
    seconds = time.perf_counter() - start
    rows = pq.ParquetFile(args.out).metadata.num_rows
    result = {
        "engine": "duckdb",
        "version": duckdb.__version__,
        "threads": args.threads,
        "tables": tables,
        "seconds": round(seconds, 3),
        "rows": rows,
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
    }
    if args.check:
        diff = same_tables(args.check, args.out, args.key)
        result["same_as_encore"] = not diff
        if diff:
            result["difference"] = diff
    print(json.dumps(result))
    if args.result:
        with open(args.result, "w") as f:
            f.write(json.dumps(result) + "\n")
    if args.check and diff:
        sys.exit(f"duckdb and encore disagree: {diff}")


if __name__ == "__main__":
    main()

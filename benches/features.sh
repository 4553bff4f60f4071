#!/usr/bin/env bash
# The full user feature plan (plans::user_features_sql: activity, engagement,
# habits and profile joined per user) over generated data, one run on one
# machine, four ways on the same Parquet files:
#   Encore standalone (`encore sql --standalone`: in-process scheduler + executor)
#   Encore on a cluster: scheduler + 1 executor (2 slots), scheduler + 2 executors (1 slot each)
#   DuckDB (the Python package, benches/peers/duckdb_features.py), same SQL text
# Each engine runs alone; outputs are checked to agree row by row. The four
# runs are repeated --rounds times, in turn (this VM's timings vary by
# +-1-2 s from run to run); the summary gives each engine's median and range
# and the ratio of medians.
#
#   benches/features.sh [--users 130000] [--days 90] [--rounds 3] [--conf KEY=VALUE ...]
#
# --conf passes a session setting to every Encore run (`encore sql --conf`).
#
# Data is generated once into target/bench-data/ (kept between runs).
# Writes benches/results/features-<timestamp>.jsonl and prints a summary.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
source scripts/env.sh
scripts/setup.sh >/dev/null
pip install --quiet --disable-pip-version-check -r benches/peers/requirements.txt

USERS=130000 DAYS=90 START=2026-01-01 ROUNDS=3
CONF=()
while [ $# -gt 0 ]; do
    case "$1" in
        --users) USERS=$2; shift 2 ;;
        --days) DAYS=$2; shift 2 ;;
        --rounds) ROUNDS=$2; shift 2 ;;
        --conf) CONF+=(--conf "$2"); shift 2 ;;
        *) echo "unknown argument $1" >&2; exit 2 ;;
    esac
done
case "$ROUNDS" in
    '' | *[!0-9]* | 0) echo "--rounds must be a positive whole number, got '$ROUNDS'" >&2; exit 2 ;;
esac
CUTOFF=$(date -u -d "$START + $DAYS days" +%F)

echo "bench: building release binaries" >&2
benches/build.sh
TARGET=${CARGO_TARGET_DIR:-target}
BIN=$TARGET/release
DATA=$TARGET/bench-data/features-u$USERS-d$DAYS
if [ ! -f "$DATA/.complete" ]; then
    echo "bench: generating $USERS users x $DAYS days into $DATA" >&2
    rm -rf "$DATA"
    "$BIN/encore" datagen --users "$USERS" --days "$DAYS" --start "$START" --out "$DATA" >&2
    touch "$DATA/.complete"
fi

WORK=$(mktemp -d)
PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; rm -rf "$WORK"; }
trap cleanup EXIT

"$BIN/plan-sql" --cutoff "$CUTOFF" user_features >"$WORK/plan.sql"
TABLES=()
for t in plays users interactions payments; do TABLES+=(--table "$t=$DATA/$t"); done
PLAYS=$("$BIN/encore" sql "${TABLES[@]}" "SELECT count(*) AS n FROM plays" | grep -Eo '[0-9]{4,}' | head -1)
echo "bench: $PLAYS plays, cutoff $CUTOFF" >&2
# Same start for everyone: the files in the page cache, read again before
# each run (this VM's kernel reclaims idle page cache within a minute or two:
# an unwarmed run spent seconds reading Parquet from disk).
warm() { cat "$DATA"/*/*.parquet "$DATA"/plays/*/*.parquet >/dev/null; }

mkdir -p benches/results
OUT=benches/results/features-$(date -u +%Y%m%dT%H%M%SZ).jsonl
echo "{\"rounds\": $ROUNDS, \"machine\": \"$(nproc) cores, $(awk '/MemTotal/ {printf "%.0f GB", $2/1048576}' /proc/meminfo)\", \"users\": $USERS, \"days\": $DAYS, \"plays\": $PLAYS, \"cutoff\": \"$CUTOFF\", \"git\": \"$(git rev-parse --short HEAD)\", \"conf\": \"${CONF[*]}\"}" >"$OUT"
MEASURE="python benches/peers/measure.py"

standalone() {
    echo "bench: encore standalone" >&2
    warm
    $MEASURE encore-standalone -- "$BIN/encore" sql --standalone "${TABLES[@]}" "${CONF[@]}" \
        --out "$WORK/standalone.parquet" -- "$(cat "$WORK/plan.sql")" | tee -a "$OUT"
}

# cluster N SLOTS: scheduler + N executors with SLOTS task slots each.
cluster() {
    local n=$1 slots=$2 log pids=""
    log=$WORK/scheduler-$n.log
    "$BIN/encore-scheduler" --bind-host 127.0.0.1 --bind-port 0 --in-memory-jobs >"$log" 2>/dev/null &
    local scheduler=$!
    PIDS+=("$scheduler"); pids=$scheduler
    for _ in $(seq 1 300); do [ -s "$log" ] && break; sleep 0.1; done
    local addr
    addr=$(head -1 "$log" | grep -Eo '[0-9.]+:[0-9]+$')
    for i in $(seq 1 "$n"); do
        "$BIN/encore-executor" --scheduler-host 127.0.0.1 --scheduler-port "${addr##*:}" \
            --bind-port 0 --bind-grpc-port 0 --bind-health-port 0 --concurrent-tasks "$slots" \
            >"$WORK/executor-$n-$i.log" 2>/dev/null &
        PIDS+=($!); pids=$pids,$!
    done
    for _ in $(seq 1 300); do
        [ "$(curl -s "http://$addr/api/executors" | grep -o '"id"' | wc -l)" -ge "$n" ] && break
        sleep 0.1
    done
    echo "bench: encore cluster, $n executor(s) x $slots slot(s)" >&2
    warm
    $MEASURE "encore-cluster-${n}x${slots}" --pids "$pids" -- "$BIN/encore" sql --scheduler "df://$addr" \
        "${TABLES[@]}" "${CONF[@]}" --out "$WORK/cluster-$n.parquet" -- "$(cat "$WORK/plan.sql")" | tee -a "$OUT"
    kill ${pids//,/ } 2>/dev/null || true
    wait 2>/dev/null || true
}

peer_duckdb() {
    echo "bench: duckdb" >&2
    # Timed without --check: the comparison below is not DuckDB's work.
    warm
    $MEASURE duckdb-process -- python benches/peers/duckdb_features.py --data "$DATA" --sql "$WORK/plan.sql" \
        --out "$WORK/duckdb.parquet" --threads "$(nproc)" --result "$WORK/duckdb.json" | tee -a "$OUT"
    cat "$WORK/duckdb.json" >>"$OUT"
}

for round in $(seq 1 "$ROUNDS"); do
    echo "bench: round $round of $ROUNDS" >&2
    standalone
    cluster 1 2
    cluster 2 1
    peer_duckdb
done
for other in duckdb cluster-1 cluster-2; do
    python - "$WORK/standalone.parquet" "$WORK/$other.parquet" "$other" <<'PY'
import sys
sys.path.insert(0, "benches/peers")
from duckdb_features import same_tables
diff = same_tables(sys.argv[1], sys.argv[2], "user_id")
sys.exit(f"encore standalone and {sys.argv[3]} disagree: {diff}" if diff else 0)
PY
done

python - "$OUT" <<'PY'
import json, statistics, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
head = rows[0]
runs = {}
for r in rows[1:]:
    if "run" in r:
        runs.setdefault(r["run"], []).append(r)
query = [r["seconds"] for r in rows[1:] if r.get("engine") == "duckdb"]
duck = statistics.median(r["seconds"] for r in runs["duckdb-process"])
print(f"\nfull user feature plan: {head['plays']:,} plays, {head['users']:,} users, cutoff {head['cutoff']}, {head['machine']}")
print(f"{len(runs['duckdb-process'])} round(s); median wall time (range), median peak memory, ratio of medians")
print(f"{'engine':<24}{'wall s':>8}{'range':>14}{'peak MB':>9}{'x duckdb':>10}")
for name, rs in runs.items():
    secs = [r["seconds"] for r in rs]
    med = statistics.median(secs)
    peak = statistics.median(r["total_peak_rss_mb"] for r in rs)
    print(f"{name:<24}{med:>8.1f}{min(secs):>7.1f}-{max(secs):<6.1f}{peak:>9.0f}{med / duck:>10.2f}")
print(f"duckdb query alone: median {statistics.median(query):.1f} s ({min(query):.1f}-{max(query):.1f})")
PY
echo "results: $OUT" >&2

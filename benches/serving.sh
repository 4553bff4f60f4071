#!/usr/bin/env bash
# Side-by-side serving benchmark, one run on one machine:
#   Encore model server (release build)  vs  a Python grpcio + torch KServe
#   server (benches/peers/kserve_torch_server.py) serving the same
#   TorchScript files and online snapshot, and, as the floor under both,
#   kserve-echo (the same Rust gRPC stack answering without a model).
# Load: benches' `serving-load` (Rust, one thread, at nice -5: see below), closed-loop concurrency
# sweep per model, then open-loop runs (three) of Encore churn at half its best
# QPS (repeated at the default priority, on a 50 µs send grid, and with the
# server and the generator on a core each) and three each at 30, 35, 40 and
# 45% of it, then Arrow Flight batch
# scoring. Each server runs alone while measured;
# each result line carries the server's and the generator's CPU per request.
#
#   benches/serving.sh [--users 100000] [--items 100000] [--seconds 5] [--levels 1,2,4,...] [--no-build]
#
# --no-build uses the release binaries already built (they must match the
# checkout); Encore's recommend runs with its item index unless
# ENCORE_MODEL_SERVER_NO_ITEM_INDEX=true is set.
#
# Writes benches/results/serving-<timestamp>.jsonl and prints a summary
# (paste it into benches/RESULTS.md).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
source scripts/env.sh
scripts/setup.sh >/dev/null

USERS=100000 ITEMS=100000 SECONDS_PER_LEVEL=5 LEVELS=1,2,3,4,6,8,12,16,24,32,48,64
while [ $# -gt 0 ]; do
    case "$1" in
        --users) USERS=$2; shift 2 ;;
        --items) ITEMS=$2; shift 2 ;;
        --seconds) SECONDS_PER_LEVEL=$2; shift 2 ;;
        --levels) LEVELS=$2; shift 2 ;;
        --no-build) NO_BUILD=1; shift ;;
        *) echo "unknown argument $1" >&2; exit 2 ;;
    esac
done

if [ -z "${NO_BUILD:-}" ]; then
    echo "bench: building release binaries" >&2
    benches/build.sh
fi
BIN=${CARGO_TARGET_DIR:-target}/release

# The load generator runs above the servers' priority (nice -5 where this
# user may raise a priority). It shares the 2 cores with the server under
# test, and at the default priority the server's threads take its core
# often enough that it sends late and reads answers late, which it then
# reports as the server's latency (RESULTS.md, "The load generator's
# priority"). The server's own delays still count in full: a request that
# waits while the generator runs is measured as it waits. Every result line
# carries the generator's nice value; ENCORE_BENCH_GENERATOR_NICE=0 runs it
# at the default priority, and the half-max tries are repeated at the
# default priority either way.
GEN_NICE=${ENCORE_BENCH_GENERATOR_NICE:--5}
if ! [[ "$GEN_NICE" =~ ^-?[0-9]+$ ]]; then
    echo "ENCORE_BENCH_GENERATOR_NICE must be an integer nice value, got '$GEN_NICE'" >&2
    exit 2
fi
if [ "$(nice -n "$GEN_NICE" nice 2>/dev/null)" != "$(($(nice) + GEN_NICE))" ]; then
    echo "bench: cannot run the load generator at nice $GEN_NICE here; it runs at the default priority" >&2
    GEN_NICE=0
fi
# The generator's gRPC client (RESULTS.md, "One write per request"):
# tonic (the default; every run up to 24 used it) sends each request's
# HEADERS and DATA in two writes, h2 in one, as gRPC's C++, Go and Python
# clients do. ENCORE_BENCH_GRPC_CLIENT=h2 loads every server with it.
GRPC_CLIENT=${ENCORE_BENCH_GRPC_CLIENT:-tonic}
if [ "$GRPC_CLIENT" != tonic ] && [ "$GRPC_CLIENT" != h2 ]; then
    echo "ENCORE_BENCH_GRPC_CLIENT must be tonic or h2, got '$GRPC_CLIENT'" >&2
    exit 2
fi
# GEN_CPU=N pins one call's generator to CPU N.
load() { ${GEN_CPU:+taskset -c "$GEN_CPU"} nice -n "$GEN_NICE" "$BIN/serving-load" --client "$GRPC_CLIENT" "$@"; }

WORK=$(mktemp -d)
PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; rm -rf "$WORK"; }
trap cleanup EXIT

echo "bench: exporting models ($USERS users, $ITEMS items)" >&2
python benches/peers/export_models.py --registry "$WORK/registry" --users "$USERS" --items "$ITEMS" >&2

# Starts a server whose first stdout line ends with host:port; sets ADDR.
start() {
    local log=$1; shift
    "$@" >"$log" 2>"$log.err" &
    PIDS+=($!)
    for _ in $(seq 1 600); do
        if [ -s "$log" ]; then ADDR=$(head -1 "$log" | awk '{print $NF}'); return; fi
        sleep 0.1
    done
    echo "server did not start: $*" >&2; cat "$log.err" >&2; exit 1
}

mkdir -p benches/results
OUT=benches/results/serving-$(date -u +%Y%m%dT%H%M%SZ).jsonl
{
    echo "{\"machine\": \"$(nproc) cores, $(awk '/MemTotal/ {printf "%.0f GB", $2/1048576}' /proc/meminfo)\", \"users\": $USERS, \"items\": $ITEMS, \"seconds_per_level\": $SECONDS_PER_LEVEL, \"git\": \"$(git rev-parse --short HEAD)\", \"generator_nice\": $GEN_NICE, \"grpc_client\": \"$GRPC_CLIENT\"}"
} >"$OUT"

run_side() {
    local label=$1 models=${2:-churn recommend}
    for model in $models; do
        echo "bench: $label $model, concurrency $LEVELS" >&2
        load --addr "$ADDR" --model "$model" --users "$USERS" \
            --concurrency "$LEVELS" --seconds "$SECONDS_PER_LEVEL" --label "$label" \
            --server-pid "${PIDS[-1]}" | tee -a "$OUT" >&2
    done
}

metrics() { python -c 'import sys, urllib.request; print(urllib.request.urlopen("http://" + sys.argv[1] + "/metrics").read().decode())' "$ADDR"; }
# Items the server's exact item index holds for recommend (0: forward scores them).
index_items() { metrics | awk -v label="$1" '/^encore_model_server_item_index_items\{model="recommend"/ {printf "{\"label\": \"%s\", \"item_index_items\": %s}\n", label, $NF}'; }

start "$WORK/encore.out" "$BIN/encore-model-server" --registry "$WORK/registry" --bind-port 0 --poll-interval-seconds 0
index_items encore | tee -a "$OUT" >&2
run_side encore
best_churn=$(python - "$OUT" <<'PY'
import json, sys
rows = [r for r in (json.loads(l) for l in open(sys.argv[1]) if '"label"' in l) if "model" in r]
ok = [r["qps"] for r in rows if r["label"] == "encore" and r["model"] == "churn" and r["p99_ms"] < 5 and r["errors"] == 0]
print(int(max(ok)) if ok else 100)
PY
)
half=$((best_churn / 2))
# Three tries, each reported, and their median: on a shared 2-core machine
# one try can land in a spell where the generator itself is held off a core.
for try in 1 2 3; do
echo "bench: encore churn open loop at $half req/s (half of $best_churn), try $try of 3" >&2
# The server's own view of the same run: its request-latency histogram
# (decode to response, no network or client), read before and after.
metrics >"$WORK/metrics.before"
load --addr "$ADDR" --model churn --users "$USERS" --rate "$half" --seconds 10 --label encore-half-max \
    --server-pid "${PIDS[0]}" | tee -a "$OUT" >&2
metrics >"$WORK/metrics.after"
python - "$WORK/metrics.before" "$WORK/metrics.after" "$half" <<'PY' | tee -a "$OUT" >&2
import json, re, sys
def buckets(path):
    out = {}
    for line in open(path):
        m = re.match(r'encore_model_server_request_duration_seconds_bucket\{(.*)\} (\S+)', line)
        if m:
            labels = dict(re.findall(r'(\w+)="([^"]*)"', m.group(1)))
            if labels.get("model") == "churn" and labels.get("method") == "ModelInfer":
                out[float(labels["le"])] = float(m.group(2))
    return out
before, after = buckets(sys.argv[1]), buckets(sys.argv[2])
delta = sorted((le, after[le] - before.get(le, 0)) for le in after)
total = delta[-1][1]
p = {q: next(le for le, n in delta if n >= q * total) for q in (0.5, 0.99)}
print(json.dumps({"label": "encore-half-max-server-side", "rate": float(sys.argv[3]), "requests": total,
                  "p50_le_ms": p[0.5] * 1e3, "p99_le_ms": p[0.99] * 1e3}))
PY
done
# The same rate with the generator at the default priority, beside the
# server's threads (how runs up to 22 measured it).
if [ "$GEN_NICE" != 0 ]; then
    for try in 1 2 3; do
        echo "bench: encore churn open loop at $half req/s, generator at the default priority, try $try of 3" >&2
        "$BIN/serving-load" --addr "$ADDR" --model churn --users "$USERS" --rate "$half" --seconds 5 \
            --label encore-half-max-default-priority --server-pid "${PIDS[0]}" | tee -a "$OUT" >&2
    done
fi
# The same rate with the sender woken on a 50 µs grid (every request due by
# then sent at once): Linux's default timer slack, so what a sleep-paced
# generator such as perf_analyzer does. The lateness shows in the send lag.
for try in 1 2 3; do
    echo "bench: encore churn open loop at $half req/s, 50 us send grid, try $try of 3" >&2
    load --addr "$ADDR" --model churn --users "$USERS" --rate "$half" --seconds 5 \
        --tick-us 50 --label encore-half-max-tick50 --server-pid "${PIDS[0]}" | tee -a "$OUT" >&2
done
# Below half: the open-loop rates, as fractions of the best closed-loop QPS,
# at which churn's p99 stays under the 2 ms goal (three tries each).
for fraction in 30 35 40 45; do
    rate=$((best_churn * fraction / 100))
    for try in 1 2 3; do
        echo "bench: encore churn open loop at $rate req/s ($fraction% of $best_churn), try $try of 3" >&2
        load --addr "$ADDR" --model churn --users "$USERS" --rate "$rate" --seconds 5 \
            --label "encore-open-$fraction" --server-pid "${PIDS[0]}" | tee -a "$OUT" >&2
    done
done
echo "bench: encore Flight batch scoring" >&2
"$BIN/flight-throughput" --addr "$ADDR" --users 2000000 --snapshot-users "$USERS" | tee -a "$OUT" >&2
kill "${PIDS[0]}"; wait "${PIDS[0]}" 2>/dev/null || true

# Half max again with the server and the generator on cores of their own:
# a server started on CPU 0 alone (so its runtime sizes itself to that one
# core, as in a one-CPU container), the generator on CPU 1, as a load
# generator is best run: beside the server it measures, not among its
# threads. The server has one of the two cores it had when its best QPS
# was set.
if [ "$(nproc)" -ge 2 ] && command -v taskset >/dev/null; then
    start "$WORK/pinned.out" taskset -c 0 "$BIN/encore-model-server" --registry "$WORK/registry" --bind-port 0 --poll-interval-seconds 0
    for try in 1 2 3; do
        echo "bench: encore churn open loop at $half req/s, server on CPU 0 and generator on CPU 1, try $try of 3" >&2
        GEN_CPU=1 load --addr "$ADDR" --model churn --users "$USERS" --rate "$half" --seconds 5 \
            --label encore-half-max-own-cores --server-pid "${PIDS[-1]}" | tee -a "$OUT" >&2
    done
    kill "${PIDS[-1]}"; wait "${PIDS[-1]}" 2>/dev/null || true
else
    echo "bench: fewer than 2 cores or no taskset: no run with the server and generator on cores of their own" >&2
fi

# The same server letting the module's forward score every item: what the
# item index is worth, apart from the server loop.
start "$WORK/forward.out" "$BIN/encore-model-server" --registry "$WORK/registry" --bind-port 0 --poll-interval-seconds 0 --no-item-index
run_side encore-forward recommend
kill "${PIDS[-1]}"; wait "${PIDS[-1]}" 2>/dev/null || true

start "$WORK/python.out" python benches/peers/kserve_torch_server.py --registry "$WORK/registry" --port 0 --workers 8 --torch-threads 1
run_side python
kill "${PIDS[-1]}"; wait "${PIDS[-1]}" 2>/dev/null || true

# The floor under both: a KServe server with no model (kserve-echo answers
# every ModelInfer with a fixed churn-shaped response), the same load.
start "$WORK/echo.out" "$BIN/kserve-echo"
run_side echo churn
echo "bench: echo churn open loop at $half req/s" >&2
load --addr "$ADDR" --model churn --users "$USERS" --rate "$half" --seconds 10 --label echo-half-max \
    --server-pid "${PIDS[-1]}" | tee -a "$OUT" >&2
kill "${PIDS[-1]}"; wait "${PIDS[-1]}" 2>/dev/null || true

python - "$OUT" <<'PY'
import json, sys
lines = [json.loads(l) for l in open(sys.argv[1])]
meta, rows = lines[0], lines[1:]
print(f"machine: {meta['machine']}; {meta['users']} users, {meta['items']} items; {meta['seconds_per_level']} s per level; commit {meta['git']}; "
      f"load generator at nice {meta.get('generator_nice', 0)}, gRPC client {meta.get('grpc_client', 'tonic')}")
print()
def cpu(r, side):
    v = r.get(f"{side}_cpu_us_per_request")
    return f"{v:.0f}" if v is not None else "-"
print("| model | server | concurrency | QPS | p50 ms | p99 ms | errors | server CPU µs/req | load generator CPU µs/req |")
print("|---|---|---:|---:|---:|---:|---:|---:|---:|")
for r in rows:
    if "concurrency" in r:
        print(f"| {r['model']} | {r['label']} | {r['concurrency']} | {r['qps']:.0f} | {r['p50_ms']:.2f} | {r['p99_ms']:.2f} | {r['errors']} | {cpu(r, 'server')} | {cpu(r, 'client')} |")
print()
best = {}
for r in rows:
    if "concurrency" in r and r["p99_ms"] < 5 and r["errors"] == 0:
        key = (r["model"], r["label"])
        if r["qps"] > best.get(key, (0,))[0]:
            best[key] = (r["qps"], r["p99_ms"], r["concurrency"])
print("| model | Encore max QPS (p99 < 5 ms) | Python max QPS (p99 < 5 ms) | ratio |")
print("|---|---:|---:|---:|")
for model, label in [("churn", "encore"), ("recommend", "encore"), ("recommend", "encore-forward")]:
    e = best.get((model, label), (0, 0, 0)); p = best.get((model, "python"), (0, 0, 0))
    ratio = e[0] / p[0] if p[0] else float("inf")
    name = model if label == "encore" else f"{model} ({label})"
    print(f"| {name} | {e[0]:.0f} (p99 {e[1]:.2f} ms, c={e[2]}) | {p[0]:.0f} (p99 {p[1]:.2f} ms, c={p[2]}) | {ratio:.1f}x |")
# At equal p99: for every level Python ran, Encore's highest QPS at a p99 no
# higher than Python's there. The headline is the row of Python's highest
# QPS with p99 < 5 ms: the goal's operating point, matched on p99 exactly.
print()
print("At equal p99 (each Python level against Encore's best QPS at a p99 no higher):")
print()
print("| model | Python QPS (p99 ms, c) | Encore QPS (p99 ms, c) | ratio |")
print("|---|---:|---:|---:|")
for model in ("churn", "recommend"):
    py = [r for r in rows if "concurrency" in r and r["model"] == model and r["label"] == "python" and r["errors"] == 0]
    en = [r for r in rows if "concurrency" in r and r["model"] == model and r["label"] == "encore" and r["errors"] == 0]
    ratios = {}
    for p in py:
        fit = [e for e in en if e["p99_ms"] <= p["p99_ms"]]
        if not fit:
            print(f"| {model} | {p['qps']:.0f} ({p['p99_ms']:.2f}, c={p['concurrency']}) | none at p99 <= {p['p99_ms']:.2f} | - |")
            continue
        e = max(fit, key=lambda r: r["qps"])
        ratios[p["concurrency"]] = e["qps"] / p["qps"]
        print(f"| {model} | {p['qps']:.0f} ({p['p99_ms']:.2f}, c={p['concurrency']}) | {e['qps']:.0f} ({e['p99_ms']:.2f}, c={e['concurrency']}) | {ratios[p['concurrency']]:.1f}x |")
    under = [p for p in py if p["p99_ms"] < 5]
    if under:
        p = max(under, key=lambda r: r["qps"])
        if p["concurrency"] in ratios:
            print(f"| {model} | at Python's best under 5 ms (c={p['concurrency']}) | | **{ratios[p['concurrency']]:.1f}x** |")
    else:
        print(f"| {model} | Python never had p99 < 5 ms | | - |")
echo = {r["concurrency"]: r for r in rows if "concurrency" in r and r["label"] == "echo"}
if echo:
    print()
    print("Against the floor (kserve-echo: the same gRPC stack and load, no model, batching or metrics):")
    print()
    print("| concurrency | Encore churn QPS (p99 ms) | echo QPS (p99 ms) | Encore / echo |")
    print("|---:|---:|---:|---:|")
    for r in rows:
        if "concurrency" in r and r["label"] == "encore" and r["model"] == "churn" and r["concurrency"] in echo:
            f = echo[r["concurrency"]]
            print(f"| {r['concurrency']} | {r['qps']:.0f} ({r['p99_ms']:.2f}) | {f['qps']:.0f} ({f['p99_ms']:.2f}) | {r['qps'] / f['qps']:.2f} |")
for r in rows:
    if r["label"] in ("encore-half-max", "echo-half-max") and "p99_ms" in r:
        who = "kserve-echo (no model)" if r["label"].startswith("echo") else "Encore"
        print(f"\n{who} churn open loop at {r['rate']:.0f} req/s, client view: p50 {r['p50_ms']:.3f} ms, p99 {r['p99_ms']:.3f} ms, {r['errors']} errors "
              f"(client send lag p99 {r.get('send_lag_p99_ms', 0):.2f} ms; CPU per request: server {cpu(r, 'server')} µs, load generator {cpu(r, 'client')} µs; "
              f"preemptions per request: server {r.get('server_preempted_per_request', float('nan')):.3f}, load generator {r.get('client_preempted_per_request', float('nan')):.3f})")
    if "p99_le_ms" in r:
        print(f"Same run, server view (request histogram, bucket bounds): p50 <= {r['p50_le_ms']:.3f} ms, p99 <= {r['p99_le_ms']:.3f} ms over {r['requests']:.0f} requests")
    if "item_index_items" in r:
        print(f"\nEncore recommend item index: {r['item_index_items']} items")
    if "users_per_second" in r:
        print(f"Encore Flight batch churn scoring: {r['users']} users in {r['seconds']:.2f} s = {r['users_per_second']/1e6:.2f} M users/s (batches of {r['batch_rows']})")
# The same question asked of the closed loop that set the best QPS: the
# first Encore churn level whose throughput reaches half of the best.
best_churn = best.get(("churn", "encore"))
if best_churn:
    closed = sorted((r for r in rows if "concurrency" in r and r["label"] == "encore" and r["model"] == "churn"
                     and r["errors"] == 0 and r["qps"] >= best_churn[0] / 2), key=lambda r: r["qps"])
    if closed:
        r = closed[0]
        print(f"\nEncore churn closed loop at half its best QPS ({best_churn[0] / 2:.0f}): first level at or above it c={r['concurrency']}, "
              f"{r['qps']:.0f} QPS ({100 * r['qps'] / best_churn[0]:.0f}% of best), p50 {r['p50_ms']:.3f} ms, p99 {r['p99_ms']:.3f} ms")
sweep = {}
for r in rows:
    if r.get("label", "").startswith("encore-open-") and "p99_ms" in r:
        sweep.setdefault(int(r["label"].rsplit("-", 1)[1]), []).append(r)
if sweep:
    print("\nEncore churn open loop below half the best QPS (three tries per rate; goal p99 < 2 ms):\n")
    print("| share of best QPS | rate req/s | p99 ms (tries) | median p99 ms | server / generator CPU µs per request |")
    print("|---:|---:|---|---:|---:|")
    for fraction, runs in sorted(sweep.items()):
        p99s = sorted(r["p99_ms"] for r in runs)
        print(f"| {fraction}% | {runs[0]['rate']:.0f} | {', '.join(f'{x:.2f}' for x in p99s)} | {p99s[len(p99s) // 2]:.2f} | "
              f"{cpu(runs[0], 'server')} / {cpu(runs[0], 'client')} |")
tries = sorted(r["p99_ms"] for r in rows if r["label"] == "encore-half-max")
if tries:
    print(f"\nEncore churn open loop, client p99 over {len(tries)} tries: median {tries[len(tries) // 2]:.3f} ms "
          f"(all: {', '.join(f'{t:.2f}' for t in tries)}; goal < 2 ms)")
# The half-max rate's repeats: each set's p99 median, every try's p99 and send lag.
def repeats(label, title, extra=lambda tries: ""):
    tries = sorted((r for r in rows if r["label"] == label), key=lambda r: r["p99_ms"])
    if tries:
        print(f"Same rate, {title}: p99 median {tries[len(tries) // 2]['p99_ms']:.3f} ms "
              f"(all: {', '.join('%.2f' % r['p99_ms'] for r in tries)}; "
              f"send lag p99 {', '.join('%.2f' % r['send_lag_p99_ms'] for r in tries)} ms{extra(tries)})")
repeats("encore-half-max-default-priority", "generator at the default priority")
repeats("encore-half-max-own-cores", "a server started on CPU 0 alone and the generator on CPU 1",
        lambda tries: "; server preemptions per request "
        + ", ".join("%.3f" % r.get("server_preempted_per_request", float("nan")) for r in tries))
repeats("encore-half-max-tick50", "sender on a 50 µs grid",
        lambda tries: f"; generator CPU {cpu(tries[0], 'client')} µs per request")
PY
echo "bench: raw results in $OUT" >&2

//! Arrow Flight batch scoring with the real `pyarrow.flight` client.

use crate::fixtures::*;

const FLIGHT_CLIENT: &str = r#"
import json, math, sys
import pyarrow as pa
import pyarrow.flight as fl

c = fl.connect("grpc://" + sys.argv[1])
infos = {f.descriptor.path[0].decode(): f for f in c.list_flights()}
assert sorted(infos) == ["churn", "recommend"], infos
assert infos["churn"].schema.names == ["user_id", "churn_7d", "churn_15d", "churn_30d", "risk_tier", "fallback"], infos["churn"].schema
meta = json.loads(c.get_flight_info(fl.FlightDescriptor.for_path("churn")).app_metadata)
assert meta["version"] == 1 and meta["kind"] == "churn", meta
assert c.get_schema(fl.FlightDescriptor.for_path("recommend")).schema.field("item_ids").type == pa.list_(pa.int64())

def exchange(descriptor, batches):
    writer, reader = c.do_exchange(descriptor)
    writer.begin(batches[0].schema)
    for b in batches:
        writer.write_batch(b)
    writer.done_writing()
    table = reader.read_all()
    writer.close()
    return table

# churn by user id, two batches, one unknown user
b1 = pa.record_batch([pa.array(list(range(1, 101)), pa.int64())], names=["user_id"])
b2 = pa.record_batch([pa.array([999999, 100], pa.int64())], names=["user_id"])
t = exchange(fl.FlightDescriptor.for_path("churn"), [b1, b2])
assert t.num_rows == 102, t.num_rows
assert t.column("user_id").to_pylist()[-2:] == [999999, 100]
fallback = t.column("fallback").to_pylist()
assert fallback.count(True) == 1 and fallback[100], fallback
p30 = t.column("churn_30d").to_pylist()
x = 100 * 0.05 - 2.5 + 0.5 - 0.25
assert abs(p30[-1] - 1 / (1 + math.exp(-x))) < 1e-6, p30[-1]
assert abs(p30[-2] - 0.2) < 1e-6
assert set(t.column("risk_tier").to_pylist()) <= {"low", "medium", "high"}

# churn by feature columns (any numeric type), chosen by a JSON command
feats = pa.record_batch(
    [pa.array([0.5, 0.0], pa.float64()), pa.array([-1.0, 0.0], pa.float32()), pa.array([2, -3], pa.int32())],
    names=["recency", "frequency", "monetary"])
t = exchange(fl.FlightDescriptor.for_command(json.dumps({"model": "churn", "version": "1"})), [feats])
assert t.schema.names == ["churn_7d", "churn_15d", "churn_30d", "risk_tier", "fallback"], t.schema
assert t.column("risk_tier").to_pylist() == ["high", "low"]

# recommend with k from the command
users = pa.record_batch([pa.array([3, 4242], pa.int64()), pa.array(["mobile", "car"])], names=["user_id", "device"])
t = exchange(fl.FlightDescriptor.for_command(json.dumps({"model": "recommend", "k": 3})), [users])
assert t.column("item_ids").to_pylist() == [[1099, 1095, 1091], [1050, 1051, 1052]], t.column("item_ids")
assert t.column("fallback").to_pylist() == [False, True]

# errors name the problem
for descriptor, batch, needle in [
    (fl.FlightDescriptor.for_path("nope"), b2, "model 'nope'"),
    (fl.FlightDescriptor.for_path("churn"), pa.record_batch([pa.array(["a"])], names=["user_id"]), "column 'user_id'"),
    (fl.FlightDescriptor.for_path("churn"), pa.record_batch([pa.array([1.0])], names=["recency"]), "'frequency' is missing"),
    (fl.FlightDescriptor.for_command(b"{not json"), b2, "not JSON"),
]:
    try:
        exchange(descriptor, [batch])
        raise SystemExit(f"accepted: {descriptor}")
    except pa.ArrowException as e:
        assert needle in str(e), (needle, str(e))
print("flight ok")
"#;

#[tokio::test]
async fn pyarrow_flight_scores_batches_and_lists_models() {
    let (registry, server) = churn_and_recommend().await;
    let addr = server.addr().to_string();
    let dir = registry.path().to_path_buf();
    let text = tokio::task::spawn_blocking(move || {
        run_python(&dir, "flight_client.py", FLIGHT_CLIENT, &[&addr])
    })
    .await
    .unwrap();
    assert!(text.contains("flight ok"), "{text}");
}

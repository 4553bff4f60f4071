//! `clean_plays`: each rule on hand-made rows, with the counts worked out by hand.

use std::sync::Arc;

use arrow::array::{
    ArrayRef, Int32Array, Int64Array, RecordBatch, StringArray, TimestampMillisecondArray,
};
use arrow::datatypes::{DataType, Field, Schema};
use datafusion::prelude::SessionContext;
use encore_features::clean::{CleanConfig, clean_plays};
use encore_features::datagen::write_parquet;
use encore_features::schema::timestamp_ms;

fn ms(text: &str) -> i64 {
    chrono::DateTime::parse_from_rfc3339(text)
        .unwrap()
        .timestamp_millis()
}

/// Raw plays (played_secs may be missing) as one file of a day partition.
fn write(dir: &std::path::Path, day: &str, rows: &[(i64, i64, &str, Option<i32>, i32)]) {
    let schema = Arc::new(Schema::new(vec![
        Field::new("user_id", DataType::Int64, false),
        Field::new("item_id", DataType::Int64, false),
        Field::new("ts", timestamp_ms(), false),
        Field::new("played_secs", DataType::Int32, true),
        Field::new("item_secs", DataType::Int32, false),
        Field::new("source", DataType::Utf8, false),
        Field::new("device", DataType::Utf8, false),
        Field::new("region", DataType::Utf8, true),
    ]));
    let n = rows.len();
    let batch = RecordBatch::try_new(
        schema,
        vec![
            Arc::new(Int64Array::from_iter_values(rows.iter().map(|r| r.0))) as ArrayRef,
            Arc::new(Int64Array::from_iter_values(rows.iter().map(|r| r.1))),
            Arc::new(
                TimestampMillisecondArray::from_iter_values(rows.iter().map(|r| ms(r.2)))
                    .with_timezone("UTC"),
            ),
            Arc::new(Int32Array::from_iter(rows.iter().map(|r| r.3))),
            Arc::new(Int32Array::from_iter_values(rows.iter().map(|r| r.4))),
            Arc::new(StringArray::from(vec!["search"; n])),
            Arc::new(StringArray::from(vec!["mobile"; n])),
            Arc::new(StringArray::from(vec![Some("eu"); n])),
        ],
    )
    .unwrap();
    write_parquet(
        &dir.join(format!("plays/day={day}")),
        &format!("part-{}.parquet", rows.len()),
        batch,
    )
    .unwrap();
}

#[tokio::test]
async fn every_rule_is_applied_and_counted() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("raw");
    let day = "2026-01-01";
    let mut rows = vec![
        (1, 1, "2026-01-01T08:00:00Z", Some(100), 200), // kept
        (1, 1, "2026-01-01T08:00:00Z", Some(100), 200), // exact duplicate
        (1, 2, "2026-01-01T09:00:00Z", Some(-5), 200),  // impossible: negative
        (1, 3, "2026-01-01T10:00:00Z", None, 200),      // imputed: user 1's mean, 100
        (2, 1, "2026-01-01T11:00:00Z", Some(50), 0),    // impossible: item_secs 0
        (4, 9, "2026-01-01T13:00:00Z", None, 200),      // unimputable: user 4 has no other play
    ];
    for minute in 0..5 {
        rows.push((
            3,
            10 + minute,
            [
                "2026-01-01T12:00:00Z",
                "2026-01-01T12:10:00Z",
                "2026-01-01T12:20:00Z",
                "2026-01-01T12:30:00Z",
                "2026-01-01T12:40:00Z",
            ][minute as usize],
            Some(30),
            200,
        ));
    } // bot: 5 plays in one hour
    write(&data, day, &rows);
    write(&data, day, &[(5, 1, "2026-01-02T10:00:00Z", Some(10), 200)]); // ts outside its day
    let out = dir.path().join("clean");
    let config = CleanConfig {
        max_plays_per_hour: 3,
        ..Default::default()
    };
    let report = clean_plays(&SessionContext::new(), &data, &out, &config)
        .await
        .unwrap();
    let expected: Vec<(&str, u64)> = vec![
        ("bot_plays", 5),
        ("bot_users", 1),
        ("exact_duplicates", 1),
        ("impossible_values", 3),
        ("imputed_played_secs", 1),
        ("rows_in", 12),
        ("rows_out", 2),
        ("unimputable_played_secs", 1),
    ];
    let got: Vec<(&str, u64)> = report.iter().map(|(k, v)| (k.as_str(), *v)).collect();
    assert_eq!(got, expected);
    let saved: std::collections::BTreeMap<String, u64> =
        serde_json::from_str(&std::fs::read_to_string(out.join("clean_report.json")).unwrap())
            .unwrap();
    assert_eq!(saved, report);

    // The cleaned table: user 1's two plays, the missing one imputed to 100.
    let ctx = SessionContext::new();
    encore_features::tables::register(
        &ctx,
        &encore_features::tables::TableSource {
            name: "plays".into(),
            path: out.join("plays"),
        },
    )
    .await
    .unwrap();
    let batches = ctx
        .sql("SELECT user_id, item_id, played_secs FROM plays ORDER BY item_id")
        .await
        .unwrap()
        .collect()
        .await
        .unwrap();
    let text = arrow::util::pretty::pretty_format_batches(&batches)
        .unwrap()
        .to_string();
    assert!(
        text.contains("| 1       | 1       | 100         |"),
        "{text}"
    );
    assert!(
        text.contains("| 1       | 3       | 100         |"),
        "{text}"
    );
    assert_eq!(
        batches.iter().map(|b| b.num_rows()).sum::<usize>(),
        2,
        "{text}"
    );

    // Cleaning into an existing table is refused.
    assert!(
        clean_plays(&SessionContext::new(), &data, &out, &config)
            .await
            .is_err()
    );
}

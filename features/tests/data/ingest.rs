//! `ingest`: appending a batch to a table a cluster may be reading.

use datafusion::prelude::SessionContext;
use encore_features::datagen::{DataSpec, generate};
use encore_features::ingest::ingest;
use encore_features::tables::{TableSource, register};

async fn count(data: &std::path::Path, filter: &str) -> i64 {
    let ctx = SessionContext::new();
    register(
        &ctx,
        &TableSource {
            name: "plays".into(),
            path: data.join("plays"),
        },
    )
    .await
    .unwrap();
    let batches = ctx
        .sql(&format!("SELECT count(*) AS n FROM plays {filter}"))
        .await
        .unwrap()
        .collect()
        .await
        .unwrap();
    let n = batches[0]
        .column(0)
        .as_any()
        .downcast_ref::<arrow::array::Int64Array>()
        .unwrap();
    n.value(0)
}

#[tokio::test]
async fn a_batch_lands_in_its_day_partitions_once() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let spec = DataSpec {
        users: 20,
        items: 50,
        days: 2,
        ..Default::default()
    };
    generate(&spec, &data, |_, _| {}).unwrap();
    let before = count(&data, "").await;
    let csv = dir.path().join("batch.csv");
    std::fs::write(
        &csv,
        "user_id,item_id,ts,played_secs,item_secs,source,device,region\n\
         1,2,2026-01-01T08:00:00Z,30,200,search,mobile,eu\n\
         1,3,2026-01-01T09:00:00Z,200,200,playlist,mobile,eu\n\
         2,4,2026-03-05T21:30:00Z,12,180,radio,car,\n",
    )
    .unwrap();
    let report = ingest("plays", &csv, &data).await.unwrap();
    assert_eq!(
        (report.rows, report.files.len(), report.duplicate),
        (3, 2, false)
    );
    assert_eq!(count(&data, "").await, before + 3);
    assert_eq!(
        count(&data, "WHERE day = '2026-03-05'").await,
        1,
        "a new day partition"
    );
    // The same batch again adds nothing.
    let again = ingest("plays", &csv, &data).await.unwrap();
    assert!(again.duplicate && again.files.is_empty());
    assert_eq!(count(&data, "").await, before + 3);

    // Bad batches are refused whole, naming the problem.
    let bad = dir.path().join("bad.csv");
    std::fs::write(
        &bad,
        "user_id,item_id,ts,played_secs,source,device\n1,2,2026-01-01T08:00:00Z,30,search,mobile\n",
    )
    .unwrap();
    let err = ingest("plays", &bad, &data).await.unwrap_err().to_string();
    assert!(err.contains("column 'item_secs' is missing"), "{err}");
    std::fs::write(&bad, "user_id,item_id,ts,played_secs,item_secs,source,device,email\n1,2,2026-01-01T08:00:00Z,30,100,search,mobile,a@b.c\n").unwrap();
    let err = ingest("plays", &bad, &data).await.unwrap_err().to_string();
    assert!(
        err.contains("column 'email' is not a column of plays"),
        "{err}"
    );
    std::fs::write(&bad, "user_id,item_id,ts,played_secs,item_secs,source,device\n1,2,2026-01-01T08:00:00Z,30,100,telepathy,mobile\n").unwrap();
    let err = ingest("plays", &bad, &data).await.unwrap_err().to_string();
    assert!(
        err.contains("column source, row 0: 'telepathy' is not one of"),
        "{err}"
    );
    assert_eq!(count(&data, "").await, before + 3);
}

#[tokio::test]
async fn daily_activity_is_derived_from_plays_with_the_canonical_schema() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    std::fs::create_dir_all(&data).unwrap();
    let csv = dir.path().join("batch.csv");
    std::fs::write(
        &csv,
        "user_id,item_id,ts,played_secs,item_secs,source,device\n\
         1,2,2026-01-01T08:00:00Z,200,200,search,mobile\n\
         1,2,2026-01-01T09:00:00Z,30,200,search,mobile\n\
         1,3,2026-01-01T10:00:00Z,150,200,search,mobile\n\
         1,3,2026-01-02T10:00:00Z,199,200,search,mobile\n",
    )
    .unwrap();
    ingest("plays", &csv, &data).await.unwrap();
    let ctx = SessionContext::new();
    register(
        &ctx,
        &TableSource {
            name: "plays".into(),
            path: data.join("plays"),
        },
    )
    .await
    .unwrap();
    let batches = encore_features::derive::daily_activity(&ctx)
        .await
        .unwrap()
        .sort_by(vec![datafusion::prelude::col("date")])
        .unwrap()
        .collect()
        .await
        .unwrap();
    let text = arrow::util::pretty::pretty_format_batches(&batches)
        .unwrap()
        .to_string();
    // Day 1: 3 plays, 1 completed (200/200), 1 skip (30 < 100), 2 songs, 380 s.
    assert!(
        text.contains(
            "| 1       | 2026-01-01 | 3     | 1               | 1     | 2            | 380.0      |"
        ),
        "{text}"
    );
    // Day 2: 199/200 is 99.5 %: completed.
    assert!(
        text.contains(
            "| 1       | 2026-01-02 | 1     | 1               | 0     | 1            | 199.0      |"
        ),
        "{text}"
    );
    let batch = arrow::compute::concat_batches(&batches[0].schema(), &batches).unwrap();
    let names: Vec<String> = batch
        .schema()
        .fields()
        .iter()
        .map(|f| f.name().clone())
        .collect();
    let canonical: Vec<String> = encore_features::schema::daily_activity()
        .fields()
        .iter()
        .map(|f| f.name().clone())
        .collect();
    assert_eq!(names, canonical);
}

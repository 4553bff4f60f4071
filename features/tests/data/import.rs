//! Golden tests of the importers on small fixtures in each source's original
//! format (`fixtures/`), with the expected canonical rows worked out by hand.

use std::path::{Path, PathBuf};

use arrow::array::{Array, AsArray, RecordBatch};
use arrow::compute::concat_batches;
use arrow::datatypes::{
    Date32Type, Float32Type, Float64Type, Int32Type, Int64Type, TimestampMillisecondType,
};
use encore_features::import::{IdKey, ImportOptions, cdnow, kkbox, movielens};
use encore_features::schema;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data/fixtures")
        .join(name)
}

/// Every part file of `table` under `out`, in order, as one batch.
fn read(out: &Path, table: &str) -> RecordBatch {
    let mut parts: Vec<PathBuf> = std::fs::read_dir(out.join(table))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    parts.sort();
    let batches: Vec<RecordBatch> = parts
        .iter()
        .flat_map(|p| {
            ParquetRecordBatchReaderBuilder::try_new(std::fs::File::open(p).unwrap())
                .unwrap()
                .build()
                .unwrap()
                .map(Result::unwrap)
        })
        .collect();
    let batch = concat_batches(&batches[0].schema(), &batches).unwrap();
    assert_eq!(
        batch.schema(),
        schema::by_name(table).unwrap(),
        "{table} schema"
    );
    batch
}

fn i64s(b: &RecordBatch, c: &str) -> Vec<i64> {
    b.column_by_name(c)
        .unwrap()
        .as_primitive::<Int64Type>()
        .values()
        .to_vec()
}

fn strings(b: &RecordBatch, c: &str) -> Vec<Option<String>> {
    b.column_by_name(c)
        .unwrap()
        .as_string::<i32>()
        .iter()
        .map(|v| v.map(str::to_owned))
        .collect()
}

fn day_ms(y: i32, m: u32, d: u32) -> i64 {
    chrono::NaiveDate::from_ymd_opt(y, m, d)
        .unwrap()
        .and_hms_opt(0, 0, 0)
        .unwrap()
        .and_utc()
        .timestamp_millis()
}

#[test]
fn cdnow_purchases_become_payments_and_users() {
    let out = tempfile::tempdir().unwrap();
    let report = cdnow::import(
        &fixture("cdnow/CDNOW_master.txt"),
        out.path(),
        &ImportOptions::default(),
    )
    .unwrap();
    assert_eq!(
        report.tables,
        vec![("payments".to_owned(), 5), ("users".to_owned(), 3)]
    );
    let payments = read(out.path(), "payments");
    assert_eq!(i64s(&payments, "user_id"), [1, 2, 2, 3, 3]);
    let amount = payments
        .column_by_name("amount")
        .unwrap()
        .as_primitive::<Float64Type>();
    assert_eq!(amount.values().to_vec(), [11.77, 12.0, 77.0, 20.76, 20.76]);
    let quantity = payments
        .column_by_name("quantity")
        .unwrap()
        .as_primitive::<Int32Type>();
    assert_eq!(quantity.values().to_vec(), [1, 1, 5, 2, 2]);
    let ts = payments
        .column_by_name("ts")
        .unwrap()
        .as_primitive::<TimestampMillisecondType>();
    assert_eq!(ts.value(0), day_ms(1997, 1, 1));
    assert_eq!(
        strings(&payments, "product"),
        vec![Some("cd".to_owned()); 5]
    );
    assert!(payments.column_by_name("plan_days").unwrap().is_null(0));
    let users = read(out.path(), "users");
    assert_eq!(i64s(&users, "user_id"), [1, 2, 3]);
    let registered = users
        .column_by_name("registered_at")
        .unwrap()
        .as_primitive::<TimestampMillisecondType>();
    assert_eq!(
        registered.value(2),
        day_ms(1997, 1, 2),
        "first purchase of customer 3"
    );
}

fn check_movielens(out: &Path) {
    let interactions = read(out, "interactions");
    assert_eq!(i64s(&interactions, "user_id"), [196, 186, 196]);
    assert_eq!(i64s(&interactions, "item_id"), [242, 302, 1]);
    let value = interactions
        .column_by_name("value")
        .unwrap()
        .as_primitive::<Float32Type>();
    assert_eq!(value.values().to_vec(), [3.0, 3.0, 5.0]);
    let ts = interactions
        .column_by_name("ts")
        .unwrap()
        .as_primitive::<TimestampMillisecondType>();
    assert_eq!(ts.value(0), 881_250_949_000);
    assert_eq!(
        strings(&interactions, "kind"),
        vec![Some("rating".to_owned()); 3]
    );
    let items = read(out, "items");
    assert_eq!(i64s(&items, "item_id"), [1, 242, 267, 302]);
    assert_eq!(
        strings(&items, "genre"),
        ["Animation", "Comedy", "unknown", "Crime"].map(|g| Some(g.to_owned()))
    );
    let released = items
        .column_by_name("release_date")
        .unwrap()
        .as_primitive::<Date32Type>();
    assert!(released.is_null(2), "item 267 has no usable release date");
    let users = read(out, "users");
    assert_eq!(i64s(&users, "user_id"), [186, 196]);
    let years = users
        .column_by_name("birth_year")
        .unwrap()
        .as_primitive::<Int32Type>();
    assert_eq!(years.values().to_vec(), [1998 - 39, 1998 - 49]);
    assert_eq!(
        strings(&users, "gender"),
        [Some("F".to_owned()), Some("M".to_owned())]
    );
    let registered = users
        .column_by_name("registered_at")
        .unwrap()
        .as_primitive::<TimestampMillisecondType>();
    assert_eq!(
        registered.value(1),
        881_250_000_000,
        "user 196's first rating"
    );
    assert!(
        users.column_by_name("city").unwrap().is_null(0),
        "zip codes are not kept"
    );
}

#[test]
fn movielens_recbole_and_grouplens_files_give_the_same_tables() {
    for source in ["movielens-recbole", "movielens-grouplens"] {
        let out = tempfile::tempdir().unwrap();
        let report =
            movielens::import(&fixture(source), out.path(), &ImportOptions::default()).unwrap();
        assert_eq!(report.rejected, 0, "{source}");
        check_movielens(out.path());
    }
}

#[test]
fn kkbox_members_transactions_logs_and_labels() {
    let out = tempfile::tempdir().unwrap();
    let key = IdKey::from_secret("test key, not a secret anywhere").unwrap();
    let options = ImportOptions {
        id_key: Some(key.clone()),
        ..Default::default()
    };
    let report = kkbox::import(&fixture("kkbox"), out.path(), &options).unwrap();
    assert_eq!(
        report
            .tables
            .iter()
            .map(|(t, n)| (t.as_str(), *n))
            .collect::<Vec<_>>(),
        [
            ("users", 3),
            ("payments", 3),
            ("daily_activity", 2),
            ("subscription_labels", 2)
        ]
    );
    assert_eq!(
        report.notes,
        vec![(
            "age (bd) outside 1..=100, birth year left null".to_owned(),
            2
        )]
    );
    let (a, b, c) = (key.id("AAA="), key.id("BBB="), key.id("CCC="));
    let users = read(out.path(), "users");
    assert_eq!(i64s(&users, "user_id"), [a, b, c]);
    let years = users
        .column_by_name("birth_year")
        .unwrap()
        .as_primitive::<Int32Type>();
    assert!(
        years.is_null(0) && years.is_null(2),
        "bd 0 and 1051 are not ages"
    );
    assert_eq!(years.value(1), 2017 - 30);
    assert_eq!(
        strings(&users, "gender"),
        [None, Some("male".into()), Some("female".into())]
    );
    let payments = read(out.path(), "payments");
    assert_eq!(i64s(&payments, "user_id"), [b, b, a]);
    let paid = payments
        .column_by_name("amount")
        .unwrap()
        .as_primitive::<Float64Type>();
    let list = payments
        .column_by_name("list_price")
        .unwrap()
        .as_primitive::<Float64Type>();
    assert_eq!((paid.value(1), list.value(1)), (119.0, 149.0));
    let cancel = payments.column_by_name("is_cancel").unwrap().as_boolean();
    assert_eq!((cancel.value(0), cancel.value(1)), (false, true));
    let expires = payments
        .column_by_name("expires_at")
        .unwrap()
        .as_primitive::<TimestampMillisecondType>();
    assert_eq!(expires.value(2), day_ms(2017, 3, 3));
    let activity = read(out.path(), "daily_activity");
    assert_eq!(i64s(&activity, "plays"), [25, 5]);
    assert_eq!(i64s(&activity, "completed_plays"), [21, 5]);
    assert_eq!(i64s(&activity, "skips"), [4, 0]);
    assert_eq!(i64s(&activity, "unique_items"), [18, 5]);
    let labels = read(out.path(), "subscription_labels");
    assert_eq!(i64s(&labels, "user_id"), [a, b]);
    // No raw member id is stored anywhere.
    for table in ["users", "payments", "daily_activity", "subscription_labels"] {
        for part in std::fs::read_dir(out.path().join(table)).unwrap() {
            let bytes = std::fs::read(part.unwrap().path()).unwrap();
            assert!(
                !bytes.windows(4).any(|w| w == b"AAA="),
                "raw msno in {table}"
            );
        }
    }
    // Without a key the import refuses, naming what is missing.
    let err = kkbox::import(&fixture("kkbox"), out.path(), &ImportOptions::default()).unwrap_err();
    assert!(err.to_string().contains("id key"), "{err}");
}

#[test]
fn bad_lines_fail_naming_file_line_and_column_or_go_to_quarantine() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("CDNOW_master.txt");
    std::fs::write(
        &src,
        " 00001 19970101  1   11.77\n 00002 1997-01-12  1   12.00\n 00003 19970102  x   20.76\n 00004 19970102  1\n 00005 19970103  1   -3.00\n",
    )
    .unwrap();
    let out = dir.path().join("out");
    let err = cdnow::import(&src, &out, &ImportOptions::default())
        .unwrap_err()
        .to_string();
    assert!(err.starts_with("4 bad line(s)"), "{err}");
    assert!(
        err.contains("CDNOW_master.txt:2: column date: '1997-01-12' is not a YYYYMMDD date"),
        "{err}"
    );
    assert!(
        err.contains(":3: column quantity: 'x' is not a whole quantity"),
        "{err}"
    );
    assert!(err.contains(":4: column amount: 3 fields"), "{err}");
    assert!(
        err.contains(":5: column amount: -3 is not a non-negative amount"),
        "{err}"
    );
    // A failed import leaves no table (and no staging folder) behind.
    let left: Vec<_> = std::fs::read_dir(&out).unwrap().collect();
    assert!(left.is_empty(), "{left:?}");

    let quarantine = dir.path().join("rejects");
    let options = ImportOptions {
        quarantine: Some(quarantine.clone()),
        ..Default::default()
    };
    let report = cdnow::import(&src, &out, &options).unwrap();
    assert_eq!(report.rejected, 4);
    assert_eq!(
        report.tables,
        vec![("payments".to_owned(), 1), ("users".to_owned(), 1)]
    );
    let rejected = std::fs::read_to_string(quarantine.join("rejected.tsv")).unwrap();
    assert_eq!(rejected.lines().count(), 5, "header + 4 lines:\n{rejected}");
    assert!(
        rejected.contains("\t3\tquantity\t'x' is not a whole quantity\t 00003 19970102  x   20.76"),
        "{rejected}"
    );

    // Importing again replaces the tables rather than adding to them.
    let report = cdnow::import(
        &fixture("cdnow/CDNOW_master.txt"),
        &out,
        &ImportOptions::default(),
    )
    .unwrap();
    assert_eq!(report.tables[0], ("payments".to_owned(), 5));
    assert_eq!(read(&out, "payments").num_rows(), 5);
}

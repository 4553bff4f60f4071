//! The canonical tables of DESIGN.md as Arrow schemas. Every importer and
//! the generator write exactly these; feature plans read them.
//! `ts` columns are UTC timestamps in milliseconds.

use std::sync::Arc;

use arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};

/// UTC timestamp in milliseconds, the type of every `ts` column.
pub fn timestamp_ms() -> DataType {
    DataType::Timestamp(TimeUnit::Millisecond, Some("UTC".into()))
}

/// `users`: one row per user; raw PII never appears here.
pub fn users() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("user_id", DataType::Int64, false),
        Field::new("registered_at", timestamp_ms(), false),
        Field::new("city", DataType::Utf8, true),
        Field::new("birth_year", DataType::Int32, true),
        Field::new("gender", DataType::Utf8, true),
        Field::new("registered_via", DataType::Utf8, true),
        Field::new("consent", DataType::Boolean, false),
    ]))
}

/// `items`: the song catalogue.
pub fn items() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("item_id", DataType::Int64, false),
        Field::new("artist_id", DataType::Int64, false),
        Field::new("genre", DataType::Utf8, false),
        Field::new("language", DataType::Utf8, true),
        Field::new("duration_secs", DataType::Int32, false),
        Field::new("release_date", DataType::Date32, true),
    ]))
}

/// `plays`: one row per play, partitioned by day (`day=YYYY-MM-DD` folders).
pub fn plays() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("user_id", DataType::Int64, false),
        Field::new("item_id", DataType::Int64, false),
        Field::new("ts", timestamp_ms(), false),
        Field::new("played_secs", DataType::Int32, false),
        Field::new("item_secs", DataType::Int32, false),
        Field::new("source", DataType::Utf8, false),
        Field::new("device", DataType::Utf8, false),
        Field::new("region", DataType::Utf8, true),
    ]))
}

/// Values of `plays.source`.
pub const PLAY_SOURCES: [&str; 5] = ["search", "playlist", "recommendation", "radio", "other"];

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

/// `interactions`: everything a user does besides playing: favourites,
/// comments, playlist actions, shares, follows, complaints, ratings.
pub fn interactions() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("user_id", DataType::Int64, false),
        Field::new("item_id", DataType::Int64, true),
        Field::new("ts", timestamp_ms(), false),
        Field::new("kind", DataType::Utf8, false),
        // A rating's value (MovieLens stars); null for other kinds.
        Field::new("value", DataType::Float32, true),
    ]))
}

/// Values of `interactions.kind`.
pub const INTERACTION_KINDS: [&str; 9] = [
    "favorite",
    "comment",
    "playlist_create",
    "playlist_add",
    "share",
    "follow_artist",
    "complaint",
    "rating",
    "unfavorite",
];

/// `payments`: subscriptions and purchases. Columns a source lacks are null.
pub fn payments() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("user_id", DataType::Int64, false),
        Field::new("ts", timestamp_ms(), false),
        Field::new("amount", DataType::Float64, false),
        Field::new("quantity", DataType::Int32, true),
        Field::new("product", DataType::Utf8, false),
        Field::new("plan_days", DataType::Int32, true),
        Field::new("list_price", DataType::Float64, true),
        Field::new("expires_at", timestamp_ms(), true),
        Field::new("auto_renew", DataType::Boolean, true),
        Field::new("is_cancel", DataType::Boolean, true),
    ]))
}

/// Values of `payments.product`.
pub const PRODUCTS: [&str; 4] = ["subscription", "track", "album", "cd"];

/// `daily_activity`: one row per user and day, derived from `plays` or
/// imported directly where a source only has daily aggregates (KKBox).
pub fn daily_activity() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("user_id", DataType::Int64, false),
        Field::new("date", DataType::Date32, false),
        Field::new("plays", DataType::Int64, false),
        Field::new("completed_plays", DataType::Int64, false),
        Field::new("skips", DataType::Int64, false),
        Field::new("unique_items", DataType::Int64, false),
        Field::new("total_secs", DataType::Float64, false),
    ]))
}

/// `subscription_labels`: churn labels a source ships (KKBox `train.csv`:
/// no renewal within 30 days of expiry).
pub fn subscription_labels() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("user_id", DataType::Int64, false),
        Field::new("is_churn", DataType::Boolean, false),
    ]))
}

/// Every canonical table by name.
pub fn by_name(table: &str) -> Option<SchemaRef> {
    Some(match table {
        "users" => users(),
        "items" => items(),
        "plays" => plays(),
        "interactions" => interactions(),
        "payments" => payments(),
        "daily_activity" => daily_activity(),
        "subscription_labels" => subscription_labels(),
        _ => return None,
    })
}

/// Names of the canonical tables.
pub const TABLES: [&str; 7] = [
    "users",
    "items",
    "plays",
    "interactions",
    "payments",
    "daily_activity",
    "subscription_labels",
];

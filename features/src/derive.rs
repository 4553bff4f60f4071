//! Tables derived from others: `daily_activity` from `plays`, with the same
//! meaning as KKBox's daily logs (completed = at least 98.5 % of the song,
//! skip = under half of it), so models read one shape whatever the source.

use datafusion::prelude::{DataFrame, SessionContext};

use crate::error::Result;

/// SQL of `daily_activity` over a registered `plays` table.
pub const DAILY_ACTIVITY_SQL: &str = "
SELECT user_id,
       CAST(ts AS DATE) AS date,
       count(*) AS plays,
       sum(CASE WHEN played_secs >= 0.985 * item_secs THEN 1 ELSE 0 END) AS completed_plays,
       sum(CASE WHEN played_secs < 0.5 * item_secs THEN 1 ELSE 0 END) AS skips,
       count(DISTINCT item_id) AS unique_items,
       CAST(sum(played_secs) AS DOUBLE) AS total_secs
FROM plays
GROUP BY user_id, CAST(ts AS DATE)";

/// `daily_activity` as a DataFrame over the `plays` table registered in `ctx`.
pub async fn daily_activity(ctx: &SessionContext) -> Result<DataFrame> {
    Ok(ctx.sql(DAILY_ACTIVITY_SQL).await?)
}

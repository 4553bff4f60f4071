//! Properties of the simulator: plausible churn and skip rates, taste that
//! shows in plays, and a ground truth that predicts who goes quiet.

use arrow::array::{AsArray, RecordBatch};
use arrow::datatypes::{Float64Type, Int64Type};
use datafusion::prelude::SessionContext;
use encore_features::datagen::{DataSpec, generate};
use encore_features::plans::{PlanParams, churn_labels_sql};
use encore_features::tables::{TableSource, register};

async fn query(ctx: &SessionContext, sql: &str) -> Vec<RecordBatch> {
    ctx.sql(sql).await.unwrap().collect().await.unwrap()
}

fn float(batches: &[RecordBatch]) -> f64 {
    batches[0].column(0).as_primitive::<Float64Type>().value(0)
}

/// Area under the ROC curve of scores `p` for labels `y` (rank statistic).
fn auc(p: &[f64], y: &[bool]) -> f64 {
    let mut order: Vec<usize> = (0..p.len()).collect();
    order.sort_by(|&a, &b| p[a].total_cmp(&p[b]));
    let mut rank_sum = 0.0;
    for (rank, &i) in order.iter().enumerate() {
        if y[i] {
            rank_sum += rank as f64 + 1.0;
        }
    }
    let pos = y.iter().filter(|v| **v).count() as f64;
    let neg = y.len() as f64 - pos;
    (rank_sum - pos * (pos + 1.0) / 2.0) / (pos * neg)
}

#[tokio::test]
async fn churn_skips_taste_and_ground_truth_are_plausible() {
    let dir = tempfile::tempdir().unwrap();
    let spec = DataSpec {
        users: 3_000,
        items: 2_000,
        days: 75,
        seed: 11,
        ..Default::default()
    };
    generate(&spec, dir.path(), |_, _| {}).unwrap();
    let ctx = SessionContext::new();
    for table in ["users", "plays", "items", "payments", "ground_truth"] {
        register(
            &ctx,
            &TableSource {
                name: table.into(),
                path: dir.path().join(table),
            },
        )
        .await
        .unwrap();
    }
    let cutoff = spec.cutoff();
    assert_eq!(cutoff.to_string(), "2026-02-15");

    let outside = query(
        &ctx,
        "SELECT count(*) FROM plays WHERE to_char(ts, '%Y-%m-%d') <> CAST(day AS VARCHAR)",
    )
    .await;
    assert_eq!(
        outside[0].column(0).as_primitive::<Int64Type>().value(0),
        0,
        "every play lies in its day partition"
    );

    let skip = float(
        &query(
            &ctx,
            "SELECT avg(CASE WHEN played_secs < item_secs THEN 1.0 ELSE 0.0 END) FROM plays",
        )
        .await,
    );
    assert!((0.15..0.5).contains(&skip), "skip rate {skip}");

    // Taste: a user's top genre holds far more than the 1/8 of plays chance would give.
    let top = float(&query(
        &ctx,
        "WITH g AS (SELECT p.user_id, i.genre, count(*) AS n FROM plays p JOIN items i USING (item_id) GROUP BY 1, 2),
              u AS (SELECT user_id, CAST(max(n) AS DOUBLE) / sum(n) AS share FROM g GROUP BY 1 HAVING sum(n) >= 20)
         SELECT avg(share) FROM u",
    )
    .await);
    assert!(top > 0.4, "top-genre share {top}");

    // Two labels at the cutoff, per horizon, each against the truth column
    // that is its probability: DESIGN.md's "active in the 30 days before, no
    // play in (T, T+H]" (p_quiet), and the plans' churn label, a lapse of
    // 7 days without a play inside H days (p_lapse).
    let plan_labels = churn_labels_sql(&PlanParams::at(cutoff)).unwrap();
    let mut lapse_rates = Vec::new();
    for (h, column) in [
        (7, "p_quiet_7d"),
        (15, "p_quiet_15d"),
        (30, "p_quiet_30d"),
        (7, "p_lapse_7d"),
        (15, "p_lapse_15d"),
        (30, "p_lapse_30d"),
    ] {
        let sql = if column.starts_with("p_quiet") {
            format!(
                "WITH before AS (SELECT DISTINCT user_id FROM plays WHERE ts >= TIMESTAMP '{cutoff}T00:00:00Z' - INTERVAL '30 days' AND ts < TIMESTAMP '{cutoff}T00:00:00Z'),
                      after AS (SELECT DISTINCT user_id FROM plays WHERE ts >= TIMESTAMP '{cutoff}T00:00:00Z' AND ts < TIMESTAMP '{cutoff}T00:00:00Z' + INTERVAL '{h} days')
                 SELECT t.{column} AS p, CASE WHEN a.user_id IS NULL THEN 1 ELSE 0 END AS y
                 FROM ground_truth t JOIN before b ON t.user_id = b.user_id LEFT JOIN after a ON t.user_id = a.user_id
                 WHERE t.alive"
            )
        } else {
            format!(
                "SELECT t.{column} AS p, CASE WHEN l.churn_{h}d THEN 1 ELSE 0 END AS y
                 FROM ground_truth t JOIN ({plan_labels}) l ON t.user_id = l.user_id
                 WHERE t.alive"
            )
        };
        let batches = query(&ctx, &sql).await;
        let mut p = Vec::new();
        let mut y = Vec::new();
        for b in &batches {
            p.extend(
                b.column(0)
                    .as_primitive::<Float64Type>()
                    .values()
                    .iter()
                    .copied(),
            );
            y.extend(
                b.column(1)
                    .as_primitive::<Int64Type>()
                    .values()
                    .iter()
                    .map(|v| *v == 1),
            );
        }
        let rate = y.iter().filter(|v| **v).count() as f64 / y.len() as f64;
        let mean_p = p.iter().sum::<f64>() / p.len() as f64;
        let oracle = auc(&p, &y);
        println!(
            "{column}: {} users, label rate {rate:.3}, mean truth {mean_p:.3}, oracle AUC {oracle:.3}",
            y.len()
        );
        assert!(
            (mean_p - rate).abs() < 0.06,
            "{column}: truth {mean_p} vs realised {rate}"
        );
        // Few users go fully quiet for 30 days, so the long horizons' AUC is noisy here.
        let floor = if h == 7 { 0.75 } else { 0.6 };
        assert!(
            oracle > floor,
            "{column}: the ground truth ranks churners with AUC {oracle}"
        );
        if column.starts_with("p_lapse") {
            lapse_rates.push(rate);
        }
    }
    assert!(
        lapse_rates.windows(2).all(|w| w[0] <= w[1]),
        "lapse labels grow with the horizon: {lapse_rates:?}"
    );

    // Latent monthly churn among users alive at the cutoff, and the same
    // quantity realised: of the users active in the 30 days before the
    // cutoff, the share never seen again after it (to the end of the data).
    let monthly = float(
        &query(
            &ctx,
            "SELECT avg(p_churn_30d) FROM ground_truth WHERE alive",
        )
        .await,
    );
    assert!(
        (0.05..=0.25).contains(&monthly),
        "latent monthly churn {monthly}"
    );
    let gone = float(&query(&ctx, &format!(
        "WITH before AS (SELECT DISTINCT user_id FROM plays WHERE ts >= TIMESTAMP '{cutoff}T00:00:00Z' - INTERVAL '30 days' AND ts < TIMESTAMP '{cutoff}T00:00:00Z'),
              after AS (SELECT DISTINCT user_id FROM plays WHERE ts >= TIMESTAMP '{cutoff}T00:00:00Z')
         SELECT avg(CASE WHEN a.user_id IS NULL THEN 1.0 ELSE 0.0 END) FROM before b LEFT JOIN after a ON b.user_id = a.user_id"
    )).await);
    println!("latent monthly churn {monthly:.3}, realised {gone:.3}");
    assert!(
        (0.05..=0.25).contains(&gone),
        "realised 30-day churn {gone}"
    );
    let truth_monotone = float(&query(&ctx, "SELECT avg(CASE WHEN p_churn_7d <= p_churn_15d AND p_churn_15d <= p_churn_30d THEN 1.0 ELSE 0.0 END) FROM ground_truth").await);
    assert_eq!(truth_monotone, 1.0);

    // Subscriptions: renewals, and cancellations among them.
    let cancels = float(
        &query(
            &ctx,
            "SELECT avg(CASE WHEN is_cancel THEN 1.0 ELSE 0.0 END) FROM payments",
        )
        .await,
    );
    assert!(
        (0.01..0.5).contains(&cancels),
        "cancellation share {cancels}"
    );
}

//! `encore eval` on public data (fetched by scripts/fetch-public-data.sh,
//! which scripts/test.sh runs into target/public-data).

use std::path::PathBuf;

use encore_tests::encore;

fn public_data() -> PathBuf {
    let dir = std::env::var_os("ENCORE_PUBLIC_DATA")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/public-data"));
    assert!(
        dir.join("cdnow/CDNOW_master.txt").is_file(),
        "{} has no cdnow/CDNOW_master.txt: run scripts/fetch-public-data.sh {} (scripts/test.sh does)",
        dir.display(),
        dir.display()
    );
    dir
}

/// The full CDNOW panel: every customer scored out of fold; the AUC of "any
/// purchase in the 39-week holdout" must be in the range of the published
/// baselines (BG/NBD 0.773, RFM logistic regression 0.769–0.778), and the
/// network must beat BG/NBD fitted in the same run, over all customers and
/// over the 2,357-customer sample (CDNOW_sample.txt beside the panel).
#[test]
fn cdnow_scores_every_customer_out_of_fold_near_the_baselines() {
    let src = public_data().join("cdnow/CDNOW_master.txt");
    let (code, out, err) =
        encore(&["eval", "cdnow", "--src", src.to_str().unwrap(), "--cpu"]).unwrap();
    assert_eq!(code, 0, "{err}");
    assert!(out.starts_with("CDNOW: 23570 customers"), "{out}");
    let auc: f64 = out
        .lines()
        .find(|l| l.trim_start().starts_with("encore wide & deep"))
        .and_then(|l| l.split_whitespace().rev().nth(3))
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no AUC in {out}"));
    assert!(auc > 0.75 && auc < 0.95, "AUC {auc}\n{out}");
    assert!(out.contains("sample (2357)"), "{out}");
    // model -> [AUC, log loss, sample AUC, sample log loss] ("-" as NaN)
    let row = |model: &str| -> Vec<f64> {
        let line = out
            .lines()
            .find(|l| l.trim_start().starts_with(model))
            .unwrap_or_else(|| panic!("no {model} row in {out}"));
        let cells: Vec<f64> = line
            .split_whitespace()
            .rev()
            .take(4)
            .map(|v| v.parse().unwrap_or(f64::NAN))
            .collect();
        cells.into_iter().rev().collect()
    };
    let network = row("encore wide & deep");
    let bgnbd = row("BG/NBD expected transactions");
    let rfm = row("logistic regression on RFM");
    for (name, r) in [("network", &network), ("BG/NBD", &bgnbd), ("RFM", &rfm)] {
        for auc in [r[0], r[2]] {
            assert!(auc > 0.7 && auc < 0.9, "{name}: {r:?}\n{out}");
        }
    }
    assert!(network[0] > bgnbd[0] && network[2] > bgnbd[2], "{out}");
    assert!(network[1] < rfm[1] + 0.01 && rfm[1] < 0.6, "{out}");
    assert!(out.contains("BG/NBD fit (days): r "), "{out}");
    // Predicted total holdout transactions land within 25% of the actual.
    let totals = out
        .lines()
        .find(|l| l.starts_with("total holdout transactions"))
        .unwrap_or_else(|| panic!("no totals in {out}"));
    let number = |after: &str| -> f64 {
        totals
            .split(after)
            .nth(1)
            .unwrap()
            .split_whitespace()
            .next()
            .unwrap()
            .trim_end_matches(|c: char| !c.is_ascii_digit())
            .parse()
            .unwrap()
    };
    let (actual, predicted) = (number("actual "), number("predicted "));
    assert!((predicted - actual).abs() / actual < 0.25, "{totals}");
    let bgnbd_total = number("BG/NBD ");
    assert!((bgnbd_total - actual).abs() / actual < 0.35, "{totals}");

    let (code, _, err) = encore(&[
        "eval",
        "cdnow",
        "--src",
        src.to_str().unwrap(),
        "--sample",
        src.to_str().unwrap(),
    ])
    .unwrap();
    assert_eq!(code, 1);
    assert!(
        err.contains("line 1: expected a CDNOW sample line"),
        "{err}"
    );
    let (code, _, err) =
        encore(&["eval", "cdnow", "--src", "/nonexistent/CDNOW_master.txt"]).unwrap();
    assert_eq!(code, 1);
    assert!(err.contains("/nonexistent/CDNOW_master.txt"), "{err}");
    let (code, _, err) = encore(&[
        "eval",
        "cdnow",
        "--src",
        src.to_str().unwrap(),
        "--folds",
        "1",
    ])
    .unwrap();
    assert_eq!(code, 1);
    assert!(err.contains("folds 1"), "{err}");
}

/// Generated data with known churn probabilities: every horizon is
/// reported with the model's and the oracle's AUC on the same users.
#[test]
fn synthetic_compares_the_model_with_the_generators_oracle() {
    let (code, out, err) = encore(&[
        "eval",
        "synthetic",
        "--users",
        "3000",
        "--days",
        "60",
        "--folds",
        "3",
        "--cpu",
    ])
    .unwrap();
    assert_eq!(code, 0, "{err}");
    let rows: Vec<Vec<&str>> = out
        .lines()
        .map(|l| l.split_whitespace().collect::<Vec<_>>())
        .filter(|w| {
            w.first()
                .is_some_and(|h| h.ends_with('d') && h[..h.len() - 1].parse::<u32>().is_ok())
        })
        .collect();
    assert_eq!(rows.len(), 3, "{out}");
    for (row, horizon) in rows.iter().zip(["7d", "15d", "30d"]) {
        assert_eq!(row[0], horizon, "{out}");
        let (model, oracle, gap): (f64, f64, f64) = (
            row[2].parse().unwrap(),
            row[3].parse().unwrap(),
            row[4].parse().unwrap(),
        );
        assert!(model > 0.65 && oracle > 0.65, "{out}");
        assert!((oracle - model - gap).abs() < 0.002, "{out}");
    }
    let (code, _, err) = encore(&["eval", "synthetic", "--days", "20"]).unwrap();
    assert_eq!(code, 1);
    assert!(err.contains("--days 20"), "{err}");
}

/// MovieLens-100K in RecBole's setting: the two-tower model's four ranking
/// metrics are printed next to RecBole's BPR and are far above a random
/// ranking (Recall@10 about 0.006 over 1,682 items).
#[test]
fn movielens_ranks_the_full_catalogue_for_every_user() {
    let src = public_data().join("movielens");
    let (code, out, err) =
        encore(&["eval", "movielens", "--src", src.to_str().unwrap(), "--cpu"]).unwrap();
    assert_eq!(code, 0, "{err}");
    assert!(
        out.starts_with("MovieLens: 943 users, 1682 items, 100000 ratings"),
        "{out}"
    );
    let ours: Vec<f64> = out
        .lines()
        .find(|l| l.trim_start().starts_with("encore two-tower"))
        .unwrap_or_else(|| panic!("{out}"))
        .split_whitespace()
        .skip(2)
        .map(|v| v.parse().unwrap())
        .collect();
    assert_eq!(ours.len(), 4, "{out}");
    // RecBole's published BPR: 0.2523 / 0.2920 / 0.4855 / 0.7953. Recall and
    // NDCG beat it by 0.01 or more on every split tried; MRR and Hit by less,
    // so they are not asserted here (other thread counts sum differently).
    assert!(ours[0] > 0.2523 && ours[1] > 0.2920, "{out}");
    assert!(ours[2] > 0.45 && ours[3] > 0.75, "{out}");
    let (code, _, err) = encore(&[
        "eval",
        "movielens",
        "--src",
        src.to_str().unwrap(),
        "--set",
        "temperature=0",
    ])
    .unwrap();
    assert_eq!(code, 1);
    assert!(err.contains("temperature"), "{err}");
}

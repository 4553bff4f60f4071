//! Evaluation metrics over plain slices: ROC AUC, log loss, expected
//! calibration error, and ranking metrics at K.

/// Area under the ROC curve of `scores` for `labels` (the rank statistic,
/// ties given their average rank). NaN when one class is missing.
pub fn auc(scores: &[f64], labels: &[bool]) -> f64 {
    let mut order: Vec<usize> = (0..scores.len()).collect();
    order.sort_by(|&a, &b| scores[a].total_cmp(&scores[b]));
    let mut rank_sum = 0.0;
    let mut i = 0;
    while i < order.len() {
        // A run of tied scores shares the average of its ranks.
        let mut j = i;
        while j + 1 < order.len() && scores[order[j + 1]] == scores[order[i]] {
            j += 1;
        }
        let rank = (i + j) as f64 / 2.0 + 1.0;
        for &k in &order[i..=j] {
            if labels[k] {
                rank_sum += rank;
            }
        }
        i = j + 1;
    }
    let pos = labels.iter().filter(|l| **l).count() as f64;
    let neg = labels.len() as f64 - pos;
    if pos == 0.0 || neg == 0.0 {
        return f64::NAN;
    }
    (rank_sum - pos * (pos + 1.0) / 2.0) / (pos * neg)
}

/// Mean negative log likelihood of `labels` under probabilities `p`
/// (clipped to [1e-7, 1 - 1e-7]).
pub fn log_loss(p: &[f64], labels: &[bool]) -> f64 {
    let total: f64 = p
        .iter()
        .zip(labels)
        .map(|(&p, &y)| {
            let p = p.clamp(1e-7, 1.0 - 1e-7);
            if y { -p.ln() } else { -(1.0 - p).ln() }
        })
        .sum();
    total / p.len().max(1) as f64
}

/// Expected calibration error over `bins` equal-width probability bins: the
/// mean, weighted by bin size, of |mean predicted − observed rate|.
pub fn ece(p: &[f64], labels: &[bool], bins: usize) -> f64 {
    let mut count = vec![0usize; bins];
    let mut predicted = vec![0.0; bins];
    let mut observed = vec![0.0; bins];
    for (&p, &y) in p.iter().zip(labels) {
        let b = ((p * bins as f64) as usize).min(bins - 1);
        count[b] += 1;
        predicted[b] += p;
        observed[b] += f64::from(u8::from(y));
    }
    let n = p.len().max(1) as f64;
    (0..bins)
        .filter(|&b| count[b] > 0)
        .map(|b| (predicted[b] - observed[b]).abs() / n)
        .sum()
}

/// Recall@K, NDCG@K, MRR@K and Hit@K of one ranked list against a set of
/// relevant items (binary relevance), as RecBole computes them.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct RankingAtK {
    /// Relevant items in the top K over all relevant items.
    pub recall: f64,
    /// DCG of the top K over the ideal DCG.
    pub ndcg: f64,
    /// 1 / rank of the first relevant item in the top K (0 if none).
    pub mrr: f64,
    /// 1 if any relevant item is in the top K.
    pub hit: f64,
}

impl RankingAtK {
    /// Scores `ranked` (best first; only the first `k` count) against `relevant`.
    pub fn of(ranked: &[i64], relevant: &std::collections::HashSet<i64>, k: usize) -> Self {
        if relevant.is_empty() {
            return Self::default();
        }
        let mut hits = 0usize;
        let mut dcg = 0.0;
        let mut mrr = 0.0;
        for (i, item) in ranked.iter().take(k).enumerate() {
            if relevant.contains(item) {
                hits += 1;
                dcg += 1.0 / ((i + 2) as f64).log2();
                if mrr == 0.0 {
                    mrr = 1.0 / (i + 1) as f64;
                }
            }
        }
        let ideal: f64 = (0..relevant.len().min(k))
            .map(|i| 1.0 / ((i + 2) as f64).log2())
            .sum();
        Self {
            recall: hits as f64 / relevant.len() as f64,
            ndcg: dcg / ideal,
            mrr,
            hit: if hits > 0 { 1.0 } else { 0.0 },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn auc_counts_ordered_pairs_and_ties() {
        // pairs (pos, neg): (0.9, 0.1) ok, (0.9, 0.5) ok, (0.5, 0.1) ok, (0.5, 0.5) tie
        let s = [0.9, 0.5, 0.5, 0.1];
        let y = [true, true, false, false];
        assert!((auc(&s, &y) - 3.5 / 4.0).abs() < 1e-12);
        assert!(auc(&s, &[true; 4]).is_nan());
    }

    #[test]
    fn log_loss_and_ece_of_known_predictions() {
        let p = [0.8, 0.2];
        let y = [true, false];
        assert!((log_loss(&p, &y) - -(0.8f64.ln())).abs() < 1e-12);
        // One bin [0.8, 0.9): predicted 0.8, observed 1 → 0.2 × 1/2; the
        // other: predicted 0.2, observed 0 → 0.2 × 1/2.
        assert!((ece(&p, &y, 10) - 0.2).abs() < 1e-12);
    }

    #[test]
    fn ranking_metrics_of_a_short_list() {
        let relevant = [3, 9].into_iter().collect();
        let m = RankingAtK::of(&[5, 3, 7, 9], &relevant, 3);
        assert_eq!(m.recall, 0.5);
        assert_eq!(m.mrr, 0.5);
        assert_eq!(m.hit, 1.0);
        let ideal = 1.0 + 1.0 / 3f64.log2();
        assert!((m.ndcg - (1.0 / 3f64.log2()) / ideal).abs() < 1e-12);
    }
}

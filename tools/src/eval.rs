//! Detection quality of scores against fraud labels.
//!
//! - ROC AUC: the Mann–Whitney U statistic divided by `n_pos * n_neg`, with tied scores given
//!   their average rank (Hanley & McNeil, 1982, "The meaning and use of the area under a ROC
//!   curve").
//! - Card precision@k per day (Fraud Detection Handbook, chapter 4, "Precision top-k metrics"):
//!   for each day, each card (customer) gets the highest score of its transactions that day and
//!   is fraudulent if any of them is; the precision of the k highest-scored cards, averaged over
//!   days. (The handbook also removes cards already found compromised on earlier days; this
//!   simpler version does not.)

use std::collections::HashMap;

/// ROC AUC of `(score, is_fraud)` pairs; `None` if either class is absent.
///
/// ```
/// use weir_tools::eval::roc_auc;
/// assert_eq!(roc_auc(&[(0.1, false), (0.9, true)]), Some(1.0));
/// assert_eq!(roc_auc(&[(0.5, false), (0.5, true)]), Some(0.5));
/// ```
pub fn roc_auc(pairs: &[(f32, bool)]) -> Option<f64> {
    let mut v: Vec<(f32, bool)> = pairs.to_vec();
    v.sort_by(|a, b| a.0.total_cmp(&b.0));
    let n_pos = v.iter().filter(|p| p.1).count() as f64;
    let n_neg = v.len() as f64 - n_pos;
    if n_pos == 0.0 || n_neg == 0.0 {
        return None;
    }
    let mut rank_sum_pos = 0.0;
    let mut i = 0;
    while i < v.len() {
        let mut j = i;
        while j < v.len() && v[j].0 == v[i].0 {
            j += 1;
        }
        // ranks i+1 ..= j, average:
        let avg = (i + 1 + j) as f64 / 2.0;
        rank_sum_pos += avg * v[i..j].iter().filter(|p| p.1).count() as f64;
        i = j;
    }
    Some((rank_sum_pos - n_pos * (n_pos + 1.0) / 2.0) / (n_pos * n_neg))
}

/// One scored transaction for [`card_precision_at_k`].
#[derive(Debug, Clone, Copy)]
pub struct ScoredTx {
    /// Day index (e.g. days since the dataset's start).
    pub day: i64,
    /// Card (customer) id.
    pub customer_id: u64,
    /// Fraud score.
    pub score: f32,
    /// Label.
    pub fraud: bool,
}

/// Mean over days of the card precision of the `k` highest-scored cards; 0 if no data.
pub fn card_precision_at_k(txs: &[ScoredTx], k: usize) -> f64 {
    let mut per_day: HashMap<i64, HashMap<u64, (f32, bool)>> = HashMap::new();
    for t in txs {
        let e = per_day
            .entry(t.day)
            .or_default()
            .entry(t.customer_id)
            .or_insert((f32::MIN, false));
        e.0 = e.0.max(t.score);
        e.1 |= t.fraud;
    }
    if per_day.is_empty() || k == 0 {
        return 0.0;
    }
    let total: f64 = per_day
        .values()
        .map(|cards| {
            let mut c: Vec<(f32, bool)> = cards.values().copied().collect();
            c.sort_by(|a, b| b.0.total_cmp(&a.0));
            c.iter().take(k).filter(|x| x.1).count() as f64 / k as f64
        })
        .sum();
    total / per_day.len() as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn auc_matches_pairwise_definition() {
        let pairs = [
            (0.1, false),
            (0.4, true),
            (0.35, false),
            (0.8, true),
            (0.4, false),
            (0.9, false),
        ];
        // Pairs (pos, neg): count pos > neg, half for ties.
        let mut wins = 0.0;
        let mut n = 0.0;
        for p in pairs.iter().filter(|p| p.1) {
            for q in pairs.iter().filter(|q| !q.1) {
                n += 1.0;
                wins += if p.0 > q.0 {
                    1.0
                } else if p.0 == q.0 {
                    0.5
                } else {
                    0.0
                };
            }
        }
        assert!((roc_auc(&pairs).unwrap() - wins / n).abs() < 1e-12);
        assert_eq!(roc_auc(&[(0.1, true)]), None);
    }

    #[test]
    fn card_precision_uses_best_score_per_card_and_day() {
        let t = |day, customer_id, score, fraud| ScoredTx {
            day,
            customer_id,
            score,
            fraud,
        };
        let txs = [
            t(0, 1, 0.9, false),
            t(0, 1, 0.1, true), // card 1 on day 0: score .9, fraudulent
            t(0, 2, 0.8, false),
            t(0, 3, 0.7, false),
            t(1, 1, 0.2, false),
            t(1, 4, 0.6, true),
        ];
        // Day 0 top-2: cards 1 (fraud), 2 -> 0.5; day 1 top-2: cards 4 (fraud), 1 -> 0.5.
        assert!((card_precision_at_k(&txs, 2) - 0.5).abs() < 1e-12);
        assert!((card_precision_at_k(&txs, 1) - 1.0).abs() < 1e-12);
    }
}

//! Figures over seeds and between methods: the spread of a score over runs (mean, sample
//! standard deviation, a 95 % interval from Student's t over the runs), and a paired
//! bootstrap over test items of the difference in macro F1 between two methods, pooled over
//! the seeds both ran.

use rand::{Rng, SeedableRng};
use serde::Serialize;
use statrs::distribution::{ContinuousCDF, StudentsT};

/// A score over runs. With one run the standard deviation and the interval are undefined
/// (NaN, `null` in JSON); NaN scores (an undefined kappa) are left out and `n` counts the rest.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Spread {
    pub n: usize,
    pub mean: f64,
    /// Sample standard deviation (n − 1 in the denominator, numpy's `std(ddof=1)`).
    pub sd: f64,
    /// The 95 % interval of the mean: mean ± t(0.975, n − 1) · sd / √n.
    pub lo: f64,
    pub hi: f64,
}

/// The spread of `values` over runs.
pub fn spread(values: &[f64]) -> Spread {
    let v: Vec<f64> = values.iter().copied().filter(|x| !x.is_nan()).collect();
    let n = v.len();
    if n == 0 {
        return Spread { n, mean: f64::NAN, sd: f64::NAN, lo: f64::NAN, hi: f64::NAN };
    }
    let mean = v.iter().sum::<f64>() / n as f64;
    if n == 1 {
        return Spread { n, mean, sd: f64::NAN, lo: f64::NAN, hi: f64::NAN };
    }
    let sd = (v.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (n - 1) as f64).sqrt();
    let t = StudentsT::new(0.0, 1.0, (n - 1) as f64).map(|d| d.inverse_cdf(0.975)).unwrap_or(f64::NAN);
    let half = t * sd / (n as f64).sqrt();
    Spread { n, mean, sd, lo: mean - half, hi: mean + half }
}

/// Macro F1 over the labels present in the truth or the predictions (scikit-learn's
/// default), of the items `rows` (with repeats).
pub fn macro_f1(truth: &[i64], pred: &[i64], rows: impl Iterator<Item = usize>, classes: usize) -> f64 {
    // Per class: true positives, true count, predicted count.
    let mut counts = vec![[0u64; 3]; classes];
    for i in rows {
        let (t, p) = (truth[i] as usize, pred[i] as usize);
        counts[t][1] += 1;
        counts[p][2] += 1;
        if t == p {
            counts[t][0] += 1;
        }
    }
    let (mut sum, mut present) = (0.0, 0usize);
    for [tp, t, p] in counts {
        if t + p > 0 {
            present += 1;
            sum += 2.0 * tp as f64 / (t + p) as f64;
        }
    }
    if present == 0 {
        0.0
    } else {
        sum / present as f64
    }
}

/// Two methods on the same items: their macro-F1 difference (`a` − `b`, averaged over the
/// seeds both ran) with its bootstrap interval and p-value.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Paired {
    /// Seeds pooled (runs of each method).
    pub seeds: usize,
    pub items: usize,
    pub resamples: usize,
    pub diff: f64,
    /// The 2.5th and 97.5th percentiles of the resampled differences (linear interpolation,
    /// numpy's default).
    pub lo: f64,
    pub hi: f64,
    /// Two-sided: 2 · (1 + the resamples on the far side of 0) / (resamples + 1), at most 1.
    pub p: f64,
}

/// The paired bootstrap over test items: `resamples` draws of the item indices with
/// replacement (the same draw for every seed and both methods), each giving the mean over
/// seeds of macro F1(`a[s]`) − macro F1(`b[s]`). `a[s]` and `b[s]` are the two methods'
/// predictions of seed `s` for the items whose labels are `truth`; labels and predictions
/// are in `0..classes`.
pub fn paired_bootstrap(
    truth: &[i64],
    a: &[&[i64]],
    b: &[&[i64]],
    classes: usize,
    resamples: usize,
    seed: u64,
) -> Paired {
    let n = truth.len();
    let seeds = a.len().min(b.len());
    let diff_of = |rows: &[usize]| -> f64 {
        let d: f64 = (0..seeds)
            .map(|s| {
                macro_f1(truth, a[s], rows.iter().copied(), classes)
                    - macro_f1(truth, b[s], rows.iter().copied(), classes)
            })
            .sum();
        d / seeds as f64
    };
    let all: Vec<usize> = (0..n).collect();
    let diff = diff_of(&all);
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    let mut draws = Vec::with_capacity(resamples);
    let mut rows = vec![0usize; n];
    for _ in 0..resamples {
        for r in rows.iter_mut() {
            *r = rng.random_range(0..n);
        }
        draws.push(diff_of(&rows));
    }
    draws.sort_by(f64::total_cmp);
    let below = draws.iter().filter(|&&d| d <= 0.0).count();
    let above = draws.iter().filter(|&&d| d >= 0.0).count();
    let p = (2.0 * (1 + below.min(above)) as f64 / (resamples + 1) as f64).min(1.0);
    Paired { seeds, items: n, resamples, diff, lo: percentile(&draws, 2.5), hi: percentile(&draws, 97.5), p }
}

/// The `q`th percentile of sorted values, interpolated linearly (numpy's default).
pub fn percentile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let pos = q / 100.0 * (sorted.len() - 1) as f64;
    let (i, frac) = (pos.floor() as usize, pos - pos.floor());
    match sorted.get(i + 1) {
        Some(next) => sorted[i] + (next - sorted[i]) * frac,
        None => sorted[i],
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::eval::metrics::Report;

    #[test]
    fn spread_over_runs() {
        let s = spread(&[0.5, 0.7, 0.6]);
        assert_eq!(s.n, 3);
        assert!((s.mean - 0.6).abs() < 1e-12 && (s.sd - 0.1).abs() < 1e-12, "{s:?}");
        // t(0.975, 2) = 4.302652729911275
        assert!((s.hi - (0.6 + 4.302652729911275 * 0.1 / 3f64.sqrt())).abs() < 1e-9, "{s:?}");
        let one = spread(&[0.4, f64::NAN]);
        assert_eq!((one.n, one.mean), (1, 0.4));
        assert!(one.sd.is_nan() && one.lo.is_nan());
        assert!(spread(&[]).mean.is_nan());
    }

    #[test]
    fn macro_f1_is_the_reports() {
        let truth = [0, 0, 1, 2, 2, 3, 1, 0];
        let pred = [0, 1, 1, 2, 0, 0, 1, 0];
        let r = Report::new(&truth, &pred, 5).unwrap();
        assert!((macro_f1(&truth, &pred, 0..8, 5) - r.macro_avg.f1).abs() < 1e-12);
        let rows = [1, 1, 4, 6, 7, 7];
        let t: Vec<i64> = rows.iter().map(|&i| truth[i]).collect();
        let p: Vec<i64> = rows.iter().map(|&i| pred[i]).collect();
        let r = Report::new(&t, &p, 5).unwrap();
        assert!((macro_f1(&truth, &pred, rows.into_iter(), 5) - r.macro_avg.f1).abs() < 1e-12);
    }

    #[test]
    fn the_bootstrap_sees_a_real_difference_and_not_a_null_one() {
        let truth: Vec<i64> = (0..200).map(|i| i % 3).collect();
        // `good` is right 90 % of the time, `bad` 40 %; `same` equals `good`.
        let good: Vec<i64> =
            truth.iter().enumerate().map(|(i, &t)| if i % 10 == 0 { (t + 1) % 3 } else { t }).collect();
        let bad: Vec<i64> = truth.iter().enumerate().map(|(i, &t)| if i % 5 < 3 { (t + 1) % 3 } else { t }).collect();
        let p = paired_bootstrap(&truth, &[&good], &[&bad], 3, 2000, 7);
        assert!(p.diff > 0.4 && p.lo > 0.3 && p.hi < 0.7 && p.p < 0.01, "{p:?}");
        let same = paired_bootstrap(&truth, &[&good, &bad], &[&good, &bad], 3, 500, 7);
        assert_eq!((same.diff, same.lo, same.hi, same.p), (0.0, 0.0, 0.0, 1.0));
        // The same seed gives the same draws.
        assert_eq!(
            paired_bootstrap(&truth, &[&good], &[&bad], 3, 300, 1),
            paired_bootstrap(&truth, &[&good], &[&bad], 3, 300, 1)
        );
        assert_eq!(percentile(&[1.0, 2.0, 3.0, 4.0], 50.0), 2.5);
    }
}

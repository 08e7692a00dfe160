//! The samplers of SPEC §5 and §7, each a pure function of (seed, epoch) so that a run
//! resumed mid-epoch draws what the uninterrupted run drew:
//!
//! - [`Imbalanced`]: as many draws as items, with replacement, each item with probability
//!   ∝ 1 / count(its label) — every class equally likely per draw.
//! - [`MaxSizeCycle`]: two task samplers walked together batch by batch until the longer is
//!   exhausted, the shorter restarting (with a fresh draw) when it runs out.
//! - [`Episodic`]: `num_samples` draws from an index list, with replacement, by weights.
//! - [`Categories`]: N-way K-shot episodes — per task `way` random classes and
//!   `shots + queries` distinct items of each, laid out item-major across the classes.
//!
//! [`Shuffle`] (each item once) lives with the trait in `train::sampler`.

use rand::distr::weighted::WeightedIndex;
use rand::distr::Distribution;
use rand::seq::{IndexedRandom, SliceRandom};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

pub use crate::train::sampler::{mix, Sampler, Shuffle};

fn rng(seed: u64, epoch: u64) -> ChaCha8Rng {
    ChaCha8Rng::seed_from_u64(mix(seed, epoch))
}

/// Draws `labels.len()` items with replacement, item `i` with weight 1 / count(labels[i]).
#[derive(Debug, Clone)]
pub struct Imbalanced {
    weights: Vec<f64>,
}

impl Imbalanced {
    /// `labels`: the label of each item (non-negative).
    pub fn new(labels: &[i64]) -> Imbalanced {
        let classes = labels.iter().copied().max().map_or(0, |m| m as usize + 1);
        let mut counts = vec![0usize; classes];
        for &y in labels {
            counts[y as usize] += 1;
        }
        Imbalanced { weights: labels.iter().map(|&y| 1.0 / counts[y as usize] as f64).collect() }
    }

    /// The weight of each item's draw.
    pub fn weights(&self) -> &[f64] {
        &self.weights
    }
}

impl Sampler for Imbalanced {
    fn len(&self) -> usize {
        self.weights.len()
    }

    fn order(&self, seed: u64, epoch: u64) -> Vec<usize> {
        let Ok(dist) = WeightedIndex::new(&self.weights) else { return Vec::new() };
        let mut rng = rng(seed, epoch);
        (0..self.weights.len()).map(|_| dist.sample(&mut rng)).collect()
    }
}

/// Draws `num_samples` items of `indices` with replacement, by `weights`.
#[derive(Debug, Clone)]
pub struct Episodic {
    pub indices: Vec<usize>,
    pub weights: Vec<f64>,
    pub num_samples: usize,
}

impl Sampler for Episodic {
    fn len(&self) -> usize {
        self.num_samples
    }

    fn order(&self, seed: u64, epoch: u64) -> Vec<usize> {
        let Ok(dist) = WeightedIndex::new(&self.weights) else { return Vec::new() };
        let mut rng = rng(seed, epoch);
        (0..self.num_samples).map(|_| self.indices[dist.sample(&mut rng)]).collect()
    }
}

/// N-way K-shot episodes: `episodes` iterations of `tasks_per_batch` tasks, each `way`
/// classes drawn at random and `shots + queries` items of each drawn without replacement
/// inside the class, laid out item-major (item 0 of every class, then item 1, …).
#[derive(Debug, Clone)]
pub struct Categories {
    /// The items of each class.
    by_class: Vec<Vec<usize>>,
    pub way: usize,
    pub shots: usize,
    pub queries: usize,
    pub tasks_per_batch: usize,
    pub episodes: usize,
}

impl Categories {
    /// Fails when fewer than `way` classes have `shots + queries` items.
    pub fn new(
        labels: &[i64],
        way: usize,
        shots: usize,
        queries: usize,
        tasks_per_batch: usize,
        episodes: usize,
    ) -> Result<Categories, String> {
        let classes = labels.iter().copied().max().map_or(0, |m| m as usize + 1);
        let mut by_class = vec![Vec::new(); classes];
        for (i, &y) in labels.iter().enumerate() {
            by_class[y as usize].push(i);
        }
        by_class.retain(|items| items.len() >= shots + queries);
        if by_class.len() < way || way == 0 || shots + queries == 0 {
            return Err(format!(
                "{way}-way episodes of {} items per class need {way} classes with that many items; {} have them",
                shots + queries,
                by_class.len()
            ));
        }
        Ok(Categories { by_class, way, shots, queries, tasks_per_batch, episodes })
    }

    /// Items of one batch (`tasks_per_batch` tasks).
    pub fn batch_len(&self) -> usize {
        self.tasks_per_batch * self.way * (self.shots + self.queries)
    }
}

impl Sampler for Categories {
    fn len(&self) -> usize {
        self.episodes * self.batch_len()
    }

    fn order(&self, seed: u64, epoch: u64) -> Vec<usize> {
        let mut rng = rng(seed, epoch);
        let per_class = self.shots + self.queries;
        let mut out = Vec::with_capacity(self.len());
        let class_ids: Vec<usize> = (0..self.by_class.len()).collect();
        for _ in 0..self.episodes * self.tasks_per_batch {
            let chosen: Vec<usize> = class_ids.choose_multiple(&mut rng, self.way).copied().collect();
            let items: Vec<Vec<usize>> = chosen
                .iter()
                .map(|&c| self.by_class[c].choose_multiple(&mut rng, per_class).copied().collect())
                .collect();
            for i in 0..per_class {
                out.extend(items.iter().map(|class_items| class_items[i]));
            }
        }
        out
    }
}

/// Two task samplers walked together, one batch of each per step, until the longer runs
/// out; the shorter starts again (a new draw) each time it is exhausted — "max size cycle".
/// Each position of the order packs an item of the first and one of the second (either may
/// be absent in a last, partial batch); see [`MaxSizeCycle::unpack`].
pub struct MaxSizeCycle {
    first: Box<dyn Sampler + Send + Sync>,
    second: Box<dyn Sampler + Send + Sync>,
    /// Items of each task (what the samplers' indexes range over).
    items: (usize, usize),
    batch: usize,
}

/// A task's sampler and the number of items its indexes range over.
pub type TaskSampler = (Box<dyn Sampler + Send + Sync>, usize);

impl MaxSizeCycle {
    pub fn new(first: TaskSampler, second: TaskSampler, batch: usize) -> Self {
        MaxSizeCycle { first: first.0, second: second.0, items: (first.1, second.1), batch: batch.max(1) }
    }

    /// Optimizer steps (pairs of batches) per epoch.
    pub fn steps(&self) -> usize {
        self.first.len().div_ceil(self.batch).max(self.second.len().div_ceil(self.batch))
    }

    /// The items of the first and second sampler a packed position holds.
    pub fn unpack(&self, index: usize) -> (Option<usize>, Option<usize>) {
        Self::unpack_for(index, self.items.0, self.items.1)
    }

    /// [`MaxSizeCycle::unpack`] knowing only how many items each task has.
    pub fn unpack_for(index: usize, first_items: usize, second_items: usize) -> (Option<usize>, Option<usize>) {
        let stride = second_items + 1;
        let (a, b) = (index / stride, index % stride);
        ((a < first_items).then_some(a), (b < second_items).then_some(b))
    }

    /// Batch `step` of a sampler whose every run (cycle) draws anew.
    fn batch_of(
        &self,
        sampler: &dyn Sampler,
        cycles: &mut Vec<Vec<usize>>,
        seed: u64,
        epoch: u64,
        step: usize,
    ) -> Vec<usize> {
        let batches = sampler.len().div_ceil(self.batch);
        if batches == 0 {
            return Vec::new();
        }
        let cycle = step / batches;
        while cycles.len() <= cycle {
            let c = cycles.len() as u64;
            cycles.push(sampler.order(if c == 0 { seed } else { mix(seed, c) }, epoch));
        }
        let order = &cycles[cycle];
        let start = (step % batches) * self.batch;
        order[start..(start + self.batch).min(order.len())].to_vec()
    }
}

impl Sampler for MaxSizeCycle {
    fn len(&self) -> usize {
        self.steps() * self.batch
    }

    fn order(&self, seed: u64, epoch: u64) -> Vec<usize> {
        let stride = self.items.1 + 1;
        let (none_a, none_b) = self.items;
        let (mut cycles_a, mut cycles_b) = (Vec::new(), Vec::new());
        let mut out = Vec::with_capacity(self.len());
        for step in 0..self.steps() {
            let a = self.batch_of(self.first.as_ref(), &mut cycles_a, mix(seed, 1), epoch, step);
            let b = self.batch_of(self.second.as_ref(), &mut cycles_b, mix(seed, 2), epoch, step);
            for j in 0..self.batch {
                out.push(a.get(j).copied().unwrap_or(none_a) * stride + b.get(j).copied().unwrap_or(none_b));
            }
        }
        out
    }
}

/// Batches of a window hold this many batches' worth of items (the HF Trainer's megabatch).
pub const LENGTH_WINDOW: usize = 50;

/// Another sampler's draws regrouped by [`group_by_length`]: the same items per epoch, in
/// batches of similar lengths (`train.group_by_length`).
pub struct ByLength {
    inner: Box<dyn Sampler + Send + Sync>,
    lengths: Vec<usize>,
    batch: usize,
}

impl ByLength {
    /// `lengths[i]`: the tokens of item `i`.
    pub fn new(inner: Box<dyn Sampler + Send + Sync>, lengths: Vec<usize>, batch: usize) -> Self {
        ByLength { inner, lengths, batch }
    }

    /// `inner` regrouped when `on`, else `inner` itself.
    pub fn wrap(
        on: bool,
        inner: Box<dyn Sampler + Send + Sync>,
        lengths: impl FnOnce() -> Vec<usize>,
        batch: usize,
    ) -> Box<dyn Sampler + Send + Sync> {
        if on {
            Box::new(ByLength::new(inner, lengths(), batch))
        } else {
            inner
        }
    }
}

impl Sampler for ByLength {
    fn len(&self) -> usize {
        self.inner.len()
    }

    fn order(&self, seed: u64, epoch: u64) -> Vec<usize> {
        let order = self.inner.order(seed, epoch);
        group_by_length(&order, |i| self.lengths[i], self.batch, LENGTH_WINDOW, seed, epoch)
    }
}

/// Cuts `order` into windows of `window` batches, sorts each window by `length` (longest
/// first), cuts it into batches and shuffles the batches: batches of similar lengths (little
/// padding) in an order as random as the sampler's (the HF Trainer's `group_by_length`).
/// Short batches (a window's tail) go last, so that cutting the result every `batch` items
/// gives the same batches.
pub fn group_by_length(
    order: &[usize],
    length: impl Fn(usize) -> usize,
    batch: usize,
    window: usize,
    seed: u64,
    epoch: u64,
) -> Vec<usize> {
    let mut rng = rng(mix(seed, 0x9e37), epoch);
    let mut batches: Vec<Vec<usize>> = Vec::new();
    for chunk in order.chunks((batch * window).max(1)) {
        let mut sorted = chunk.to_vec();
        sorted.sort_by_key(|&i| std::cmp::Reverse(length(i)));
        batches.extend(sorted.chunks(batch.max(1)).map(<[usize]>::to_vec));
    }
    batches.shuffle(&mut rng);
    let (mut whole, short): (Vec<_>, Vec<_>) = batches.into_iter().partition(|b| b.len() == batch.max(1));
    whole.extend(short);
    whole.concat()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Labels with classes of 60 %, 30 % and 10 % of 1000 items.
    fn skewed() -> Vec<i64> {
        (0..1000)
            .map(|i| {
                if i < 600 {
                    0
                } else if i < 900 {
                    1
                } else {
                    2
                }
            })
            .collect()
    }

    #[test]
    fn imbalanced_draws_every_class_equally_often() {
        let labels = skewed();
        let s = Imbalanced::new(&labels);
        let (mut counts, draws) = ([0usize; 3], 20);
        for epoch in 0..draws {
            let order = s.order(3, epoch);
            assert_eq!(order.len(), 1000);
            for i in order {
                counts[labels[i] as usize] += 1;
            }
        }
        // Each class has probability 1/3 per draw: 20,000 draws, sd ≈ 67; allow 5 sd.
        for c in counts {
            assert!((c as f64 - 20_000.0 / 3.0).abs() < 335.0, "{counts:?}");
        }
        assert_eq!(s.order(3, 1), s.order(3, 1), "a pure function of seed and epoch");
        assert_ne!(s.order(3, 1), s.order(3, 2));
    }

    #[test]
    fn episodic_follows_its_weights() {
        let s = Episodic { indices: vec![10, 20, 30], weights: vec![1.0, 2.0, 7.0], num_samples: 50_000 };
        let order = s.order(1, 0);
        let share = |v| order.iter().filter(|&&i| i == v).count() as f64 / 50_000.0;
        for (v, p) in [(10, 0.1), (20, 0.2), (30, 0.7)] {
            assert!((share(v) - p).abs() < 0.01, "{v}: {}", share(v));
        }
    }

    #[test]
    fn categories_lay_out_episodes_item_major_across_distinct_classes() {
        let labels: Vec<i64> = (0..100).map(|i| i % 5).collect();
        let s = Categories::new(&labels, 3, 2, 1, 2, 4).unwrap();
        let order = s.order(7, 0);
        assert_eq!(order.len(), 4 * 2 * 3 * 3);
        for task in order.chunks(3 * 3) {
            // Item-major: positions 0..3 are item 0 of the three classes, and so on.
            let classes: Vec<i64> = task[..3].iter().map(|&i| labels[i]).collect();
            let mut distinct = classes.clone();
            distinct.sort();
            distinct.dedup();
            assert_eq!(distinct.len(), 3, "three different classes: {classes:?}");
            for item in task.chunks(3) {
                assert_eq!(item.iter().map(|&i| labels[i]).collect::<Vec<_>>(), classes);
            }
            // Without replacement inside a class.
            let mut items = task.to_vec();
            items.sort();
            items.dedup();
            assert_eq!(items.len(), 9);
        }
        assert!(Categories::new(&labels, 6, 2, 1, 1, 1).is_err());
    }

    #[test]
    fn max_size_cycle_walks_the_longer_and_restarts_the_shorter() {
        let first: TaskSampler = (Box::new(Shuffle(10)), 10);
        let second: TaskSampler = (Box::new(Shuffle(25)), 25);
        let s = MaxSizeCycle::new(first, second, 4);
        assert_eq!(s.steps(), 7, "ceil(25 / 4) batches of the longer");
        let order = s.order(5, 0);
        assert_eq!(order.len(), 28);
        let pairs: Vec<(Option<usize>, Option<usize>)> = order.iter().map(|&i| s.unpack(i)).collect();
        // The longer: every item once, then a partial last batch.
        let b: Vec<usize> = pairs.iter().filter_map(|p| p.1).collect();
        let mut sorted = b.clone();
        sorted.sort();
        assert_eq!(sorted, (0..25).collect::<Vec<_>>());
        // The shorter (3 batches of 4, the last partial) runs 7 batches: 2 whole cycles and
        // one batch of a third, each cycle a permutation of its own.
        let a: Vec<Option<usize>> = pairs.iter().map(|p| p.0).collect();
        let cycle = |c: usize| a[c * 12..(c * 12 + 12).min(28)].iter().flatten().copied().collect::<Vec<_>>();
        for c in 0..2 {
            let mut items = cycle(c);
            items.sort();
            assert_eq!(items, (0..10).collect::<Vec<_>>(), "cycle {c}");
        }
        assert_ne!(cycle(0), cycle(1), "a restart draws anew");
        assert_eq!(order, s.order(5, 0));

        // A sampler drawing fewer times than its task has items: the items come back whole.
        let few = Episodic { indices: (0..10).collect(), weights: vec![1.0; 10], num_samples: 3 };
        let s = MaxSizeCycle::new((Box::new(few), 10), (Box::new(Shuffle(8)), 8), 4);
        assert_eq!(s.steps(), 2);
        let firsts: Vec<usize> = s.order(5, 0).iter().filter_map(|&i| s.unpack(i).0).collect();
        // Two batches of three draws (one per cycle), indexes over all 10 items.
        assert!(firsts.len() == 6 && firsts.iter().all(|i| *i < 10), "{firsts:?}");
        assert!(firsts.iter().any(|i| *i >= 3), "item indexes past the draw count survive: {firsts:?}");
    }

    #[test]
    fn length_grouping_keeps_the_items_and_batches_similar_lengths() {
        let order: Vec<usize> = Shuffle(200).order(1, 0);
        let length = |i: usize| (i * 37) % 101;
        let grouped = group_by_length(&order, length, 8, 5, 1, 0);
        // 200 = 5 windows of 40: whole batches; 203 leaves a short batch of 3, last.
        let drawn = Shuffle(203).order(1, 0);
        let mut tail = group_by_length(&drawn, length, 8, 5, 1, 0)[200..].to_vec();
        let mut last = drawn[200..].to_vec();
        tail.sort();
        last.sort();
        assert_eq!(tail, last, "the short batch of the last window goes last");
        let mut items = grouped.clone();
        items.sort();
        assert_eq!(items, (0..200).collect::<Vec<_>>());
        let spread = |o: &[usize]| -> usize {
            o.chunks(8)
                .map(|b| b.iter().map(|&i| length(i)).max().unwrap() - b.iter().map(|&i| length(i)).min().unwrap())
                .sum()
        };
        assert!(spread(&grouped) * 3 < spread(&order), "{} vs {}", spread(&grouped), spread(&order));
        // As a sampler: the inner sampler's items, regrouped, the same for the same seed.
        let by = ByLength::new(Box::new(Shuffle(200)), (0..200).map(length).collect(), 8);
        assert_eq!(by.order(1, 0), group_by_length(&order, length, 8, LENGTH_WINDOW, 1, 0));
        assert_eq!(by.len(), 200);
    }
}

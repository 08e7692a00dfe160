//! The order in which an epoch walks the training examples. A sampler is a pure function of
//! the seed and the epoch, so a run resumed in the middle of an epoch replays the batches
//! the uninterrupted run drew; the step-2 samplers (imbalanced, episodic) implement it too.

use rand::seq::SliceRandom;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

/// Draws the training examples of each epoch.
pub trait Sampler {
    /// How many draws an epoch makes.
    fn len(&self) -> usize;

    /// Whether an epoch draws nothing.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The example indexes epoch `epoch` walks, in order (`len()` of them).
    fn order(&self, seed: u64, epoch: u64) -> Vec<usize>;
}

/// Every one of `n` examples once per epoch, in a seeded random order.
#[derive(Debug, Clone, Copy)]
pub struct Shuffle(pub usize);

impl Sampler for Shuffle {
    fn len(&self) -> usize {
        self.0
    }

    fn order(&self, seed: u64, epoch: u64) -> Vec<usize> {
        let mut idx: Vec<usize> = (0..self.0).collect();
        idx.shuffle(&mut ChaCha8Rng::seed_from_u64(mix(seed, epoch)));
        idx
    }
}

/// Mixes two numbers into a seed (SplitMix64 finaliser).
pub fn mix(a: u64, b: u64) -> u64 {
    let mut z = a ^ b.wrapping_add(0x9e37_79b9_7f4a_7c15).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shuffle_is_a_seeded_permutation_per_epoch() {
        let s = Shuffle(50);
        let a = s.order(7, 0);
        assert_eq!(a, s.order(7, 0), "a pure function of seed and epoch");
        assert_ne!(a, s.order(7, 1));
        assert_ne!(a, s.order(8, 0));
        let mut sorted = a.clone();
        sorted.sort();
        assert_eq!(sorted, (0..50).collect::<Vec<_>>());
    }
}

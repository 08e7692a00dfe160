//! Masked-LM data (SPEC §5, step 1b): tokenized utterances concatenated and cut into blocks,
//! and BERT's masking — 15 % of the non-special tokens are chosen; of those 80 % become the
//! mask token, 10 % a random token, 10 % stay; the loss sees only the chosen positions.

use rand::Rng;
use rand_chacha::ChaCha8Rng;

/// The label of positions the loss ignores (PyTorch's `ignore_index`).
pub const IGNORE: i64 = -100;

/// Concatenates token sequences and cuts them into blocks of `block` tokens; the short tail
/// is dropped.
pub fn group_blocks(sequences: impl IntoIterator<Item = Vec<i64>>, block: usize) -> Vec<Vec<i64>> {
    let all: Vec<i64> = sequences.into_iter().flatten().collect();
    all.chunks_exact(block).map(<[i64]>::to_vec).collect()
}

/// How tokens are masked.
#[derive(Debug, Clone)]
pub struct Masking {
    pub probability: f64,
    pub mask_id: i64,
    pub vocab_size: i64,
    /// Never chosen (CLS, SEP, PAD, …).
    pub special_ids: Vec<i64>,
}

impl Masking {
    /// Masks `ids` in place and returns the labels (the original id where chosen, else
    /// [`IGNORE`]).
    pub fn apply(&self, ids: &mut [i64], rng: &mut ChaCha8Rng) -> Vec<i64> {
        ids.iter_mut()
            .map(|id| {
                if self.special_ids.contains(id) || !rng.random_bool(self.probability) {
                    return IGNORE;
                }
                let original = *id;
                let r: f64 = rng.random();
                if r < 0.8 {
                    *id = self.mask_id;
                } else if r < 0.9 {
                    *id = rng.random_range(0..self.vocab_size);
                }
                original
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    #[test]
    fn blocks_drop_the_tail() {
        let blocks = group_blocks(vec![vec![1, 2, 3], vec![4, 5], vec![6, 7, 8]], 3);
        assert_eq!(blocks, vec![vec![1, 2, 3], vec![4, 5, 6]]);
    }

    #[test]
    fn masking_matches_80_10_10_and_spares_special_tokens() {
        let masking = Masking { probability: 0.15, mask_id: 4, vocab_size: 1000, special_ids: vec![0, 1, 2, 3, 4] };
        let mut rng = ChaCha8Rng::seed_from_u64(1);
        let original: Vec<i64> = (0..400_000).map(|i| if i % 10 == 0 { (i / 10) % 4 } else { 5 + (i % 990) }).collect();
        let mut ids = original.clone();
        let labels = masking.apply(&mut ids, &mut rng);
        let (mut chosen, mut masked, mut random, mut kept, mut eligible) = (0f64, 0f64, 0f64, 0f64, 0f64);
        for ((&o, &i), &l) in original.iter().zip(&ids).zip(&labels) {
            if masking.special_ids.contains(&o) {
                assert_eq!((i, l), (o, IGNORE), "special tokens are never chosen");
                continue;
            }
            eligible += 1.0;
            if l == IGNORE {
                assert_eq!(i, o);
                continue;
            }
            assert_eq!(l, o);
            chosen += 1.0;
            if i == masking.mask_id {
                masked += 1.0;
            } else if i == o {
                kept += 1.0;
            } else {
                random += 1.0;
            }
        }
        // Random replacements that draw the original token count as kept (1 in 1000).
        assert!((chosen / eligible - 0.15).abs() < 0.003, "{}", chosen / eligible);
        assert!((masked / chosen - 0.8).abs() < 0.01, "{}", masked / chosen);
        assert!((random / chosen - 0.1).abs() < 0.01, "{}", random / chosen);
        assert!((kept / chosen - 0.1).abs() < 0.01, "{}", kept / chosen);
        // The same seed masks the same way.
        let mut again = original.clone();
        assert_eq!(masking.apply(&mut again, &mut ChaCha8Rng::seed_from_u64(1)), labels);
        assert_eq!(again, ids);
    }
}

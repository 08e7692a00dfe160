//! Dropout and attention for training on the CPU.
//!
//! libtorch draws a CPU dropout mask one element at a time from its Mersenne Twister
//! (`bernoulli_`, a serial loop), and attention with dropout leaves the fused kernel for its
//! math path: a quarter of a TAFT step 2 at the demo's size went to drawing masks. Here
//! the mask comes from xoshiro256++ (a few bits per nanosecond) and is applied by vectorized
//! tensor ops; it is seeded by one draw from libtorch's generator, so a run stays a function
//! of `tch::manual_seed` (which the fit loop sets per batch) and a resumed run replays it.
//!
//! The semantics are `nn.Dropout`'s: each element is zeroed with probability `p` (exact to
//! 2⁻³²) and the others are scaled by 1/(1 − p). On CUDA, and outside training, the native
//! ops run unchanged (CUDA's dropout and fused attention draw their masks in the kernel).

use rand::{RngCore, SeedableRng};
use rand_xoshiro::Xoshiro256PlusPlus;
use tch::{Device, Kind, Tensor};

/// Whether a dropout of `p` draws its mask here: in training, on the CPU, 0 < p.
fn drawn_here(x: &Tensor, p: f64, train: bool) -> bool {
    train && p > 0.0 && x.device() == Device::Cpu
}

/// Elements decided at a time: the mask is built in chunks, so the only memory it takes
/// beyond its own byte per element is one chunk's (1 MiB).
const CHUNK: usize = 1 << 20;

/// A keep mask of `shape`: true with probability 1 − p.
///
/// Element i is kept when the i-th 32-bit word of the generator's byte stream (little
/// endian: the low, then the high half of each 64-bit output; a last odd element takes the
/// high half of one more output, as `fill_bytes` does), read as an i32, is at least
/// i32::MIN + round(p · 2³²): probability round(p · 2³²) / 2³² of a drop. The words are
/// compared as they are drawn, so no word buffer or comparison pass over it is needed.
fn keep_mask(shape: &[i64], p: f64) -> Tensor {
    let n: i64 = shape.iter().product();
    // One draw from libtorch's generator seeds the mask.
    let seed = Tensor::randint(i64::MAX, [1], (Kind::Int64, Device::Cpu)).int64_value(&[0]) as u64;
    let mut rng = Xoshiro256PlusPlus::seed_from_u64(seed);
    let threshold = i32::MIN as i64 + (p * 4_294_967_296.0).round().min(4_294_967_296.0) as i64;
    let kept = |word: u32| word as i32 as i64 >= threshold;
    let keep = Tensor::empty([n], (Kind::Bool, Device::Cpu));
    let mut chunk = vec![false; CHUNK.min(n as usize)];
    let mut start = 0;
    while start < n as usize {
        // CHUNK is even: only the last chunk can end in half an output.
        let len = CHUNK.min(n as usize - start);
        let part = &mut chunk[..len];
        let mut pairs = part.chunks_exact_mut(2);
        for pair in &mut pairs {
            let word = rng.next_u64();
            pair[0] = kept(word as u32);
            pair[1] = kept((word >> 32) as u32);
        }
        if let [last] = pairs.into_remainder() {
            *last = kept(rng.next_u32());
        }
        keep.narrow(0, start as i64, len as i64).copy_(&Tensor::from_slice(part));
        start += len;
    }
    keep.view(shape)
}

/// `nn.Dropout(p)` in training mode (`train`), the identity otherwise.
pub fn dropout(x: &Tensor, p: f64, train: bool) -> Tensor {
    if !drawn_here(x, p, train) {
        return x.dropout(p, train);
    }
    if p >= 1.0 {
        return x.zeros_like();
    }
    // Multiplying by the boolean mask keeps that mask (one byte an element) for the
    // backward pass; a float mask, as libtorch's CPU dropout keeps, would take four.
    (x * keep_mask(&x.size(), p)) * (1.0 / (1.0 - p))
}

/// `F.scaled_dot_product_attention(q, k, v, mask, dropout_p = p if train else 0)`:
/// `q`, `k`, `v` [batch, heads, seq, head_dim]; `mask` boolean, true where a key may be
/// attended (broadcast to [batch, heads, seq, seq]). With dropout on the CPU the attention
/// weights are computed here (as the op's math path does) and dropped by [`dropout`].
pub fn attention(q: &Tensor, k: &Tensor, v: &Tensor, mask: Option<&Tensor>, p: f64, train: bool) -> Tensor {
    if !drawn_here(q, p, train) {
        let p = if train { p } else { 0.0 };
        return Tensor::scaled_dot_product_attention(q, k, v, mask, p, false, None, false);
    }
    attention_with(q, k, v, mask, |weights| dropout(weights, p, true))
}

/// Attention with `drop` applied to the weights.
fn attention_with(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    mask: Option<&Tensor>,
    drop: impl Fn(&Tensor) -> Tensor,
) -> Tensor {
    let head_dim = *q.size().last().expect("attention inputs have a head dimension");
    let scores = (q * (1.0 / (head_dim as f64).sqrt())).matmul(&k.transpose(-2, -1));
    // An additive bias (−∞ at masked keys) is one vectorized pass; `masked_fill` over the
    // scores is a serial one.
    let scores = match mask {
        Some(mask) => {
            let bias = Tensor::zeros(mask.size(), (scores.kind(), scores.device()))
                .masked_fill(&mask.logical_not(), f64::NEG_INFINITY);
            scores + bias
        }
        None => scores,
    };
    drop(&scores.softmax(-1, scores.kind())).matmul(v)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn drops_at_the_rate_and_scales_the_rest() {
        tch::manual_seed(3);
        let x = Tensor::ones([400, 1000], (Kind::Float, Device::Cpu));
        for p in [0.1, 0.5] {
            let y = dropout(&x, p, true);
            let zeros = f64::try_from(y.eq(0.0).to_kind(Kind::Double).mean(Kind::Double)).unwrap();
            // 400,000 Bernoulli draws: the rate's standard error is under 0.001.
            assert!((zeros - p).abs() < 0.004, "p {p}: {zeros} zeroed");
            let kept = f64::try_from(y.max()).unwrap();
            let least_kept = f64::try_from(y.masked_fill(&y.eq(0.0), f64::INFINITY).min()).unwrap();
            assert!((kept - 1.0 / (1.0 - p)).abs() < 1e-6 && kept == least_kept, "p {p}: kept scaled to {kept}");
        }
        // Consecutive masks differ; the same seed gives the same mask; no dropout outside training.
        tch::manual_seed(9);
        let (a, b) = (dropout(&x, 0.1, true), dropout(&x, 0.1, true));
        tch::manual_seed(9);
        let again = dropout(&x, 0.1, true);
        assert!(a != b && a == again);
        assert!(dropout(&x, 0.1, false) == x && dropout(&x, 0.0, true) == x);
        assert_eq!(f64::try_from(dropout(&x, 1.0, true).abs().sum(Kind::Double)).unwrap(), 0.0);
    }

    /// The mask as the generator's byte stream read as i32 words and compared in libtorch.
    fn keep_mask_from_bytes(n: usize, p: f64, seed: u64) -> Tensor {
        let mut rng = Xoshiro256PlusPlus::seed_from_u64(seed);
        let mut bytes = vec![0u8; 4 * n];
        rng.fill_bytes(&mut bytes);
        let threshold = i32::MIN as i64 + (p * 4_294_967_296.0).round() as i64;
        Tensor::from_data_size(&bytes, &[n as i64], Kind::Int).ge(threshold)
    }

    #[test]
    fn the_mask_is_the_byte_stream_compared_word_by_word() {
        // Odd and even sizes, one element, and more than one chunk ending in half an output.
        for (n, p) in [(1, 0.5), (6, 0.1), (1001, 0.1), (4096, 0.5), (2 * CHUNK + 3, 0.1)] {
            tch::manual_seed(11);
            let seed = Tensor::randint(i64::MAX, [1], (Kind::Int64, Device::Cpu)).int64_value(&[0]) as u64;
            tch::manual_seed(11);
            let mask = keep_mask(&[n as i64], p);
            assert!(mask == keep_mask_from_bytes(n, p, seed), "n {n}, p {p}");
        }
    }

    #[test]
    fn gradients_pass_the_kept_elements_only() {
        tch::manual_seed(5);
        let x = Tensor::randn([64, 32], (Kind::Float, Device::Cpu)).set_requires_grad(true);
        let y = dropout(&x, 0.3, true);
        y.sum(Kind::Float).backward();
        let expected = y.ne(0.0).to_kind(Kind::Float) / 0.7;
        assert!(x.grad().allclose(&expected, 1e-6, 1e-6, false));
    }

    #[test]
    fn attention_weights_are_the_fused_ops() {
        tch::manual_seed(1);
        let opts = (Kind::Float, Device::Cpu);
        let (q, k, v) =
            (Tensor::randn([2, 4, 7, 8], opts), Tensor::randn([2, 4, 7, 8], opts), Tensor::randn([2, 4, 7, 8], opts));
        // The second item's last three keys are padding.
        let mask =
            Tensor::from_slice(&[1i64, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0]).view([2, 1, 1, 7]).to_kind(Kind::Bool);
        for m in [None, Some(&mask)] {
            let fused = Tensor::scaled_dot_product_attention(&q, &k, &v, m, 0.0, false, None, false);
            let here = attention_with(&q, &k, &v, m, |w| w.shallow_clone());
            let diff = f64::try_from((fused - here).abs().max()).unwrap();
            assert!(diff < 1e-5, "{diff}");
        }
        // With dropout, the weights keep their scale on average: with values of 1 the mean
        // output over 1,024 queries is 1 (standard error about 0.01).
        let (q1, k1) = (Tensor::randn([8, 4, 32, 8], opts), Tensor::randn([8, 4, 32, 8], opts));
        let out = attention(&q1, &k1, &Tensor::ones([8, 4, 32, 8], opts), None, 0.5, true);
        let mean = f64::try_from(out.mean(Kind::Double)).unwrap();
        assert!((mean - 1.0).abs() < 0.05 && f64::try_from(out.min()).unwrap() < 0.9, "{mean}");
        assert!(attention(&q, &k, &v, Some(&mask), 0.5, false).allclose(
            &Tensor::scaled_dot_product_attention(&q, &k, &v, Some(&mask), 0.0, false, None, false),
            0.0,
            0.0,
            false
        ));
    }
}

//! Training: the `train:` config every training step shares, the sampler trait, and (with
//! the `train` feature) the fit loop on tch with AdamW, the schedule, the SPEC §4 losses,
//! masked-LM data and `_work/` checkpoints.

pub mod config;
#[cfg(feature = "train")]
pub mod fit;
#[cfg(feature = "train")]
pub mod loss;
#[cfg(feature = "train")]
pub mod mlm;
#[cfg(feature = "train")]
pub mod optim;
pub mod sampler;
#[cfg(feature = "train")]
pub mod schedule;
#[cfg(feature = "train")]
pub mod work;

pub use config::{Best, GroupRule, Mode, Precision, TrainConfig, THREADS_VAR};
#[cfg(feature = "train")]
pub use fit::{fit, write_metrics, Fit, Metrics, Objective};
pub use sampler::{mix, Sampler, Shuffle};

/// Bytes of activations one row of `tokens` tokens keeps for the backward pass through
/// `layers` transformer layers of width `hidden`, FFN `intermediate` and `heads` heads,
/// estimated: per token and layer about twelve hidden-size and two intermediate-size fp32
/// vectors, and per head a row of attention scores, weights and dropped weights (fp32) and
/// its dropout mask (a byte each).
pub fn activation_bytes(layers: i64, hidden: i64, intermediate: i64, heads: i64, tokens: usize) -> u64 {
    let (hidden, intermediate, heads, tokens) = (hidden as u64, intermediate as u64, heads as u64, tokens as u64);
    let per_token_layer = 4 * (12 * hidden + 2 * intermediate) + 13 * heads * tokens;
    per_token_layer * tokens * layers.max(0) as u64
}

#[cfg(feature = "train")]
unsafe extern "C" {
    /// `src/train/torch_ext.cpp`: sets this thread's CUDA autocast type; 0 on success.
    fn taft_cuda_autocast_bf16(bf16: i32) -> i32;
    /// This thread's CUDA autocast type: 0 fp16, 1 bf16, 2 another.
    #[cfg(test)]
    fn taft_cuda_autocast_type() -> i32;
    /// `src/train/torch_ext.cpp`: libtorch's fused AdamW update of `n` parameters in place.
    pub(crate) fn taft_fused_adamw(
        params: *const *const torch_sys::C_tensor,
        grads: *const *const torch_sys::C_tensor,
        exp_avgs: *const *const torch_sys::C_tensor,
        exp_avg_sqs: *const *const torch_sys::C_tensor,
        step: *const torch_sys::C_tensor,
        n: usize,
        lr: f64,
        beta1: f64,
        beta2: f64,
        weight_decay: f64,
        eps: f64,
        err: *mut std::ffi::c_char,
        err_len: usize,
    ) -> i32;
    /// `src/train/torch_ext.cpp`: drops the gradients of `n` tensors; 0 on success.
    pub(crate) fn taft_clear_grads(tensors: *const *const torch_sys::C_tensor, n: usize) -> i32;
}

/// Makes this thread's CUDA autocast compute in bf16 (`true`) or fp16.
#[cfg(feature = "train")]
pub fn autocast_type(bf16: bool) -> crate::error::Result<()> {
    // SAFETY: the function takes a plain integer and catches every C++ exception.
    match unsafe { taft_cuda_autocast_bf16(i32::from(bf16)) } {
        0 => Ok(()),
        _ => Err(crate::error::Error::Other("libtorch refused to set the CUDA autocast type".into())),
    }
}

#[cfg(all(test, feature = "train"))]
mod tests {
    #[test]
    fn the_autocast_type_is_set_per_thread_in_libtorch() {
        // SAFETY: reads a thread-local of libtorch; catches every C++ exception.
        let current = || unsafe { super::taft_cuda_autocast_type() };
        assert_eq!(current(), 0, "libtorch's default is fp16");
        super::autocast_type(true).unwrap();
        assert_eq!(current(), 1);
        std::thread::spawn(move || assert_eq!(unsafe { super::taft_cuda_autocast_type() }, 0)).join().unwrap();
        super::autocast_type(false).unwrap();
        assert_eq!(current(), 0);
    }
}

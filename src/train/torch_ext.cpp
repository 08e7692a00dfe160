// What libtorch has and tch does not expose: the CUDA autocast type, and the fused AdamW
// update over lists of tensors. Tensors come as tch passes them: `torch::Tensor*`.
#include <ATen/autocast_mode.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/_fused_adamw.h>

#include <cstring>
#include <exception>
#include <vector>

// Sets this thread's CUDA autocast type (libtorch keeps it per thread; fp16 unless set).
extern "C" int taft_cuda_autocast_bf16(int bf16) {
  try {
    at::autocast::set_autocast_dtype(at::kCUDA, bf16 ? at::kBFloat16 : at::kHalf);
    return 0;
  } catch (...) {
    return 1;
  }
}

// This thread's CUDA autocast type: 0 fp16, 1 bf16, 2 another.
extern "C" int taft_cuda_autocast_type() {
  try {
    auto t = at::autocast::get_autocast_dtype(at::kCUDA);
    return t == at::kHalf ? 0 : t == at::kBFloat16 ? 1 : 2;
  } catch (...) {
    return 2;
  }
}

// One AdamW update of `n` parameters sharing a learning rate and weight decay, in place:
// `torch.optim.AdamW(fused=True)`'s kernel (one pass over each tensor on the CPU, a few
// launches for all of them on CUDA). `step` is a float tensor holding the step count (1 for
// the first update) on the parameters' device. On failure writes the reason to `err`.
extern "C" int taft_fused_adamw(const at::Tensor* const* params, const at::Tensor* const* grads,
                                const at::Tensor* const* exp_avgs, const at::Tensor* const* exp_avg_sqs,
                                const at::Tensor* step, size_t n, double lr, double beta1, double beta2,
                                double weight_decay, double eps, char* err, size_t err_len) {
  try {
    std::vector<at::Tensor> p, g, m, v, s;
    for (size_t i = 0; i < n; ++i) {
      p.push_back(*params[i]);
      g.push_back(*grads[i]);
      m.push_back(*exp_avgs[i]);
      v.push_back(*exp_avg_sqs[i]);
      s.push_back(*step);
    }
    at::_fused_adamw_(p, g, m, v, {}, s, lr, beta1, beta2, weight_decay, eps, false, false);
    return 0;
  } catch (const std::exception& e) {
    if (err_len > 0) {
      std::strncpy(err, e.what(), err_len - 1);
      err[err_len - 1] = '\0';
    }
    return 1;
  }
}

// Drops the gradients of `n` tensors (`zero_grad(set_to_none=True)`): the next backward
// writes fresh gradients instead of adding to zeros, one pass over memory fewer.
extern "C" int taft_clear_grads(const at::Tensor* const* tensors, size_t n) {
  try {
    for (size_t i = 0; i < n; ++i) {
      tensors[i]->mutable_grad().reset();
    }
    return 0;
  } catch (...) {
    return 1;
  }
}

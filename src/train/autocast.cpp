// The type CUDA autocast computes in: tch turns autocast on and off but does not choose its
// type, which libtorch keeps per thread (fp16 unless set).
#include <ATen/autocast_mode.h>

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

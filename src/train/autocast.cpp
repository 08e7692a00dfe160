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

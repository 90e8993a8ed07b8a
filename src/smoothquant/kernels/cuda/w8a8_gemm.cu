// One CUTLASS kernel configuration per translation unit: build.py compiles this file once per
// entry of configs.CONFIGS (in parallel), each with its -D macros, and links the objects into one
// shared library with a plain C ABI, so it loads with ctypes into any torch build.
//   SQ_NAME  symbol suffix              SQ_TM, SQ_TN, SQ_TK  CTA tile (M', N', K)
//   SQ_CM, SQ_CN  cluster shape         SQ_SCHED  Pingpong | Cooperative | CooperativeStreamK | WarpSpecialized
//   SQ_SWAP  0 | 1 (D^T = B A^T)        SQ_OUT    cutlass::bfloat16_t | float
#include "w8a8_gemm.cuh"

#if !defined(SQ_NAME) || !defined(SQ_TM) || !defined(SQ_TN) || !defined(SQ_TK) || !defined(SQ_CM) || \
    !defined(SQ_CN) || !defined(SQ_SCHED) || !defined(SQ_SWAP) || !defined(SQ_OUT)
#error "w8a8_gemm.cu is compiled by smoothquant/kernels/cuda/build.py, which defines the SQ_* macros"
#endif

#define SQ_CAT2(a, b) a##b
#define SQ_CAT(a, b) SQ_CAT2(a, b)

using SqConfig = sq::Config<cute::Shape<cute::Int<SQ_TM>, cute::Int<SQ_TN>, cute::Int<SQ_TK>>,
                            cute::Shape<cute::Int<SQ_CM>, cute::Int<SQ_CN>, cute::_1>, sq::SQ_SCHED,
                            SQ_SWAP != 0, SQ_OUT>;

extern "C" int SQ_CAT(sq_w8a8_gemm_, SQ_NAME)(const int8_t* a, int64_t lda, const int8_t* b, int64_t ldb,
                                             void* d, int64_t ldd, const float* a_scale,
                                             int64_t a_scale_stride, const float* w_scale, const void* bias,
                                             int M, int N, int K, void* workspace, size_t workspace_bytes,
                                             int sm_count, int swizzle, int pdl, void* stream) {
  return sq::run<SqConfig>(a, lda, b, ldb, d, ldd, a_scale, a_scale_stride, w_scale, bias, M, N, K, workspace,
                           workspace_bytes, sm_count, swizzle, pdl, static_cast<cudaStream_t>(stream));
}

extern "C" size_t SQ_CAT(sq_w8a8_workspace_, SQ_NAME)(int M, int N, int K, int sm_count, int swizzle) {
  return sq::workspace_size<SqConfig>(M, N, K, sm_count, swizzle);
}

// shared memory bytes, threads per CTA and mainloop stages, for the benchmark's notes
extern "C" void SQ_CAT(sq_w8a8_info_, SQ_NAME)(int* out) {
  using GK = SqConfig::GemmKernel;
  out[0] = static_cast<int>(GK::SharedStorageSize);
  out[1] = static_cast<int>(GK::MaxThreadsPerBlock);
  out[2] = static_cast<int>(SqConfig::CollectiveMainloop::DispatchPolicy::Stages);
}

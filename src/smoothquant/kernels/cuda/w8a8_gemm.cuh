// W8A8 GEMM for Hopper (sm_90a) on CUTLASS 3.x collectives: int8 x int8 -> int32 on the tensor
// cores (wgmma, TMA loads, warp-specialised persistent kernels), then in the epilogue
//   D[m, n] = cast((acc[m, n] * a_scale[m]) * w_scale[n] + bias[n])
// the order the reference epilogue uses (quantization/quantizer.py; ops.int8_matmul).
//
// A is [M, K] int8 read with its own row stride: the activation rows the Triton quantization
// kernels write are packed (integers, then the row's fp32 scale; kernels/packing.py), so the
// GEMM reads the integers in place and the per-token scale with a stride of one packed row.
// CUTLASS's column/row broadcast nodes only take unit-stride vectors, hence StridedVec below.
// B is the weight [N, K] int8 (K-major), D is [M, N] bf16 (or fp32) row-major.
//
// Swap (small M): D^T = B A^T runs as a GEMM with M' = N and N' = M, so a handful of tokens sit
// on a narrow N' tile instead of wasting most of a 64-row wgmma; the per-token scale then varies
// along N' and the weight scale and bias along M'.
#pragma once

#include <cstdint>
#include <cuda_runtime.h>

#include "cute/tensor.hpp"
#include "cutlass/cutlass.h"
#include "cutlass/numeric_types.h"
#include "cutlass/gemm/dispatch_policy.hpp"
#include "cutlass/gemm/collective/collective_builder.hpp"
#include "cutlass/epilogue/collective/collective_builder.hpp"
#include "cutlass/epilogue/fusion/sm90_callbacks_tma_warpspecialized.hpp"
#include "cutlass/gemm/device/gemm_universal_adapter.h"
#include "cutlass/gemm/kernel/gemm_universal.hpp"
#include "cutlass/gemm/kernel/tile_scheduler.hpp"
#include "cutlass/util/packed_stride.hpp"

namespace sq {
using namespace cute;
namespace fusion = cutlass::epilogue::fusion;

// A fp32 vector broadcast over one mode of the output tile, read with a run-time element stride.
// Mode 0: one value per output row (varies along M); Mode 1: one per output column (along N).
// Each thread loads the few values its accumulator fragment needs straight from global memory
// once per tile (as CUTLASS's unit-stride broadcasts do), predicated on the problem's bounds.
template <int Mode>
struct StridedVec {
  struct SharedStorage {};
  struct Arguments {
    float const* ptr = nullptr;
    int64_t stride = 1;
  };
  using Params = Arguments;

  template <class ProblemShape>
  static constexpr Params to_underlying_arguments(ProblemShape const&, Arguments const& args, void*) {
    return args;
  }
  template <class ProblemShape>
  static bool can_implement(ProblemShape const&, Arguments const& args) {
    return args.ptr != nullptr;
  }
  template <class ProblemShape>
  static size_t get_workspace_size(ProblemShape const&, Arguments const&) {
    return 0;
  }
  template <class ProblemShape>
  static cutlass::Status initialize_workspace(ProblemShape const&, Arguments const&, void*, cudaStream_t,
                                              cutlass::CudaHostAdapter* = nullptr) {
    return cutlass::Status::kSuccess;
  }

  CUTLASS_HOST_DEVICE StridedVec() {}
  CUTLASS_HOST_DEVICE StridedVec(Params const& params, SharedStorage const&) : params(params) {}
  Params params;

  CUTLASS_DEVICE bool is_producer_load_needed() const { return false; }
  CUTLASS_DEVICE bool is_C_load_needed() const { return false; }
  CUTLASS_DEVICE bool is_zero() const { return false; }

  template <class... Args>
  CUTLASS_DEVICE auto get_producer_load_callbacks(fusion::ProducerLoadArgs<Args...> const&) {
    return fusion::EmptyProducerLoadCallbacks{};
  }

  template <class GTensor, class RTensor, class CTensor, class Residue>
  struct Callbacks : fusion::EmptyConsumerStoreCallbacks {
    CUTLASS_DEVICE Callbacks(GTensor g, RTensor r, CTensor c, Residue residue)
        : tCgVec(g), tCrVec(r), tCcVec(c), residue(residue) {}
    GTensor tCgVec;  // (CPY,CPY_M,CPY_N,EPI_M,EPI_N) in global memory, stride 0 along the broadcast
    RTensor tCrVec;  // the same in registers
    CTensor tCcVec;  // output coordinates, for the bounds check
    Residue residue;

    CUTLASS_DEVICE void begin() {
      // drop the broadcast (stride-0) modes: one load per distinct value this thread needs
      Tensor g = filter_zeros(tCgVec);
      Tensor r = filter_zeros(tCrVec);
      Tensor c = filter_zeros(tCcVec, tCgVec.stride());
      CUTLASS_PRAGMA_UNROLL
      for (int i = 0; i < size(r); ++i) {
        r(i) = elem_less(c(i), residue) ? g(i) : 0.f;
      }
    }

    template <class ElementAccumulator, int FragmentSize>
    CUTLASS_DEVICE cutlass::Array<float, FragmentSize> visit(cutlass::Array<ElementAccumulator, FragmentSize> const&, int epi_v,
                                                    int epi_m, int epi_n) {
      cutlass::Array<float, FragmentSize> out;
      Tensor r = tCrVec(_, _, _, epi_m, epi_n);
      CUTLASS_PRAGMA_UNROLL
      for (int i = 0; i < FragmentSize; ++i) {
        out[i] = r(epi_v * FragmentSize + i);
      }
      return out;
    }
  };

  template <bool ReferenceSrc, class... Args>
  CUTLASS_DEVICE auto get_consumer_store_callbacks(fusion::ConsumerStoreArgs<Args...> const& args) {
    auto [M, N, K, L] = args.problem_shape_mnkl;
    auto shape = make_shape(M, N, L);
    auto strided = [&] {
      if constexpr (Mode == 0) return make_stride(params.stride, _0{}, _0{});
      else return make_stride(_0{}, params.stride, _0{});
    }();
    auto unit = [] {
      if constexpr (Mode == 0) return make_stride(_1{}, _0{}, _0{});
      else return make_stride(_0{}, _1{}, _0{});
    }();
    Tensor mVec = make_tensor(make_gmem_ptr(params.ptr), make_layout(shape, strided));
    Tensor tCgVec = fusion::sm90_partition_for_epilogue<ReferenceSrc>(
        mVec, args.tile_shape_mnk, args.tile_coord_mnkl, args.epi_tile, args.tiled_copy, args.thread_idx);
    // registers laid out as the unit-stride partition: static, broadcast modes kept at stride 0
    Tensor mUnit = make_tensor(make_gmem_ptr(params.ptr), make_layout(shape, unit));
    Tensor tCgUnit = fusion::sm90_partition_for_epilogue<ReferenceSrc>(
        mUnit, args.tile_shape_mnk, args.tile_coord_mnkl, args.epi_tile, args.tiled_copy, args.thread_idx);
    Tensor tCrVec = make_tensor_like<float>(tCgUnit);
    return Callbacks<decltype(tCgVec), decltype(tCrVec), decltype(args.tCcD), decltype(args.residue_tCcD)>(
        tCgVec, tCrVec, args.tCcD, args.residue_tCcD);
  }
};

struct Pingpong {
  using Kernel = cutlass::gemm::KernelTmaWarpSpecializedPingpong;
  using Epilogue = cutlass::epilogue::TmaWarpSpecialized;
  using Scheduler = cutlass::gemm::PersistentScheduler;
};
struct Cooperative {
  using Kernel = cutlass::gemm::KernelTmaWarpSpecializedCooperative;
  using Epilogue = cutlass::epilogue::TmaWarpSpecializedCooperative;
  using Scheduler = cutlass::gemm::PersistentScheduler;
};
// CUTLASS 4.2's stream-K scheduler does not compile once PDL instantiates its is_last_tile: that
// const method passes a data member to a non-const reference parameter, which nvcc 13 rejects.
// The same scheduler with is_last_tile asked of a copy (the member it changes is thrown away).
template <class TileShape, class ClusterShape>
class StreamKScheduler : public cutlass::gemm::kernel::detail::PersistentTileSchedulerSm90StreamK<TileShape, ClusterShape> {
  using Base = cutlass::gemm::kernel::detail::PersistentTileSchedulerSm90StreamK<TileShape, ClusterShape>;

 public:
  using Base::Base;
  CUTLASS_DEVICE bool is_last_tile(typename Base::WorkTileInfo work_tile_info, uint32_t advance_count = 1) const {
    if (this->continue_current_work(work_tile_info)) return false;
    Base next = *this;
    next.advance_to_next_work(advance_count);
    return !next.get_current_work().is_valid();
  }
};
struct StreamKTag {};
}  // namespace sq

namespace cutlass::gemm::kernel::detail {
template <class TileShape, class ClusterShape, uint32_t Stages>
struct TileSchedulerSelector<sq::StreamKTag, arch::Sm90, TileShape, ClusterShape, Stages> {
  using Scheduler = sq::StreamKScheduler<TileShape, ClusterShape>;
};
}  // namespace cutlass::gemm::kernel::detail

namespace sq {
// Stream-K: the cooperative kernel, with the K loop of the last partial wave split across idle SMs
// and the int32 partial sums added in the workspace (exact in any order, so the faster
// non-deterministic reduction changes no integer); for grids of a little over one wave.
struct CooperativeStreamK {
  using Kernel = cutlass::gemm::KernelTmaWarpSpecializedCooperative;
  using Epilogue = cutlass::epilogue::TmaWarpSpecializedCooperative;
  using Scheduler = StreamKTag;
};
struct WarpSpecialized {  // one consumer warpgroup, one tile per CTA (not persistent)
  using Kernel = cutlass::gemm::KernelTmaWarpSpecialized;
  using Epilogue = cutlass::epilogue::TmaWarpSpecialized;
  using Scheduler = void;
};

template <class TileShape_, class ClusterShape_, class Schedule, bool Swap_, class ElementD_>
struct Config {
  static constexpr bool kSwap = Swap_;
  static constexpr bool kStreamK = cute::is_same_v<typename Schedule::Scheduler, StreamKTag>;
  using TileShape = TileShape_;
  using ClusterShape = ClusterShape_;
  using ElementD = ElementD_;
  using ElementBias = ElementD_;
  static constexpr auto Round = cutlass::FloatRoundStyle::round_to_nearest;
  using LayoutA = cutlass::layout::RowMajor;     // [M', K] K-major
  using LayoutB = cutlass::layout::ColumnMajor;  // [K, N'] K-major
  using LayoutD = cute::conditional_t<Swap_, cutlass::layout::ColumnMajor, cutlass::layout::RowMajor>;
  static constexpr int AlignAB = 16, AlignD = 16 / sizeof(ElementD);

  // per token along M (or N' when swapped), per channel along N (or M')
  using TokenScale = StridedVec<Swap_ ? 1 : 0>;
  using ChannelVec = cute::conditional_t<
      Swap_, fusion::Sm90ColBroadcast<0, TileShape, float, float, Stride<_1, _0, _0>>,
      fusion::Sm90RowBroadcast<0, TileShape, float, float, Stride<_0, _1, _0>>>;
  using BiasVec = cute::conditional_t<
      Swap_, fusion::Sm90ColBroadcast<0, TileShape, ElementBias, float, Stride<_1, _0, _0>>,
      fusion::Sm90RowBroadcast<0, TileShape, ElementBias, float, Stride<_0, _1, _0>>>;
  using Mul = fusion::Sm90Compute<cutlass::multiplies, float, float, Round>;
  using Add = fusion::Sm90Compute<cutlass::plus, ElementD, float, Round>;
  using Scaled = fusion::Sm90EVT<Mul, fusion::Sm90EVT<Mul, fusion::Sm90AccFetch, TokenScale>, ChannelVec>;
  using Fusion = fusion::Sm90EVT<Add, Scaled, BiasVec>;

  using CollectiveEpilogue = typename cutlass::epilogue::collective::CollectiveBuilder<
      cutlass::arch::Sm90, cutlass::arch::OpClassTensorOp, TileShape, ClusterShape,
      cutlass::epilogue::collective::EpilogueTileAuto, int32_t, float, void, LayoutD, AlignD, ElementD,
      LayoutD, AlignD, typename Schedule::Epilogue, Fusion>::CollectiveOp;

  using CollectiveMainloop = typename cutlass::gemm::collective::CollectiveBuilder<
      cutlass::arch::Sm90, cutlass::arch::OpClassTensorOp, int8_t, LayoutA, AlignAB, int8_t, LayoutB, AlignAB,
      int32_t, TileShape, ClusterShape,
      cutlass::gemm::collective::StageCountAutoCarveout<static_cast<int>(
          sizeof(typename CollectiveEpilogue::SharedStorage))>,
      typename Schedule::Kernel>::CollectiveOp;

  using GemmKernel = cutlass::gemm::kernel::GemmUniversal<Shape<int, int, int, int>, CollectiveMainloop,
                                                          CollectiveEpilogue, typename Schedule::Scheduler>;
  using Gemm = cutlass::gemm::device::GemmUniversalAdapter<GemmKernel>;
};

// The problem in CUTLASS's terms; shared by workspace queries and launches.
template <class C>
typename C::Gemm::Arguments arguments(const int8_t* a, int64_t lda, const int8_t* b, int64_t ldb, void* d,
                                      int64_t ldd, const float* a_scale, int64_t a_scale_stride,
                                      const float* w_scale, const void* bias, int M, int N, int K,
                                      int sm_count, int swizzle) {
  using GK = typename C::GemmKernel;
  constexpr bool S = C::kSwap;
  const int Mg = S ? N : M, Ng = S ? M : N;
  auto sA = cutlass::make_cute_packed_stride(typename GK::StrideA{}, make_shape(Mg, K, 1));
  auto sB = cutlass::make_cute_packed_stride(typename GK::StrideB{}, make_shape(Ng, K, 1));
  auto sD = cutlass::make_cute_packed_stride(typename GK::StrideD{}, make_shape(Mg, Ng, 1));
  get<0>(sA) = S ? ldb : lda;
  get<0>(sB) = S ? lda : ldb;
  if constexpr (S) get<1>(sD) = ldd; else get<0>(sD) = ldd;

  typename C::Gemm::Arguments args{};
  args.mode = cutlass::gemm::GemmUniversalMode::kGemm;
  args.problem_shape = {Mg, Ng, K, 1};
  args.mainloop.ptr_A = S ? b : a;
  args.mainloop.dA = sA;
  args.mainloop.ptr_B = S ? a : b;
  args.mainloop.dB = sB;
  args.epilogue.ptr_C = nullptr;
  args.epilogue.dC = sD;
  args.epilogue.ptr_D = static_cast<typename C::ElementD*>(d);
  args.epilogue.dD = sD;
  using EB = typename C::ElementBias;
  // {{{acc, token scale, mul}, channel scale, mul}, bias, add}
  args.epilogue.thread = {
      {{{}, {a_scale, a_scale_stride}, {}}, {w_scale}, {}},
      {static_cast<const EB*>(bias)},
      {}};
  args.hw_info.device_id = 0;
  cudaGetDevice(&args.hw_info.device_id);
  args.hw_info.sm_count = sm_count;
  // persistent schedulers walk tiles in groups of `swizzle` along the raster: neighbours in time
  // then share A and B tiles in L2 (1, 2, 4 or 8)
  args.scheduler.max_swizzle_size = swizzle;
  if constexpr (C::kStreamK) {
    args.scheduler.reduction_mode = decltype(args.scheduler.reduction_mode)::Nondeterministic;
  }
  return args;
}

// Status codes returned through the C ABI (0: launched).
enum : int { kOk = 0, kCannotImplement = 1, kWorkspaceTooSmall = 2, kInitFailed = 3, kLaunchFailed = 4,
             kCudaErrorBase = 1000 };

template <class C>
int run(const int8_t* a, int64_t lda, const int8_t* b, int64_t ldb, void* d, int64_t ldd, const float* a_scale,
        int64_t a_scale_stride, const float* w_scale, const void* bias, int M, int N, int K, void* workspace,
        size_t workspace_bytes, int sm_count, int swizzle, int pdl, cudaStream_t stream) {
  using Gemm = typename C::Gemm;
  using GK = typename C::GemmKernel;
  auto args = arguments<C>(a, lda, b, ldb, d, ldd, a_scale, a_scale_stride, w_scale, bias, M, N, K, sm_count,
                           swizzle);
  if (Gemm::can_implement(args) != cutlass::Status::kSuccess) return kCannotImplement;
  if (Gemm::get_workspace_size(args) > workspace_bytes) return kWorkspaceTooSmall;
  // > 48 KB of dynamic shared memory needs the attribute raised once per kernel (and device)
  static bool smem_set = false;
  if (!smem_set) {
    cudaError_t e = cudaFuncSetAttribute(cutlass::device_kernel<GK>, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                         GK::SharedStorageSize);
    if (e != cudaSuccess) return kCudaErrorBase + static_cast<int>(e);
    smem_set = true;
  }
  if (GK::initialize_workspace(args, workspace, stream, nullptr) != cutlass::Status::kSuccess) return kInitFailed;
  typename GK::Params params = GK::to_underlying_arguments(args, workspace);
  if (Gemm::run(params, stream, nullptr, pdl != 0) != cutlass::Status::kSuccess) return kLaunchFailed;
  cudaError_t e = cudaGetLastError();
  return e == cudaSuccess ? kOk : kCudaErrorBase + static_cast<int>(e);
}

template <class C>
size_t workspace_size(int M, int N, int K, int sm_count, int swizzle) {
  int8_t dummy = 0;
  float s = 1.f;
  auto args = arguments<C>(&dummy, K, &dummy, K, &dummy, N, &s, 1, &s, nullptr, M, N, K, sm_count, swizzle);
  return C::Gemm::get_workspace_size(args);
}

}  // namespace sq

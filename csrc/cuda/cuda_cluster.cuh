// Thread-block cluster primitives shared by the CUDA kernel files (no torch headers).  Clusters exist from
// sm_90; the hosts launch clusters of more than one CTA only there, so on older targets these trap.
#pragma once

#include <cooperative_groups.h>

namespace mkd_fast {
namespace cuda_cluster {

__device__ __forceinline__ void sync() {
#if defined(__CUDA_ARCH__) && (__CUDA_ARCH__ >= 900)
  cooperative_groups::this_cluster().sync();
#else
  __trap();
#endif
}

__device__ __forceinline__ int rank() {
#if defined(__CUDA_ARCH__) && (__CUDA_ARCH__ >= 900)
  return static_cast<int>(cooperative_groups::this_cluster().block_rank());
#else
  __trap();
  return 0;
#endif
}

// `p` (a shared-memory address of this CTA) as seen in CTA `rank` of the cluster.
__device__ __forceinline__ float* peer(float* p, int rank) {
#if defined(__CUDA_ARCH__) && (__CUDA_ARCH__ >= 900)
  return cooperative_groups::this_cluster().map_shared_rank(p, rank);
#else
  (void)rank;
  __trap();
  return p;
#endif
}

}  // namespace cuda_cluster
}  // namespace mkd_fast

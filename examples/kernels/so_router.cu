// A router as a shared library, the way production kernels are built: nvcc, a template per
// expert count, and a host launcher of its own. moescope loads it with `--kernel libso_router.so`
// and calls the two C entry points below on its own CUDA stream.
//
// Build (one line, from the repository root):
//   nvcc -O3 -std=c++17 -arch=sm_90 -shared -Xcompiler -fPIC -I include -I examples/kernels -o libso_router.so examples/kernels/so_router.cu
//
// The device part also compiles through NVRTC (moescope's example test does that without a GPU);
// the host launcher is skipped there (__CUDACC_RTC__).
#include "router_steps.cuh"

// One thread per token; the expert count is a template parameter, as production kernels
// specialise on it (here it only guards the shape).
template <int MAX_E>
__global__ void so_router_kernel(const MoescopeRouterArgs a) {
    const int64_t t = rs_token(a);
    if (t < 0 || a.n_experts > MAX_E) return;
    RsChoice c;
    rs_route(a, t, a.top_k, false, c);
    const int64_t row = t * a.out_stride;
    for (int i = 0; i < c.n; i++) {
        a.ids[row + i] = c.ids[i];
        a.weights[row + i] = (float)rs_prob(a, c, i);  // rsf on the output (declared below)
    }
    // The shared slots are left to moescope (MOESCOPE_APPENDS_SHARED not declared).
}

#if !defined(__CUDACC_RTC__)
#include <cuda_runtime.h>

static const MoescopeRouterInfo so_router_info = {MOESCOPE_ROUTER_ABI_VERSION, 0u, 0u, 0u};

extern "C" const MoescopeRouterInfo* moescope_router_get_info(void) { return &so_router_info; }

extern "C" int moescope_router_launch(const MoescopeRouterArgs* args, void* stream) {
    if (args == 0 || args->abi_version != MOESCOPE_ROUTER_ABI_VERSION ||
        args->struct_size != sizeof(MoescopeRouterArgs))
        return -1;
    if (args->n_experts > RS_MAX_E || args->out_stride > RS_MAX_K) return -2;
    const int threads = 128;
    const unsigned blocks = (unsigned)((args->tokens + threads - 1) / threads);
    if (blocks == 0) return 0;
    cudaStream_t s = (cudaStream_t)stream;
    if (args->n_experts <= 256)
        so_router_kernel<256><<<blocks, threads, 0, s>>>(*args);
    else
        so_router_kernel<512><<<blocks, threads, 0, s>>>(*args);
    return (int)cudaGetLastError();
}
#else
// NVRTC: instantiate the templates so the compile test sees them.
template __global__ void so_router_kernel<256>(const MoescopeRouterArgs a);
template __global__ void so_router_kernel<512>(const MoescopeRouterArgs a);
#endif

// The expert side of the layer: alignment (tokens grouped by slot, on device), the grouped bf16
// GEMM on tensor cores reading per-group offsets from device memory, SiLU*mul, combine, the
// shared gate and output statistics. Argument structs and launch geometry:
// src/engine/cuda/kernels/registry.rs.

// --- moe_align: counts (memset to zero first), then offsets, then the permutation -----------------

extern "C" __global__ void align_count(const AlignCountArgs a) {
    const u32* ids = a.ids;
    const u64 n = a.n;
    int* counts = a.counts;
    u64 i = (u64)blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) atomicAdd(&counts[ids[i]], 1);
}

// One block of 1024 threads: offsets [slots + 1], GEMM tile offsets [slots + 1], fill cursors
// [slots], by an exclusive scan over the counts (slots <= 1024).
extern "C" __global__ void align_scan(const AlignScanArgs a) {
    const int* counts = a.counts;
    const int slots = a.slots, bm = a.bm;
    int *offsets = a.offsets, *tiles = a.tiles, *cursor = a.cursor;
    __shared__ int s_rows[1024];
    __shared__ int s_tiles[1024];
    const int i = threadIdx.x;
    const int c = i < slots ? counts[i] : 0;
    s_rows[i] = c;
    s_tiles[i] = (c + bm - 1) / bm;
    __syncthreads();
    // Hillis-Steele inclusive scan.
    for (int off = 1; off < 1024; off <<= 1) {
        int r = i >= off ? s_rows[i - off] : 0;
        int t = i >= off ? s_tiles[i - off] : 0;
        __syncthreads();
        s_rows[i] += r;
        s_tiles[i] += t;
        __syncthreads();
    }
    if (i < slots) {
        int ex_rows = s_rows[i] - c;
        offsets[i] = ex_rows;
        cursor[i] = ex_rows;
        tiles[i] = s_tiles[i] - (c + bm - 1) / bm;
    }
    if (i == slots - 1) {
        offsets[slots] = s_rows[i];
        tiles[slots] = s_tiles[i];
    }
}

// order[permuted row] = assignment index (token * spt + slot); position is the inverse.
extern "C" __global__ void align_fill(const AlignFillArgs a) {
    const u32* ids = a.ids;
    const u64 n = a.n;
    int *cursor = a.cursor, *order = a.order, *position = a.position;
    u64 i = (u64)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n) return;
    int p = atomicAdd(&cursor[ids[i]], 1);
    order[p] = (int)i;
    position[i] = p;
}

// --- grouped GEMM (kernels/grouped_gemm.cuh, with the bf16 MMA) --------------------------------

// 16-row tiles: decode and small batches, where most rows of a 64-row tile would be empty.
extern "C" __global__ void __launch_bounds__(256, 2) grouped_gemm_bf16_m16(const GemmArgs a) {
    grouped_gemm_tiles<Bf16Mma, 1, 1, 2>(a);
}

// 32-row tiles: groups of a few dozen rows on cards without wgmma (warps 2 x 4, each 16 x 32).
extern "C" __global__ void __launch_bounds__(256, 2) grouped_gemm_bf16_m32(const GemmArgs a) {
    grouped_gemm_tiles<Bf16Mma, 2, 1, 4>(a);
}

// 64-row tiles: larger batches. On sm_90a two warpgroups of 64 x 64 on wgmma
// (grouped_gemm_wgmma); elsewhere warps 2 x 4, each 32 x 32 on mma.sync.
extern "C" __global__ void __launch_bounds__(256, 2) grouped_gemm_bf16_m64(const GemmArgs a) {
#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
    grouped_gemm_wgmma<Bf16Mma, 64>(a);
#else
    grouped_gemm_tiles<Bf16Mma, 2, 2, 4>(a);
#endif
}

// 128-row tiles: prefill-sized groups, one block per SM. On sm_90a two warpgroups on wgmma
// (grouped_gemm_wgmma); elsewhere warps 2 x 4, each 64 x 32 on mma.sync (each B fragment
// serves four A fragments; 147 KB of shared memory).
extern "C" __global__ void __launch_bounds__(256, 1) grouped_gemm_bf16_m128(const GemmArgs a) {
#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
    grouped_gemm_wgmma<Bf16Mma, 128>(a);
#else
    grouped_gemm_tiles<Bf16Mma, 2, 4, 4>(a);
#endif
}

// Sums the K-split partials in split order (deterministic) and adds the column bias.
extern "C" __global__ void splitk_reduce(const SplitkReduceArgs a) {
    const float *part = a.part, *bias = a.bias;
    const int splits = a.splits, N = a.cols;
    const u64 n = a.n;
    float* out = a.out;
    u64 stride = (u64)gridDim.x * blockDim.x;
    for (u64 i = (u64)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += stride) {
        float v = 0.f;
        for (int z = 0; z < splits; z++) v += part[(u64)z * n + i];
        if (bias != 0) v += bias[i % N];
        out[i] = v;
    }
}

// --- SiLU * mul: act[r, j] = bf16(silu(h[r, j]) * h[r, I + j]), as cpu::mlp_rows rounds it ------

extern "C" __global__ void silu_mul(const SiluMulArgs a) {
    const float* h = a.h;
    bf16_t* act = a.act;
    const u64 rows = a.rows;
    const int inter = a.inter;
    u64 n = rows * inter;
    u64 stride = (u64)gridDim.x * blockDim.x;
    for (u64 i = (u64)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += stride) {
        u64 r = i / inter, j = i % inter;
        float g = h[r * 2ull * inter + j];
        float u = h[r * 2ull * inter + inter + j];
        float s = __fdiv_rn(g, __fadd_rn(1.0f, expf(-g)));
        act[i] = f32_to_bf16(__fmul_rn(s, u));
    }
}

// --- combine: y[t] = out_scale * sum_s w[t, s] * eo[position[t, s]] + sep[t] * sum_j so[j * T + t] ----
// Grid (tokens, ceil(H / 256)), one thread per output element. so / sep nullable.
extern "C" __global__ void combine(const CombineArgs a) {
    const float *eo = a.eo, *w = a.w, *so = a.so, *sep = a.sep;
    const int* position = a.position;
    const int spt = a.spt, S = a.s, T = a.t, H = a.h;
    const float out_scale = a.out_scale;
    float* y = a.y;
    const int t = blockIdx.x;
    const int h = blockIdx.y * blockDim.x + threadIdx.x;
    if (h >= H) return;
    float acc = 0.f;
    for (int s = 0; s < spt; s++) {
        u64 asg = (u64)t * spt + s;
        acc += w[asg] * eo[(u64)position[asg] * H + h];
    }
    acc *= out_scale;
    if (so != 0) {
        float sh = 0.f;
        for (int j = 0; j < S; j++) sh += so[((u64)j * T + t) * H + h];
        acc += sep[t] * sh;
    }
    y[(u64)t * H + h] = acc;
}

// --- Qwen3-Next shared gate: g[t] = sigmoid(x[t] . wg), one warp per token ------------------------
extern "C" __global__ void shared_gate(const SharedGateArgs a) {
    const bf16_t* x = a.x;
    const float* wg = a.wg;
    float* g = a.g;
    const int T = a.t, H = a.h;
    int t = (int)(((u64)blockIdx.x * blockDim.x + threadIdx.x) >> 5);
    int lane = threadIdx.x & 31;
    if (t >= T) return;
    float acc = 0.f;
    for (int h = lane; h < H; h += 32) acc += bf16_to_f32(x[(u64)t * H + h]) * wg[h];
    acc = warp_sum_f(acc);
    if (lane == 0) g[t] = 1.0f / (1.0f + expf(-acc));
}

// --- output statistics: per block sum of squares (double), max |y|, non-finite count ---------------
extern "C" __global__ void output_stats(const OutputStatsArgs a) {
    const float* y = a.y;
    const u64 n = a.n;
    double* sumsq = a.sumsq;
    float* maxabs = a.maxabs;
    u64* nonfinite = a.nonfinite;
    __shared__ double s_sq[256];
    __shared__ float s_max[256];
    __shared__ u64 s_bad[256];
    double sq = 0.0;
    float mx = 0.f;
    u64 bad = 0;
    u64 stride = (u64)gridDim.x * blockDim.x;
    for (u64 i = (u64)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += stride) {
        float v = y[i];
        if (v != v || v - v != 0.f) {
            bad++;
        } else {
            sq += (double)v * (double)v;
            mx = fmaxf(mx, fabsf(v));
        }
    }
    s_sq[threadIdx.x] = sq;
    s_max[threadIdx.x] = mx;
    s_bad[threadIdx.x] = bad;
    __syncthreads();
    for (int off = blockDim.x / 2; off > 0; off >>= 1) {
        if (threadIdx.x < off) {
            s_sq[threadIdx.x] += s_sq[threadIdx.x + off];
            s_max[threadIdx.x] = fmaxf(s_max[threadIdx.x], s_max[threadIdx.x + off]);
            s_bad[threadIdx.x] += s_bad[threadIdx.x + off];
        }
        __syncthreads();
    }
    if (threadIdx.x == 0) {
        sumsq[blockIdx.x] = s_sq[0];
        maxabs[blockIdx.x] = s_max[0];
        nonfinite[blockIdx.x] = s_bad[0];
    }
}

// --- non-finite count: NaN and +-Inf (exponent all ones) among n f32 or bf16 values, added to
// counts[slot] with one atomic per warp (the counts are zeroed once per step) ------------------------
extern "C" __global__ void count_nonfinite(const CountNonfiniteArgs a) {
    u64 bad = 0;
    u64 stride = (u64)gridDim.x * blockDim.x;
    for (u64 i = (u64)blockIdx.x * blockDim.x + threadIdx.x; i < a.n; i += stride) {
        if (a.bf16)
            bad += (((const bf16_t*)a.data)[i] & 0x7f80u) == 0x7f80u;
        else
            bad += (((const u32*)a.data)[i] & 0x7f800000u) == 0x7f800000u;
    }
#pragma unroll
    for (int off = 16; off > 0; off >>= 1) bad += __shfl_xor_sync(0xffffffffu, bad, off);
    if ((threadIdx.x & 31) == 0 && bad != 0) atomicAdd(&a.counts[a.slot], bad);
}

// --- bandwidth probe: a plain device copy, for bench's copy-bandwidth ceiling ---------------------
extern "C" __global__ void copy_u4(const CopyArgs a) {
    const uint4* src = a.src;
    uint4* dst = a.dst;
    const u64 n = a.n;
    u64 stride = (u64)gridDim.x * blockDim.x;
    for (u64 i = (u64)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += stride) dst[i] = src[i];
}

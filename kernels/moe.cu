// The expert side of the layer: alignment (tokens grouped by slot, on device), the grouped bf16
// GEMM on tensor cores reading per-group offsets from device memory, SiLU*mul, combine, the
// shared gate and output statistics. Argument structs and launch geometry:
// src/engine/cuda/kernels/registry.rs.

#define GM_BM 64
#define GM_BN 128
#define GM_BK 32
#define GM_LD (GM_BK + 8) // padded row: conflict-free 32-bit fragment loads

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

// --- grouped GEMM ------------------------------------------------------------------------------
// For each group g, rows offsets[g]..offsets[g+1]: C[row, 0..N) = A[a_row(row)] . B_g^T (+ bias),
// A bf16 [* x K], B_g bf16 [N x K] (checkpoint layout), C f32 [rows x N], fp32 accumulation.
// a_mode 0: a_row = row; 1: a_map[row] / a_div (token of an assignment); 2: row - offsets[g].
// B_g = g < n_first ? B0 + g * b_stride : B1 + (g - n_first) * b_stride.
// Grid: x = an upper bound of the M tiles (blocks past tiles[groups] exit), y = N / 128 tiles,
// z = K splits: split z sums its K / k_splits slice into C + z * c_split (reduced by
// splitk_reduce, in a fixed order, so results are deterministic); the bias only without splits.
// 256 threads: 8 warps as 2 (M) x 4 (N), each 32 x 32 with mma.m16n8k16; tiles stream through a
// 3-stage cp.async pipeline (rows past the group or N are zero-filled).

#define GM_STAGES 3

__device__ __forceinline__ void mma_bf16(float* c, u32 a0, u32 a1, u32 a2, u32 a3, u32 b0, u32 b1) {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
        "{%0,%1,%2,%3};\n"
        : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
        : "r"(a0), "r"(a1), "r"(a2), "r"(a3), "r"(b0), "r"(b1));
}

__device__ __forceinline__ void cp_async16(void* smem, const void* gmem, bool valid) {
    u32 s = (u32)__cvta_generic_to_shared(smem);
    int n = valid ? 16 : 0;
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(s), "l"(gmem), "r"(n));
}
__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::); }
template <int N>
__device__ __forceinline__ void cp_async_wait() { asm volatile("cp.async.wait_group %0;\n" ::"n"(N)); }

extern "C" __global__ void __launch_bounds__(256, 2)
grouped_gemm_bf16(const GemmArgs a) {
    const bf16_t *A = a.a, *B0 = a.b0, *B1 = a.b1;
    const int a_mode = a.a_mode, a_div = a.a_div, n_first = a.n_first;
    const int* a_map = a.a_map;
    const i64 b_stride = a.b_stride, c_split = a.c_split;
    float* C = a.c;
    const float* col_bias = a.col_bias;
    const int *offsets = a.offsets, *tiles = a.tiles;
    const int groups = a.groups, N = a.n, K = a.k, k_splits = a.k_splits;
    __shared__ __align__(16) bf16_t As[GM_STAGES][GM_BM][GM_LD];
    __shared__ __align__(16) bf16_t Bs[GM_STAGES][GM_BN][GM_LD];
    const int tile = blockIdx.x;
    if (tile >= tiles[groups]) return;
    int lo = 0, hi = groups - 1;
    while (lo < hi) {
        int mid = (lo + hi + 1) >> 1;
        if (tiles[mid] <= tile) lo = mid; else hi = mid - 1;
    }
    const int g = lo;
    const int row0 = offsets[g] + (tile - tiles[g]) * GM_BM;
    const int row_end = offsets[g + 1];
    const int n0 = blockIdx.y * GM_BN;
    const bf16_t* B = g < n_first ? B0 + (i64)g * b_stride : B1 + (i64)(g - n_first) * b_stride;
    const int k_len = K / k_splits;
    const int k_begin = blockIdx.z * k_len;
    C += (i64)blockIdx.z * c_split;

    const int tid = threadIdx.x;
    // Each thread copies one 16-byte chunk of the A tile and two of the B tile per K step.
    const int ar = tid >> 2, ac = (tid & 3) * 8;
    bool a_ok = false;
    const bf16_t* a_src = A;
    {
        int r = row0 + ar;
        if (r < row_end) {
            i64 phys = a_mode == 0 ? r : a_mode == 1 ? a_map[r] / a_div : r - offsets[g];
            a_src = A + phys * K + k_begin + ac;
            a_ok = true;
        }
    }
    const bf16_t* b_src[2];
    bool b_ok[2];
#pragma unroll
    for (int j = 0; j < 2; j++) {
        int n = n0 + ar + 64 * j;
        b_ok[j] = n < N;
        b_src[j] = b_ok[j] ? B + (i64)n * K + k_begin + ac : B;
    }
    const int KT = k_len / GM_BK;
    auto issue = [&](int kt) {
        const int st = kt % GM_STAGES;
        const int k0 = kt * GM_BK;
        cp_async16(&As[st][ar][ac], a_ok ? a_src + k0 : A, a_ok);
#pragma unroll
        for (int j = 0; j < 2; j++) cp_async16(&Bs[st][ar + 64 * j][ac], b_ok[j] ? b_src[j] + k0 : B, b_ok[j]);
    };
#pragma unroll
    for (int s = 0; s < GM_STAGES - 1; s++) {
        if (s < KT) issue(s);
        cp_async_commit();
    }

    const int warp = tid >> 5, lane = tid & 31;
    const int wm = warp >> 2, wn = warp & 3;
    const int gid = lane >> 2, tig = lane & 3;
    float acc[2][4][4];
#pragma unroll
    for (int i = 0; i < 2; i++)
#pragma unroll
        for (int j = 0; j < 4; j++)
#pragma unroll
            for (int q = 0; q < 4; q++) acc[i][j][q] = 0.f;

    for (int kt = 0; kt < KT; kt++) {
        cp_async_wait<GM_STAGES - 2>();
        __syncthreads();
        // The stage refilled here was read in iteration kt - 1, which every warp has finished.
        if (kt + GM_STAGES - 1 < KT) issue(kt + GM_STAGES - 1);
        cp_async_commit();
        const int cur = kt % GM_STAGES;
#pragma unroll
        for (int kk = 0; kk < GM_BK; kk += 16) {
            u32 af[2][4], bfr[4][2];
#pragma unroll
            for (int mi = 0; mi < 2; mi++) {
                const int r = wm * 32 + mi * 16 + gid;
                af[mi][0] = *(const u32*)&As[cur][r][kk + tig * 2];
                af[mi][1] = *(const u32*)&As[cur][r + 8][kk + tig * 2];
                af[mi][2] = *(const u32*)&As[cur][r][kk + tig * 2 + 8];
                af[mi][3] = *(const u32*)&As[cur][r + 8][kk + tig * 2 + 8];
            }
#pragma unroll
            for (int ni = 0; ni < 4; ni++) {
                const int n = wn * 32 + ni * 8 + gid;
                bfr[ni][0] = *(const u32*)&Bs[cur][n][kk + tig * 2];
                bfr[ni][1] = *(const u32*)&Bs[cur][n][kk + tig * 2 + 8];
            }
#pragma unroll
            for (int mi = 0; mi < 2; mi++)
#pragma unroll
                for (int ni = 0; ni < 4; ni++)
                    mma_bf16(acc[mi][ni], af[mi][0], af[mi][1], af[mi][2], af[mi][3], bfr[ni][0], bfr[ni][1]);
        }
    }
    cp_async_wait<0>();

#pragma unroll
    for (int mi = 0; mi < 2; mi++) {
#pragma unroll
        for (int half = 0; half < 2; half++) {
            const int r = row0 + wm * 32 + mi * 16 + gid + half * 8;
            if (r >= row_end) continue;
#pragma unroll
            for (int ni = 0; ni < 4; ni++) {
#pragma unroll
                for (int q = 0; q < 2; q++) {
                    const int n = n0 + wn * 32 + ni * 8 + tig * 2 + q;
                    if (n < N) {
                        float v = acc[mi][ni][half * 2 + q];
                        if (col_bias != 0) v += col_bias[n];
                        C[(i64)r * N + n] = v;
                    }
                }
            }
        }
    }
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

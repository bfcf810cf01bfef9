// FP8 experts (DeepSeek-V3's format): activations quantized per row and group of 128 along K
// (bf16 input, or SiLU*mul of the up projection's f32 output), and a grouped GEMM on e4m3 tensor
// cores with fp32 accumulation, one weight scale per 128x128 block and one activation scale per
// row and 128-column group, applied per K block; per-group row offsets read from device memory.
// The quantizers compute the bits of src/engine/weights/fp8.rs: s = amax / 448 (1 for an
// all-zero group), q = e4m3_rn_satfinite(x / s).

#define F8_BK 128
#define F8_BN 128
#define F8_LD (F8_BK + 16) // padded row (144 bytes): conflict-free 32-bit fragment loads
#define F8_STAGES 4

// Two floats to two e4m3 bytes, round to nearest even, saturated to +-448: lo in the low byte.
__device__ __forceinline__ u32 e4m3x2(float lo, float hi) {
    unsigned short d;
    asm("cvt.rn.satfinite.e4m3x2.f32 %0, %1, %2;" : "=h"(d) : "f"(hi), "f"(lo));
    return (u32)d;
}

// One warp quantizes one group of 128 values (4 per lane) to out[0..128) and its scale.
__device__ __forceinline__ void quant_group(const float (&v)[4], unsigned char* out, float* scale) {
    const int lane = threadIdx.x & 31;
    float amax = fmaxf(fmaxf(fabsf(v[0]), fabsf(v[1])), fmaxf(fabsf(v[2]), fabsf(v[3])));
    amax = warp_max_f(amax);
    const float s = amax > 0.f ? __fdiv_rn(amax, 448.f) : 1.f;
    u32 q = e4m3x2(__fdiv_rn(v[0], s), __fdiv_rn(v[1], s)) |
            (e4m3x2(__fdiv_rn(v[2], s), __fdiv_rn(v[3], s)) << 16);
    *(u32*)(out + lane * 4) = q;
    if (lane == 0) *scale = s;
}

// bf16 [rows x cols] -> e4m3 [rows x cols] + scales [rows x cols/128]; one warp per group.
extern "C" __global__ void fp8_quant_rows(const Fp8QuantArgs a) {
    const u64 w = ((u64)blockIdx.x * blockDim.x + threadIdx.x) >> 5;
    const u64 groups = a.cols / F8_BK;
    if (w >= a.rows * groups) return;
    const u64 r = w / groups, g = w % groups;
    const int lane = threadIdx.x & 31;
    const u64 at = r * a.cols + g * F8_BK;
    const uint2 raw = *(const uint2*)(a.input + at + lane * 4);
    float v[4] = {bf16_to_f32((bf16_t)(raw.x & 0xffffu)), bf16_to_f32((bf16_t)(raw.x >> 16)),
                  bf16_to_f32((bf16_t)(raw.y & 0xffffu)), bf16_to_f32((bf16_t)(raw.y >> 16))};
    quant_group(v, a.out + at, a.scales + w);
}

// bf16 matrices [mats x rows x cols] -> e4m3 (the same layout) + scales [mats x rows/128 x
// cols/128]: the bits of weights::fp8 BlockScaled::quantize. One block of 256 threads per 128x128
// block; thread t takes row t / 2 of it, 64 columns from (t % 2) * 64.
extern "C" __global__ void fp8_quant_blocks(const Fp8BlocksArgs a) {
    __shared__ float wmax[8];
    const u64 bc = a.cols / F8_BK, br = a.rows / F8_BK;
    const u64 b = blockIdx.x;
    const u64 m = b / (br * bc), rb = (b / bc) % br, cb = b % bc;
    const int t = threadIdx.x;
    const u64 at = m * a.rows * a.cols + (rb * F8_BK + (t >> 1)) * a.cols + cb * F8_BK + (t & 1) * 64;
    float v[64];
    float amax = 0.f;
#pragma unroll
    for (int i = 0; i < 8; i++) {
        const uint4 raw = *(const uint4*)(a.input + at + i * 8);
        const u32 w[4] = {raw.x, raw.y, raw.z, raw.w};
#pragma unroll
        for (int j = 0; j < 4; j++) {
            v[i * 8 + 2 * j] = bf16_to_f32((bf16_t)(w[j] & 0xffffu));
            v[i * 8 + 2 * j + 1] = bf16_to_f32((bf16_t)(w[j] >> 16));
        }
#pragma unroll
        for (int j = 0; j < 8; j++) amax = fmaxf(amax, fabsf(v[i * 8 + j]));
    }
    amax = warp_max_f(amax);
    if ((t & 31) == 0) wmax[t >> 5] = amax;
    __syncthreads();
    amax = wmax[0];
#pragma unroll
    for (int i = 1; i < 8; i++) amax = fmaxf(amax, wmax[i]);
    const float s = amax > 0.f ? __fdiv_rn(amax, 448.f) : 1.f;
#pragma unroll
    for (int i = 0; i < 4; i++) {
        u32 q[4];
#pragma unroll
        for (int j = 0; j < 4; j++) {
            const float* x = v + i * 16 + j * 4;
            q[j] = e4m3x2(__fdiv_rn(x[0], s), __fdiv_rn(x[1], s)) |
                   (e4m3x2(__fdiv_rn(x[2], s), __fdiv_rn(x[3], s)) << 16);
        }
        *(uint4*)(a.out + at + i * 16) = make_uint4(q[0], q[1], q[2], q[3]);
    }
    if (t == 0) a.scales[b] = s;
}

// act = bf16(silu(h[r, j]) * h[r, I + j]) (as silu_mul rounds it), quantized like fp8_quant_rows:
// h f32 [rows x 2I] -> e4m3 [rows x I] + scales [rows x I/128].
extern "C" __global__ void fp8_silu_mul_quant(const Fp8SiluArgs a) {
    const u64 w = ((u64)blockIdx.x * blockDim.x + threadIdx.x) >> 5;
    const u64 groups = a.inter / F8_BK;
    if (w >= a.rows * groups) return;
    const u64 r = w / groups, g = w % groups;
    const int lane = threadIdx.x & 31;
    const u64 j = g * F8_BK + lane * 4;
    const float4 gv = *(const float4*)(a.h + r * 2 * a.inter + j);
    const float4 uv = *(const float4*)(a.h + r * 2 * a.inter + a.inter + j);
    const float gs[4] = {gv.x, gv.y, gv.z, gv.w}, us[4] = {uv.x, uv.y, uv.z, uv.w};
    float v[4];
#pragma unroll
    for (int i = 0; i < 4; i++) {
        float s = __fdiv_rn(gs[i], __fadd_rn(1.0f, expf(-gs[i])));
        v[i] = bf16_to_f32(f32_to_bf16(__fmul_rn(s, us[i])));
    }
    quant_group(v, a.out + r * a.inter + g * F8_BK, a.scales + w);
}

// GEMM tile offsets for tiles of `bm` rows from the group row offsets [groups + 1] (one block of
// 1024 threads, groups <= 1024): tiles[g] = sum over earlier groups of ceil(rows / bm).
extern "C" __global__ void fp8_tile_scan(const Fp8TilesArgs a) {
    __shared__ int s[1024];
    const int i = threadIdx.x;
    const int c = i < a.groups ? (a.offsets[i + 1] - a.offsets[i] + a.bm - 1) / a.bm : 0;
    s[i] = c;
    __syncthreads();
    for (int off = 1; off < 1024; off <<= 1) {
        int t = i >= off ? s[i - off] : 0;
        __syncthreads();
        s[i] += t;
        __syncthreads();
    }
    if (i < a.groups) a.tiles[i] = s[i] - c;
    if (i == a.groups - 1) a.tiles[a.groups] = s[i];
}

// --- grouped GEMM ------------------------------------------------------------------------------
// For each group g, rows offsets[g]..offsets[g+1]:
//   C[row, n] = sum over K blocks kb of sa[a_row, kb] * sb_g[n / 128, kb] * (qa[a_row, kb] . qb_g[n, kb])
// qa e4m3 [* x K] with scales sa [* x K/128]; qb_g e4m3 [N x K] (checkpoint layout) with block
// scales sb_g [N/128 x K/128]; C f32 [rows x N]. a_mode 0: a_row = row; 1: a_map[row] / a_div (the
// token of an assignment); 2: row - offsets[g]. Group g < n_first reads b0/bs0 + g * stride, else
// b1/bs1 + (g - n_first) * stride. Grid: x = an upper bound of the M tiles (tiles from
// fp8_tile_scan with this kernel's BM; blocks past tiles[groups] exit), y = N / 128, z = K splits
// (split z sums its K blocks into C + z * c_split; splitk_reduce adds them in a fixed order).
// 256 threads = 8 warps as WARPS_M x (8 / WARPS_M); each warp MI m16 by NI n8 tiles of
// mma.m16n8k32.e4m3; a 4-stage cp.async pipeline of one 128-deep K block per stage (A rows, B rows,
// the A row scales and the B block scale). N and K are multiples of 128.

__device__ __forceinline__ void mma_e4m3(float* c, const u32* a, u32 b0, u32 b1) {
    asm volatile(
        "mma.sync.aligned.m16n8k32.row.col.f32.e4m3.e4m3.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
        "{%0,%1,%2,%3};\n"
        : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

__device__ __forceinline__ void f8_cp16(void* smem, const void* gmem, bool valid) {
    u32 s = (u32)__cvta_generic_to_shared(smem);
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(s), "l"(gmem), "r"(valid ? 16 : 0));
}
__device__ __forceinline__ void f8_cp4(void* smem, const void* gmem, bool valid) {
    u32 s = (u32)__cvta_generic_to_shared(smem);
    asm volatile("cp.async.ca.shared.global [%0], [%1], 4, %2;\n" ::"r"(s), "l"(gmem), "r"(valid ? 4 : 0));
}
__device__ __forceinline__ void f8_commit() { asm volatile("cp.async.commit_group;\n" ::); }
template <int N>
__device__ __forceinline__ void f8_wait() { asm volatile("cp.async.wait_group %0;\n" ::"n"(N)); }

// Dynamic shared memory of one instantiation: F8_STAGES x (A tile, B tile, A scales, B scale)
// (registry.rs fp8_shared_bytes).
template <int BM>
struct F8Stage {
    unsigned char a[BM][F8_LD];
    unsigned char b[F8_BN][F8_LD];
    float sa[BM];
    float sb[4];
};

template <int WARPS_M, int MI, int NI, typename Args>
__device__ __forceinline__ void fp8_gemm(const Args& p) {
    constexpr int BM = WARPS_M * MI * 16;
    constexpr int WARPS_N = 8 / WARPS_M;
    static_assert(WARPS_N * NI * 8 == F8_BN, "a block covers 128 columns");
    constexpr int A_CHUNKS = (BM * 8 + 255) / 256; // 16-byte chunks of the A tile per thread
    extern __shared__ __align__(128) unsigned char f8_smem[];
    F8Stage<BM>* st = (F8Stage<BM>*)f8_smem;

    if (p.bm != BM) __trap(); // the launch's geometry was computed for another tile height
    const int tile = blockIdx.x;
    if (tile >= p.tiles[p.groups]) return;
    int lo = 0, hi = p.groups - 1;
    while (lo < hi) {
        int mid = (lo + hi + 1) >> 1;
        if (p.tiles[mid] <= tile) lo = mid; else hi = mid - 1;
    }
    const int g = lo;
    const int row0 = p.offsets[g] + (tile - p.tiles[g]) * BM;
    const int row_end = p.offsets[g + 1];
    const int n0 = blockIdx.y * F8_BN;
    const int KB = p.k / F8_BK;
    const bool first = g < p.n_first;
    const int gi = first ? g : g - p.n_first;
    const unsigned char* B = (first ? p.b0 : p.b1) + (i64)gi * p.b_stride;
    const float* SB = (first ? p.bs0 : p.bs1) + (i64)gi * p.bs_stride + (i64)(n0 / F8_BN) * KB;
    const int kb_len = KB / p.k_splits;
    const int kb0 = blockIdx.z * kb_len;
    float* C = p.c + (i64)blockIdx.z * p.c_split;

    const int tid = threadIdx.x;
    // The physical A row of each tile row this thread copies (-1: past the group, zero-filled).
    auto a_row = [&](int r) -> i64 {
        int row = row0 + r;
        if (row >= row_end) return -1;
        return p.a_mode == 0 ? row : p.a_mode == 1 ? p.a_map[row] / p.a_div : row - p.offsets[g];
    };
    i64 a_phys[A_CHUNKS];
#pragma unroll
    for (int j = 0; j < A_CHUNKS; j++) {
        int c = tid + 256 * j;
        a_phys[j] = c < BM * 8 ? a_row(c >> 3) : -1;
    }
    const i64 sa_phys = tid < BM ? a_row(tid) : -1;

    auto issue = [&](int kt) {
        F8Stage<BM>& s = st[kt % F8_STAGES];
        const int kb = kb0 + kt;
        const i64 k0 = (i64)kb * F8_BK;
#pragma unroll
        for (int j = 0; j < A_CHUNKS; j++) {
            int c = tid + 256 * j;
            if (c < BM * 8) {
                bool ok = a_phys[j] >= 0;
                f8_cp16(&s.a[c >> 3][(c & 7) * 16], ok ? p.a + a_phys[j] * p.k + k0 + (c & 7) * 16 : p.a, ok);
            }
        }
#pragma unroll
        for (int j = 0; j < 4; j++) {
            int c = tid + 256 * j;
            int n = c >> 3;
            bool ok = n0 + n < p.n;
            f8_cp16(&s.b[n][(c & 7) * 16], ok ? B + (i64)(n0 + n) * p.k + k0 + (c & 7) * 16 : B, ok);
        }
        if (tid < BM) {
            bool ok = sa_phys >= 0;
            f8_cp4(&s.sa[tid], ok ? p.a_scales + sa_phys * KB + kb : p.a_scales, ok);
        }
        if (tid == 255) f8_cp4(&s.sb[0], SB + kb, true);
    };
#pragma unroll
    for (int s = 0; s < F8_STAGES - 1; s++) {
        if (s < kb_len) issue(s);
        f8_commit();
    }

    const int warp = tid >> 5, lane = tid & 31;
    const int wm = warp / WARPS_N, wn = warp % WARPS_N;
    const int gid = lane >> 2, tig = lane & 3;
    float acc[MI][NI][4];
#pragma unroll
    for (int i = 0; i < MI; i++)
#pragma unroll
        for (int j = 0; j < NI; j++)
#pragma unroll
            for (int q = 0; q < 4; q++) acc[i][j][q] = 0.f;

    for (int kt = 0; kt < kb_len; kt++) {
        f8_wait<F8_STAGES - 2>();
        __syncthreads();
        // The stage refilled here was read in iteration kt - 1, which every warp has finished.
        if (kt + F8_STAGES - 1 < kb_len) issue(kt + F8_STAGES - 1);
        f8_commit();
        const F8Stage<BM>& s = st[kt % F8_STAGES];
        float part[MI][NI][4];
#pragma unroll
        for (int i = 0; i < MI; i++)
#pragma unroll
            for (int j = 0; j < NI; j++)
#pragma unroll
                for (int q = 0; q < 4; q++) part[i][j][q] = 0.f;
#pragma unroll
        for (int kk = 0; kk < F8_BK; kk += 32) {
            u32 af[MI][4];
#pragma unroll
            for (int mi = 0; mi < MI; mi++) {
                const int r = wm * MI * 16 + mi * 16 + gid;
                af[mi][0] = *(const u32*)&s.a[r][kk + tig * 4];
                af[mi][1] = *(const u32*)&s.a[r + 8][kk + tig * 4];
                af[mi][2] = *(const u32*)&s.a[r][kk + 16 + tig * 4];
                af[mi][3] = *(const u32*)&s.a[r + 8][kk + 16 + tig * 4];
            }
#pragma unroll
            for (int ni = 0; ni < NI; ni++) {
                const int n = wn * NI * 8 + ni * 8 + gid;
                const u32 b0 = *(const u32*)&s.b[n][kk + tig * 4];
                const u32 b1 = *(const u32*)&s.b[n][kk + 16 + tig * 4];
#pragma unroll
                for (int mi = 0; mi < MI; mi++) mma_e4m3(part[mi][ni], af[mi], b0, b1);
            }
        }
        // This K block's scales: per row of A times the one block scale of B.
        const float sb = s.sb[0];
#pragma unroll
        for (int mi = 0; mi < MI; mi++) {
            const int r = wm * MI * 16 + mi * 16 + gid;
            const float f0 = s.sa[r] * sb, f1 = s.sa[r + 8] * sb;
#pragma unroll
            for (int ni = 0; ni < NI; ni++) {
                acc[mi][ni][0] += part[mi][ni][0] * f0;
                acc[mi][ni][1] += part[mi][ni][1] * f0;
                acc[mi][ni][2] += part[mi][ni][2] * f1;
                acc[mi][ni][3] += part[mi][ni][3] * f1;
            }
        }
    }
    f8_wait<0>();

#pragma unroll
    for (int mi = 0; mi < MI; mi++) {
#pragma unroll
        for (int half = 0; half < 2; half++) {
            const int r = row0 + wm * MI * 16 + mi * 16 + gid + half * 8;
            if (r >= row_end) continue;
#pragma unroll
            for (int ni = 0; ni < NI; ni++) {
                const int n = n0 + wn * NI * 8 + ni * 8 + tig * 2;
                if (n < p.n)
                    *(float2*)&C[(i64)r * p.n + n] = make_float2(acc[mi][ni][half * 2], acc[mi][ni][half * 2 + 1]);
            }
        }
    }
}

// 16-row tiles: decode and small batches (each warp 16 x 16 of the 16 x 128 tile).
extern "C" __global__ void __launch_bounds__(256, 2) grouped_gemm_fp8_m16(const Fp8GemmArgs a) {
    fp8_gemm<1, 1, 2>(a);
}

// 64-row tiles: larger batches (warps 2 x 4, each 32 x 32).
extern "C" __global__ void __launch_bounds__(256, 2) grouped_gemm_fp8_m64(const Fp8GemmArgs a) {
    fp8_gemm<2, 2, 4>(a);
}

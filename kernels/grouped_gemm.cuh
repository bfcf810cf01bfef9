// The grouped GEMM's tile loop, one template for the bf16 experts (moe.cu) and the FP8 experts
// (fp8.cu): the two differ only in the tensor-core instruction and in FP8's block scales, since a
// pipeline stage holds the same 128 bytes of every row (64 bf16 or 128 e4m3 values of K), and the
// m16n8k16 bf16 and m16n8k32 e4m3 fragments sit at the same byte offsets.
//
// For each group g, rows offsets[g]..offsets[g+1] of C f32 [rows x N]:
//   bf16: C[row, n] = A[a_row] . B_g[n] (+ col_bias[n])
//   e4m3: C[row, n] = sum over K blocks kb of sa[a_row, kb] * sb_g[n / 128, kb] * (A[a_row, kb] . B_g[n, kb])
// A [* x K] (FP8: scales sa [* x K/128]); B_g [N x K] (checkpoint layout; FP8: block scales sb_g
// [N/128 x K/128]). a_mode 0: a_row = row; 1: a_map[row] / a_div (the token of an assignment);
// 2: row - offsets[g]. Group g < n_first reads b0 (bs0) + g * stride, else b1 (bs1) + (g - n_first)
// * stride. Grid: x = an upper bound of the M tiles (tile offsets of this kernel's BM; blocks past
// tiles[groups] exit), y = ceil(N / 128), z = K splits (split z sums its K stages into C + z *
// c_split; splitk_reduce adds them in a fixed order, so results are deterministic; the bias only
// without splits). 256 threads = 8 warps as WARPS_M x (8 / WARPS_M), each warp MI m16 by NI n8
// MMA tiles; a 4-stage cp.async pipeline (rows past the group or N are zero-filled). K * element
// size is a multiple of 128 bytes and N is even (checked by the launcher).

#define GG_ROW 128            // bytes of each row's K slice in one stage
#define GG_LD (GG_ROW + 16)   // padded row (144 bytes): conflict-free ldmatrix rows
#define GG_BN 128
#define GG_STAGES 4

// bf16 operands: m16n8k16 over 32 bytes of each row. Fragments by ldmatrix (run G22: dense
// 211 -> 247 TFLOP/s on an H200).
struct Bf16Mma {
    static constexpr bool SCALED = false;
    static constexpr bool LDMATRIX = true;
    static constexpr int ELEM = 2;
    __device__ static __forceinline__ void mma(float* c, const u32* a, u32 b0, u32 b1) {
        asm volatile(
            "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, "
            "{%8,%9}, {%0,%1,%2,%3};\n"
            : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
            : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
    }
};

// e4m3 operands with block scales: m16n8k32 over 32 bytes of each row. Fragments by 32-bit
// loads: ldmatrix measured slower here (run G22: dense 220 -> 208 TFLOP/s, T = 2048 8% slower).
struct E4m3Mma {
    static constexpr bool SCALED = true;
    static constexpr bool LDMATRIX = false;
    static constexpr int ELEM = 1;
    __device__ static __forceinline__ void mma(float* c, const u32* a, u32 b0, u32 b1) {
        asm volatile(
            "mma.sync.aligned.m16n8k32.row.col.f32.e4m3.e4m3.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, "
            "{%8,%9}, {%0,%1,%2,%3};\n"
            : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
            : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
    }
};

__device__ __forceinline__ void gg_cp16(void* smem, const void* gmem, bool valid) {
    u32 s = (u32)__cvta_generic_to_shared(smem);
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(s), "l"(gmem), "r"(valid ? 16 : 0));
}
__device__ __forceinline__ void gg_cp4(void* smem, const void* gmem, bool valid) {
    u32 s = (u32)__cvta_generic_to_shared(smem);
    asm volatile("cp.async.ca.shared.global [%0], [%1], 4, %2;\n" ::"r"(s), "l"(gmem), "r"(valid ? 4 : 0));
}
__device__ __forceinline__ void gg_commit() { asm volatile("cp.async.commit_group;\n" ::); }
template <int N>
__device__ __forceinline__ void gg_wait() { asm volatile("cp.async.wait_group %0;\n" ::"n"(N)); }

// Dynamic shared memory of one instantiation: GG_STAGES x (A tile, B tile, A scales, B scale)
// (registry.rs gemm_shared_bytes; the scales are unused in bf16).
template <int BM>
struct GgStage {
    unsigned char a[BM][GG_LD];
    unsigned char b[GG_BN][GG_LD];
    float sa[BM];
    float sb[4];
};

// Four 8 x 8 matrices of 16-bit pairs from shared memory, one row address per lane (lanes 8j..8j+7
// give matrix j's rows); thread l receives row l / 4, bytes 4 (l % 4).. of each matrix.
__device__ __forceinline__ void gg_ldmatrix_x4(u32 (&r)[4], const void* row) {
    u32 s = (u32)__cvta_generic_to_shared(row);
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(s));
}

// One stage's MMAs of a warp: its MI x NI tiles from rows r0 of A and n0 of B, into sum. With
// F::LDMATRIX the fragments come by ldmatrix (one instruction per 16 x 32-byte A fragment and per
// two 8 x 32-byte B fragments, where 32-bit loads take four); the 144-byte padded rows keep
// both conflict-free.
template <typename F, int MI, int NI, typename Stage>
__device__ __forceinline__ void gg_stage_mma(const Stage& s, float (&sum)[MI][NI][4], int r0, int n0, int lane) {
    static_assert(NI % 2 == 0, "B fragments load in pairs of n8 tiles");
    const int j = lane >> 3, r8 = lane & 7;
    const int gid = lane >> 2, tig = lane & 3;
#pragma unroll
    for (int kk = 0; kk < GG_ROW; kk += 32) {
        if constexpr (!F::LDMATRIX) {
            u32 af[MI][4];
#pragma unroll
            for (int mi = 0; mi < MI; mi++) {
                const int r = r0 + mi * 16 + gid;
                af[mi][0] = *(const u32*)&s.a[r][kk + tig * 4];
                af[mi][1] = *(const u32*)&s.a[r + 8][kk + tig * 4];
                af[mi][2] = *(const u32*)&s.a[r][kk + 16 + tig * 4];
                af[mi][3] = *(const u32*)&s.a[r + 8][kk + 16 + tig * 4];
            }
#pragma unroll
            for (int ni = 0; ni < NI; ni++) {
                const int n = n0 + ni * 8 + gid;
                const u32 b0 = *(const u32*)&s.b[n][kk + tig * 4];
                const u32 b1 = *(const u32*)&s.b[n][kk + 16 + tig * 4];
#pragma unroll
                for (int mi = 0; mi < MI; mi++) F::mma(sum[mi][ni], af[mi], b0, b1);
            }
            continue;
        }
        // A: matrices (rows 0-7 | 8-15) x (bytes 0-15 | 16-31) give a0, a1, a2, a3.
        u32 af[MI][4];
#pragma unroll
        for (int mi = 0; mi < MI; mi++)
            gg_ldmatrix_x4(af[mi], &s.a[r0 + mi * 16 + r8 + (j & 1) * 8][kk + (j >> 1) * 16]);
#pragma unroll
        for (int ni = 0; ni < NI; ni += 2) {
            // B: matrices (n tile ni | ni + 1) x (bytes 0-15 | 16-31) give b0, b1 of each.
            u32 bf[4];
            gg_ldmatrix_x4(bf, &s.b[n0 + (ni + (j >> 1)) * 8 + r8][kk + (j & 1) * 16]);
#pragma unroll
            for (int mi = 0; mi < MI; mi++) {
                F::mma(sum[mi][ni], af[mi], bf[0], bf[1]);
                F::mma(sum[mi][ni + 1], af[mi], bf[2], bf[3]);
            }
        }
    }
}

// What one block of BM-row tiles works on (both tile loops): its group g, the group's rows
// row0 .. row_end of this tile, its columns from n0, its K stages kb0 .. kb0 + kb_len of KB, and
// its operands (A, this group's weights B, this split's output C).
struct GgBlock {
    int g, row0, row_end, n0, KB, kb_len, kb0, gi;
    bool first;  // the group reads b0 (and bs0), else b1
    i64 row_bytes;
    const unsigned char *A, *B;
    float* C;
};

// The block of blockIdx for BM-row tiles of ELEM-byte values; false for blocks past the last tile.
template <int BM, int ELEM, typename Args>
__device__ __forceinline__ bool gg_block(const Args& p, GgBlock& b) {
    if (p.bm != BM) __trap(); // the launch's geometry was computed for another tile height
    const int tile = blockIdx.x;
    if (tile >= p.tiles[p.groups]) return false;
    int lo = 0, hi = p.groups - 1;
    while (lo < hi) {
        int mid = (lo + hi + 1) >> 1;
        if (p.tiles[mid] <= tile) lo = mid; else hi = mid - 1;
    }
    b.g = lo;
    b.row0 = p.offsets[b.g] + (tile - p.tiles[b.g]) * BM;
    b.row_end = p.offsets[b.g + 1];
    b.n0 = blockIdx.y * GG_BN;
    b.row_bytes = (i64)p.k * ELEM;
    b.KB = (int)(b.row_bytes / GG_ROW); // pipeline stages over all of K
    b.first = b.g < p.n_first;
    b.gi = b.first ? b.g : b.g - p.n_first;
    b.A = (const unsigned char*)p.a;
    b.B = (const unsigned char*)(b.first ? p.b0 : p.b1) + (i64)b.gi * p.b_stride * ELEM;
    b.kb_len = b.KB / p.k_splits;
    b.kb0 = blockIdx.z * b.kb_len;
    b.C = p.c + (i64)blockIdx.z * p.c_split;
    return true;
}

// The physical A row of tile row r (-1: past the group, zero-filled).
template <typename Args>
__device__ __forceinline__ i64 gg_a_row(const Args& p, const GgBlock& b, int r) {
    const int row = b.row0 + r;
    if (row >= b.row_end) return -1;
    return p.a_mode == 0 ? row : p.a_mode == 1 ? p.a_map[row] / p.a_div : row - p.offsets[b.g];
}

// FP8: the block's column tile's weight scales, one per 128-deep K block (= one stage).
template <typename Args>
__device__ __forceinline__ const float* gg_b_scales(const Args& p, const GgBlock& b) {
    return (b.first ? p.bs0 : p.bs1) + (i64)b.gi * p.bs_stride + (i64)(b.n0 / GG_BN) * b.KB;
}

template <typename F, int WARPS_M, int MI, int NI, typename Args>
__device__ __forceinline__ void grouped_gemm_tiles(const Args& p) {
    constexpr int BM = WARPS_M * MI * 16;
    constexpr int WARPS_N = 8 / WARPS_M;
    static_assert(WARPS_N * NI * 8 == GG_BN, "a block covers 128 columns");
    constexpr int A_CHUNKS = (BM * 8 + 255) / 256; // 16-byte chunks of the A tile per thread
    extern __shared__ __align__(128) unsigned char gg_smem[];
    GgStage<BM>* st = (GgStage<BM>*)gg_smem;

    GgBlock blk;
    if (!gg_block<BM, F::ELEM>(p, blk)) return;
    const int row0 = blk.row0, row_end = blk.row_end, n0 = blk.n0, KB = blk.KB;
    const int kb_len = blk.kb_len, kb0 = blk.kb0;
    const i64 row_bytes = blk.row_bytes;
    const unsigned char *A = blk.A, *B = blk.B;
    float* C = blk.C;
    const float* SB = 0;
    if constexpr (F::SCALED) SB = gg_b_scales(p, blk);

    const int tid = threadIdx.x;
    // The physical A row of each tile row this thread copies.
    i64 a_phys[A_CHUNKS];
#pragma unroll
    for (int j = 0; j < A_CHUNKS; j++) {
        int c = tid + 256 * j;
        a_phys[j] = c < BM * 8 ? gg_a_row(p, blk, c >> 3) : -1;
    }
    const i64 sa_phys = F::SCALED && tid < BM ? gg_a_row(p, blk, tid) : -1;

    auto issue = [&](int kt) {
        GgStage<BM>& s = st[kt % GG_STAGES];
        const int kb = kb0 + kt;
        const i64 k0 = (i64)kb * GG_ROW;
#pragma unroll
        for (int j = 0; j < A_CHUNKS; j++) {
            int c = tid + 256 * j;
            if (c < BM * 8) {
                bool ok = a_phys[j] >= 0;
                gg_cp16(&s.a[c >> 3][(c & 7) * 16], ok ? A + a_phys[j] * row_bytes + k0 + (c & 7) * 16 : A, ok);
            }
        }
#pragma unroll
        for (int j = 0; j < 4; j++) {
            int c = tid + 256 * j;
            int n = c >> 3;
            bool ok = n0 + n < p.n;
            gg_cp16(&s.b[n][(c & 7) * 16], ok ? B + (i64)(n0 + n) * row_bytes + k0 + (c & 7) * 16 : B, ok);
        }
        if constexpr (F::SCALED) {
            if (tid < BM) {
                bool ok = sa_phys >= 0;
                gg_cp4(&s.sa[tid], ok ? p.a_scales + sa_phys * KB + kb : p.a_scales, ok);
            }
            if (tid == 255) gg_cp4(&s.sb[0], SB + kb, true);
        }
    };
#pragma unroll
    for (int s = 0; s < GG_STAGES - 1; s++) {
        if (s < kb_len) issue(s);
        gg_commit();
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
        gg_wait<GG_STAGES - 2>();
        __syncthreads();
        // The stage refilled here was read in iteration kt - 1, which every warp has finished.
        if (kt + GG_STAGES - 1 < kb_len) issue(kt + GG_STAGES - 1);
        gg_commit();
        const GgStage<BM>& s = st[kt % GG_STAGES];
        // FP8 sums each K block apart and scales it; bf16 accumulates straight into acc.
        if constexpr (F::SCALED) {
            float part[MI][NI][4];
#pragma unroll
            for (int i = 0; i < MI; i++)
#pragma unroll
                for (int j = 0; j < NI; j++)
#pragma unroll
                    for (int q = 0; q < 4; q++) part[i][j][q] = 0.f;
            gg_stage_mma<F, MI, NI>(s, part, wm * MI * 16, wn * NI * 8, lane);
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
        } else {
            gg_stage_mma<F, MI, NI>(s, acc, wm * MI * 16, wn * NI * 8, lane);
        }
    }
    gg_wait<0>();

    const float* bias = 0;
    if constexpr (!F::SCALED) bias = p.col_bias;
#pragma unroll
    for (int mi = 0; mi < MI; mi++) {
#pragma unroll
        for (int half = 0; half < 2; half++) {
            const int r = row0 + wm * MI * 16 + mi * 16 + gid + half * 8;
            if (r >= row_end) continue;
#pragma unroll
            for (int ni = 0; ni < NI; ni++) {
                const int n = n0 + wn * NI * 8 + ni * 8 + tig * 2;
                if (n < p.n) {
                    float v0 = acc[mi][ni][half * 2], v1 = acc[mi][ni][half * 2 + 1];
                    if (bias != 0) {
                        v0 += bias[n];
                        v1 += bias[n + 1];
                    }
                    *(float2*)&C[(i64)r * p.n + n] = make_float2(v0, v1);
                }
            }
        }
    }
}

// ---- Hopper (sm_90a): the 64- and 128-row tiles on wgmma ---------------------------------------
// The same blocks, groups, K splits, 4-stage cp.async pipeline and epilogue contract as
// grouped_gemm_tiles, but the shared tiles are unpadded 128-byte rows in the 128-byte swizzle
// (16-byte chunk c of row r at chunk c ^ (r & 7)), which wgmma reads straight from shared memory,
// with no fragment loads at all. Two warpgroups: with 128-row tiles each multiplies its 64 rows
// by all 128 columns (m64n128), with 64-row tiles each takes all 64 rows and its 64 of the
// columns (m64n64); four instructions a stage (k16 bf16 or k32 e4m3: 32 bytes of each row
// either way). FP8 sums each stage (one 128-deep K block) into a fresh accumulator and adds it,
// scaled, into fp32 registers, as DeepGEMM promotes: Hopper's FP8 tensor cores keep fewer bits
// than fp32 while they accumulate (rel-L2 about 1e-4 against the dequantized f64 math, runs G28
// and G32, where mma.sync gives 6e-8), so only GEMMs whose output is not quantized again take
// these FP8 kernels (registry.rs Fp8Sum). Compiled only where NVRTC targets sm_90a
// (__CUDA_ARCH_FEAT_SM90_ALL); elsewhere these kernels are the mma.sync loop.
#if defined(__CUDA_ARCH_FEAT_SM90_ALL)

// A shared-memory matrix descriptor: K-major, 128-byte swizzle, 8-row atoms 1024 bytes apart.
__device__ __forceinline__ u64 wg_desc(const unsigned char* smem) {
    const u32 a = (u32)__cvta_generic_to_shared(smem);
    return (u64)((a & 0x3FFFFu) >> 4) | ((u64)1 << 16) | ((u64)(1024 >> 4) << 32) | ((u64)1 << 62);
}

// The accumulator operands of one warpgroup: N = 2 x the registers.
#define WG_D4(d, i) "+f"(d[i]), "+f"(d[i + 1]), "+f"(d[i + 2]), "+f"(d[i + 3])
#define WG_D16(d, i) WG_D4(d, i), WG_D4(d, i + 4), WG_D4(d, i + 8), WG_D4(d, i + 12)
#define WG_D32(d) WG_D16(d, 0), WG_D16(d, 16)
#define WG_D64(d) WG_D32(d), WG_D16(d, 32), WG_D16(d, 48)
#define WG_R32 "{%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, %16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31}"
#define WG_R64 "{%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, %16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31, %32, %33, %34, %35, %36, %37, %38, %39, %40, %41, %42, %43, %44, %45, %46, %47, %48, %49, %50, %51, %52, %53, %54, %55, %56, %57, %58, %59, %60, %61, %62, %63}"

// d = A (64 x K, descriptor da) . B (N x K, db)^T + (accumulate ? d : 0) over one warpgroup, K
// 32 bytes of each row; the operand type picks the instruction.
__device__ __forceinline__ void wg_mma(Bf16Mma, float (&d)[64], u64 da, u64 db, int accumulate) {
    asm volatile("{\n.reg .pred p;\nsetp.ne.b32 p, %66, 0;\n"
                 "wgmma.mma_async.sync.aligned.m64n128k16.f32.bf16.bf16 " WG_R64 ", %64, %65, p, 1, 1, 0, 0;\n}\n"
                 : WG_D64(d)
                 : "l"(da), "l"(db), "r"(accumulate));
}
__device__ __forceinline__ void wg_mma(Bf16Mma, float (&d)[32], u64 da, u64 db, int accumulate) {
    asm volatile("{\n.reg .pred p;\nsetp.ne.b32 p, %34, 0;\n"
                 "wgmma.mma_async.sync.aligned.m64n64k16.f32.bf16.bf16 " WG_R32 ", %32, %33, p, 1, 1, 0, 0;\n}\n"
                 : WG_D32(d)
                 : "l"(da), "l"(db), "r"(accumulate));
}
__device__ __forceinline__ void wg_mma(E4m3Mma, float (&d)[64], u64 da, u64 db, int accumulate) {
    asm volatile("{\n.reg .pred p;\nsetp.ne.b32 p, %66, 0;\n"
                 "wgmma.mma_async.sync.aligned.m64n128k32.f32.e4m3.e4m3 " WG_R64 ", %64, %65, p, 1, 1;\n}\n"
                 : WG_D64(d)
                 : "l"(da), "l"(db), "r"(accumulate));
}
__device__ __forceinline__ void wg_mma(E4m3Mma, float (&d)[32], u64 da, u64 db, int accumulate) {
    asm volatile("{\n.reg .pred p;\nsetp.ne.b32 p, %34, 0;\n"
                 "wgmma.mma_async.sync.aligned.m64n64k32.f32.e4m3.e4m3 " WG_R32 ", %32, %33, p, 1, 1;\n}\n"
                 : WG_D32(d)
                 : "l"(da), "l"(db), "r"(accumulate));
}

template <typename F, int BM, typename Args>
__device__ __forceinline__ void grouped_gemm_wgmma(const Args& p) {
    static_assert(BM == 64 || BM == 128, "wgmma tiles are 64 or 128 rows");
    constexpr int WG_N = BM == 128 ? 128 : 64;  // columns of one warpgroup
    constexpr int A_BYTES = BM * GG_ROW, STAGE_BYTES = A_BYTES + GG_BN * GG_ROW;
    constexpr int A_CHUNKS = BM * 8 / 256;      // 16-byte chunks of the A tile per thread
    // FP8's scales of a stage after all tiles: A's per row, then B's one.
    constexpr int SCALES = BM + 4;
    static_assert(1023 + GG_STAGES * (STAGE_BYTES + SCALES * 4) <= (int)sizeof(GgStage<BM>) * GG_STAGES,
                  "the launch's shared size (gemm_shared_bytes) holds the aligned wgmma stages");
    extern __shared__ __align__(128) unsigned char gg_smem[];
    // Swizzled tiles need 1024-byte alignment (the launch's shared size leaves room).
    unsigned char* base = (unsigned char*)(((size_t)gg_smem + 1023) & ~(size_t)1023);
    float* scales = (float*)(base + GG_STAGES * STAGE_BYTES);

    GgBlock blk;
    if (!gg_block<BM, F::ELEM>(p, blk)) return;
    const int row0 = blk.row0, row_end = blk.row_end, n0 = blk.n0, KB = blk.KB;
    const int kb_len = blk.kb_len, kb0 = blk.kb0;
    const i64 row_bytes = blk.row_bytes;
    const unsigned char *A = blk.A, *B = blk.B;
    float* C = blk.C;
    const float* SB = 0;
    if constexpr (F::SCALED) SB = gg_b_scales(p, blk);

    const int tid = threadIdx.x;
    i64 a_phys[A_CHUNKS];
#pragma unroll
    for (int j = 0; j < A_CHUNKS; j++) a_phys[j] = gg_a_row(p, blk, (tid + 256 * j) >> 3);
    const i64 sa_phys = F::SCALED && tid < BM ? gg_a_row(p, blk, tid) : -1;
    auto issue = [&](int kt) {
        unsigned char* sa = base + (kt % GG_STAGES) * STAGE_BYTES;
        unsigned char* sb = sa + A_BYTES;
        const int kb = kb0 + kt;
        const i64 k0 = (i64)kb * GG_ROW;
#pragma unroll
        for (int j = 0; j < A_CHUNKS; j++) {
            const int c = tid + 256 * j, r = c >> 3, ch = c & 7;
            const bool ok = a_phys[j] >= 0;
            gg_cp16(sa + r * GG_ROW + ((ch ^ (r & 7)) << 4), ok ? A + a_phys[j] * row_bytes + k0 + ch * 16 : A, ok);
        }
#pragma unroll
        for (int j = 0; j < 4; j++) {
            const int c = tid + 256 * j, r = c >> 3, ch = c & 7;
            const bool ok = n0 + r < p.n;
            gg_cp16(sb + r * GG_ROW + ((ch ^ (r & 7)) << 4), ok ? B + (i64)(n0 + r) * row_bytes + k0 + ch * 16 : B, ok);
        }
        if constexpr (F::SCALED) {
            float* ss = scales + (kt % GG_STAGES) * SCALES;
            if (tid < BM) {
                const bool ok = sa_phys >= 0;
                gg_cp4(&ss[tid], ok ? p.a_scales + sa_phys * KB + kb : p.a_scales, ok);
            }
            if (tid == 255) gg_cp4(&ss[BM], SB + kb, true);
        }
    };
#pragma unroll
    for (int s = 0; s < GG_STAGES - 1; s++) {
        if (s < kb_len) issue(s);
        gg_commit();
    }

    const int warp = tid >> 5, lane = tid & 31, wg = warp >> 2;
    const int gid = lane >> 2, tig = lane & 3;
    // This warpgroup's rows and columns within the tile; this thread's two rows of them.
    const int wg_row = BM == 128 ? wg * 64 : 0, wg_col = BM == 128 ? 0 : wg * 64;
    const int r_lo = wg_row + (warp & 3) * 16 + gid;
    float acc[WG_N / 2], part[WG_N / 2];
#pragma unroll
    for (int i = 0; i < WG_N / 2; i++) acc[i] = part[i] = 0.f;
    for (int kt = 0; kt < kb_len; kt++) {
        gg_wait<GG_STAGES - 2>();
        // This thread's cp.async writes become visible to wgmma's (async-proxy) reads.
        asm volatile("fence.proxy.async.shared::cta;\n" ::: "memory");
        __syncthreads();
        // The stage refilled here was read in iteration kt - 1, whose wgmma all finished.
        if (kt + GG_STAGES - 1 < kb_len) issue(kt + GG_STAGES - 1);
        gg_commit();
        const unsigned char* sa = base + (kt % GG_STAGES) * STAGE_BYTES + wg_row * GG_ROW;
        const unsigned char* sb = base + (kt % GG_STAGES) * STAGE_BYTES + A_BYTES + wg_col * GG_ROW;
        float (&d)[WG_N / 2] = F::SCALED ? part : acc;
        asm volatile("wgmma.fence.sync.aligned;\n" ::: "memory");
#pragma unroll
        for (int kk = 0; kk < GG_ROW; kk += 32) wg_mma(F{}, d, wg_desc(sa + kk), wg_desc(sb + kk), !F::SCALED || kk > 0);
        asm volatile("wgmma.commit_group.sync.aligned;\n" ::: "memory");
        asm volatile("wgmma.wait_group.sync.aligned 0;\n" ::: "memory");
        if constexpr (F::SCALED) {
            // This K block's scales: per row of A times the one block scale of B.
            const float* ss = scales + (kt % GG_STAGES) * SCALES;
            const float f0 = ss[r_lo] * ss[BM], f1 = ss[r_lo + 8] * ss[BM];
#pragma unroll
            for (int j = 0; j < WG_N / 8; j++) {
                acc[4 * j] += part[4 * j] * f0;
                acc[4 * j + 1] += part[4 * j + 1] * f0;
                acc[4 * j + 2] += part[4 * j + 2] * f1;
                acc[4 * j + 3] += part[4 * j + 3] * f1;
            }
        }
    }
    gg_wait<0>();

    // D layout: warp w of the warpgroup holds rows 16 (w % 4) .. + 15; n8 tile j in d[4j .. 4j + 3]
    // as an m16n8 accumulator.
    const float* bias = 0;
    if constexpr (!F::SCALED) bias = p.col_bias;
#pragma unroll
    for (int half = 0; half < 2; half++) {
        const int r = row0 + r_lo + half * 8;
        if (r >= row_end) continue;
#pragma unroll
        for (int j = 0; j < WG_N / 8; j++) {
            const int n = n0 + wg_col + j * 8 + tig * 2;
            if (n < p.n) {
                float v0 = acc[4 * j + half * 2], v1 = acc[4 * j + half * 2 + 1];
                if (bias != 0) {
                    v0 += bias[n];
                    v1 += bias[n + 1];
                }
                *(float2*)&C[(i64)r * p.n + n] = make_float2(v0, v1);
            }
        }
    }
}
#endif

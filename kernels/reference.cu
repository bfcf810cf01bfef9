// The device reference (src/engine/cuda/reference.rs): the routing of design §1 for every token,
// with its margins, and the layer output accumulated in f64 from exactly the bf16 inputs and
// weights the paths' kernels read; then the comparisons of each path against it, reduced on the
// device so only a few numbers per step come back.
//
// Routing mirrors src/engine/routing.rs step for step (selection values f32 = round(f64 formula),
// probabilities in f64, ties to the lower group then the lower expert), so ids agree exactly with
// the CPU reference. Sums whose order decides a rounding are sequential, as on the CPU.

#define REF_MAX_E 512
#define REF_MAX_K 32
#define REF_ROUTE_WARPS 2
// Doubles per column summary (cuda::reference::SUMMARY_LEN): sum, min, max, p50, p99, NaN count,
// zero count, then REF_WORST indices and REF_WORST values.
#define REF_WORST 8
#define REF_SUMMARY_LEN 23

#define REF_INF __longlong_as_double(0x7ff0000000000000ll)
#define REF_NAN __longlong_as_double(0x7ff8000000000000ll)

__device__ __forceinline__ bool ref_finite(double v) { return fabs(v) <= 1.7976931348623157e308; }

// Gap between two selection values, better minus worse; equal keys (-inf, NaN) are no gap.
__device__ __forceinline__ double ref_gap(float better, float worse) {
    float a = sel_key(better), b = sel_key(worse);
    if (a == b) return 0.0;
    return (double)a - (double)b;
}

// Warp argmax by sel_better over the entries `ok` admits; every lane gets (value, index), index
// 0x7fffffff when none.
#define REF_WARP_ARGMAX(COUNT, VALUE, OK, BV, BI)                       \
    {                                                                   \
        BV = NEG_INF;                                                   \
        BI = 0x7fffffff;                                                \
        for (int j = lane; j < (COUNT); j += 32) {                      \
            float v_ = (VALUE);                                         \
            if ((OK) && sel_better(v_, j, BV, BI)) {                    \
                BV = v_;                                                \
                BI = j;                                                 \
            }                                                           \
        }                                                               \
        float pay_ = 0.0f;                                              \
        warp_best(BV, BI, pay_);                                        \
    }

// One warp per token: scores, selection values, group scores, kept groups, chosen experts,
// probabilities and both margins.
extern "C" __global__ void ref_route(const RefRouteArgs a) {
    __shared__ float s_score[REF_ROUTE_WARPS][REF_MAX_E];
    __shared__ float s_sel[REF_ROUTE_WARPS][REF_MAX_E];
    __shared__ double s_exp[REF_ROUTE_WARPS][REF_MAX_E];
    __shared__ float s_gs[REF_ROUTE_WARPS][REF_MAX_E];
    __shared__ unsigned char s_kept[REF_ROUTE_WARPS][REF_MAX_E];
    __shared__ unsigned char s_chosen[REF_ROUTE_WARPS][REF_MAX_E];
    __shared__ int s_ids[REF_ROUTE_WARPS][REF_MAX_K];
    const int w = threadIdx.x >> 5, lane = threadIdx.x & 31;
    const u64 t = (u64)blockIdx.x * REF_ROUTE_WARPS + w;
    if (t >= a.tokens) return;  // whole warps only: no block-wide barrier below
    const int e = a.e, G = a.n_group > 1 ? a.n_group : 1, per = e / G;
    const float* lg = a.logits + t * e;
    float* sc = s_score[w];
    float* sv = s_sel[w];
    float* gs = s_gs[w];
    unsigned char* kept = s_kept[w];
    unsigned char* chosen = s_chosen[w];

    if (a.softmax) {
        float m = NEG_INF;
        for (int j = lane; j < e; j += 32) m = fmaxf(m, lg[j]);
        m = warp_max_f(m);
        for (int j = lane; j < e; j += 32) s_exp[w][j] = exp((double)lg[j] - (double)m);
        __syncwarp();
        double sum = 0.0;
        if (lane == 0)
            for (int j = 0; j < e; j++) sum += s_exp[w][j];
        sum = __shfl_sync(0xffffffffu, sum, 0);
        for (int j = lane; j < e; j += 32) sc[j] = (float)(s_exp[w][j] / sum);
    } else {
        for (int j = lane; j < e; j += 32) sc[j] = sigmoid_score(lg[j]);
    }
    for (int j = lane; j < e; j += 32) {
        float s = a.bias ? __fadd_rn(sc[j], a.bias[j]) : sc[j];
        sv[j] = s;
        a.sel[t * e + j] = s;
        chosen[j] = 0;
    }
    __syncwarp();

    double margin_g = REF_INF;
    if (G > 1) {
        for (int g = lane; g < G; g += 32) {
            gs[g] = group_score(sv + g * per, per, a.top2);
            kept[g] = 0;
            a.gscore[t * G + g] = gs[g];
        }
        __syncwarp();
        float bv, last = NEG_INF;
        int bi;
        for (int r = 0; r < a.topk_group; r++) {
            REF_WARP_ARGMAX(G, gs[j], !kept[j], bv, bi);
            if (bi >= G) break;
            if (lane == 0) {
                kept[bi] = 1;
                a.kept[t * a.topk_group + r] = (u32)bi;
            }
            last = bv;
            __syncwarp();
        }
        REF_WARP_ARGMAX(G, gs[j], !kept[j], bv, bi);
        if (bi < G) margin_g = ref_gap(last, bv);
    }
    __syncwarp();

    float bv, last = NEG_INF;
    int bi, n = 0;
    for (int r = 0; r < a.k && r < REF_MAX_K; r++) {
        REF_WARP_ARGMAX(e, sv[j], !chosen[j] && (G == 1 || kept[j / per]), bv, bi);
        if (bi >= e) break;
        if (lane == 0) {
            chosen[bi] = 1;
            s_ids[w][r] = bi;
        }
        last = bv;
        n++;
        __syncwarp();
    }
    REF_WARP_ARGMAX(e, sv[j], !chosen[j] && (G == 1 || kept[j / per]), bv, bi);
    double margin_e = bi < e ? ref_gap(last, bv) : REF_INF;
    if (lane == 0) {
        double p[REF_MAX_K];
        double sum = 0.0;
        for (int r = 0; r < n; r++) {
            p[r] = (double)sc[s_ids[w][r]];
            sum += p[r];
        }
        for (int r = 0; r < a.k; r++) {
            double v = r < n ? p[r] : 0.0;
            if (a.norm && sum > 0.0) v = v / sum;
            a.ids[t * a.k + r] = r < n ? (u32)s_ids[w][r] : 0xffffffffu;
            a.probs[t * a.k + r] = v;
        }
        a.margin_e[t] = margin_e;
        a.margin_g[t] = margin_g;
    }
}

// Qwen3-Next's shared gate in f64 for each compared token: sigmoid(gate · x); 1 without a gate.
extern "C" __global__ void ref_gate(const RefGateArgs a) {
    const int lane = threadIdx.x & 31;
    const u64 i = ((u64)blockIdx.x * blockDim.x + threadIdx.x) >> 5;
    if (i >= a.n) return;
    if (!a.gate_w) {
        if (lane == 0) a.out[i] = 1.0;
        return;
    }
    const bf16_t* x = a.x + (u64)a.tok[i] * a.h;
    double z = 0.0;
    for (int c = lane; c < a.h; c += 32) z += (double)a.gate_w[c] * (double)bf16_to_f32(x[c]);
    z = warp_sum_d(z);
    if (lane == 0) a.out[i] = 1.0 / (1.0 + exp(-z));
}

// Slot of reference row r = (compared token i, place j): the j-th chosen expert, then shared
// slots E..E+S-1.
__device__ __forceinline__ u32 ref_row_slot(const u32* ids, const u32* tok, u64 r, int kps, int k,
                                            int e) {
    u64 i = r / kps;
    int j = (int)(r % kps);
    return j < k ? ids[(u64)tok[i] * k + j] : (u32)(e + j - k);
}

extern "C" __global__ void ref_count(const RefCountArgs a) {
    const u64 rows = a.n * a.kps;
    for (u64 r = (u64)blockIdx.x * blockDim.x + threadIdx.x; r < rows;
         r += (u64)gridDim.x * blockDim.x) {
        u32 s = ref_row_slot(a.ids, a.tok, r, a.kps, a.k, a.e);
        if (s < (u32)a.slots) atomicAdd(&a.counts[s], 1);
    }
}

// One thread: slot offsets, GEMM tile offsets (REF_BM rows a tile) and fill cursors.
extern "C" __global__ void ref_scan(const RefScanArgs a) {
    if (threadIdx.x != 0 || blockIdx.x != 0) return;
    int off = 0, tiles = 0;
    for (int s = 0; s < a.slots; s++) {
        a.offsets[s] = off;
        a.tiles[s] = tiles;
        a.cursor[s] = off;
        off += a.counts[s];
        tiles += (a.counts[s] + a.bm - 1) / a.bm;
    }
    a.offsets[a.slots] = off;
    a.tiles[a.slots] = tiles;
}

// Places each row in its slot's range. The order within a slot is whatever the atomics give:
// every row is computed on its own, so it does not change a result.
extern "C" __global__ void ref_fill(const RefFillArgs a) {
    const u64 rows = a.n * a.kps;
    for (u64 r = (u64)blockIdx.x * blockDim.x + threadIdx.x; r < rows;
         r += (u64)gridDim.x * blockDim.x) {
        u32 s = ref_row_slot(a.ids, a.tok, r, a.kps, a.k, a.e);
        if (s >= (u32)a.slots) continue;
        int p = atomicAdd(&a.cursor[s], 1);
        a.row_of[p] = (int)r;
        a.pos_of[r] = p;
    }
}

// bf16 and e4m3 codes to f64 in 4 integer operations: the code's bits are placed in the f64
// exponent and mantissa fields without rebiasing, which is exact (subnormal codes become f64
// subnormals) and yields value · 2^-896 (bf16) or value · 2^-1016 (e4m3). The GEMM multiplies
// the scale back in once per output (ldexp by a power of two: exact). A full conversion costs ~14
// operations per value and bounded the GEMM by the integer pipe. e4m3 codes are brought to the
// bf16 codes' 2^-896 by 2^120 in the A operand. Infinities and NaNs come out
// finite; the Weights stage of the finite checks has already made such a step's verdict invalid.
__device__ __forceinline__ double ref_hi_word(u32 hi) { return __hiloint2double((int)hi, 0); }
// bf16 in the low (j = 0) or high (j = 1) half of w.
__device__ __forceinline__ double ref_bf16_scaled(u32 w, int j) {
    return j == 0 ? ref_hi_word(((w << 13) & 0x0fffe000u) | ((w << 16) & 0x80000000u))
                  : ref_hi_word(((w >> 3) & 0x0fffe000u) | (w & 0x80000000u));
}
// e4m3 byte j of w.
__device__ __forceinline__ double ref_e4m3_scaled(u32 w, int j) {
    const u32 c = w >> (8 * j);
    return ref_hi_word(((c << 17) & 0x00fe0000u) | ((c << 24) & 0x80000000u));
}
// D (16×8) += A (16×16) · B (16×8) on the FP64 tensor cores (sm_90's full-rate shape; m8n8k4
// runs at half the rate). With g = lane/4 and t = lane%4: a[i] is A[g + 8(i&1)][t + 4(i>>1)],
// b[j] is B[t + 4j][g], d[i] is D[g + 8(i>>1)][2t + (i&1)].
__device__ __forceinline__ void ref_dmma(double (&d)[4], const double (&a)[8], const double (&b)[4]) {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f64.f64.f64.f64 {%0,%1,%2,%3}, "
        "{%4,%5,%6,%7,%8,%9,%10,%11}, {%12,%13,%14,%15}, {%0,%1,%2,%3};"
        : "+d"(d[0]), "+d"(d[1]), "+d"(d[2]), "+d"(d[3])
        : "d"(a[0]), "d"(a[1]), "d"(a[2]), "d"(a[3]), "d"(a[4]), "d"(a[5]), "d"(a[6]), "d"(a[7]),
          "d"(b[0]), "d"(b[1]), "d"(b[2]), "d"(b[3]));
}

// Grouped GEMM in f64: out[p, n] = Σ_k A[p, k] · B_slot[n, k] for the positions p of each slot.
// A is the bf16 hidden state of the row's token (mode 0) or an f64 row by position (mode 1). B is
// bf16, or e4m3 with one f32 scale per 128×128 block (DeepSeek-V3's format), decoded exactly.
// Computed transposed, out^T = B · A^T: the MMA's 16 rows are weight rows (always plenty) and its
// 8 columns are positions, because a slot holds about 8 positions at T = 256. A block is REF_BM
// positions × REF_BN weight rows; each of its 4 warps owns 32 weight rows (inside one 128-row
// scale block) and every 8-position fragment of the tile that holds a position. No shared
// memory: a lane reads 8 consecutive k of its two weight rows and of its position, and the k
// order inside an MMA is a permutation both operands share. Products are exact; the sums are f64
// in a fixed order: deterministic.
#define REF_BM 32
#define REF_BN 128
#define REF_WF 2  // 16-row weight fragments per warp
#define REF_MF 4  // 8-position fragments per tile
#define REF_KC 32 // k per chunk: 4 lanes × 8
struct RefBRaw {
    uint4 v;  // 8 bf16, or 8 e4m3 in .x/.y
};
__device__ __forceinline__ RefBRaw ref_load_b(const void* base, bool fp8, bool in, u64 off) {
    RefBRaw r;
    r.v = make_uint4(0u, 0u, 0u, 0u);
    if (in) {
        if (fp8) {
            uint2 q = *(const uint2*)((const unsigned char*)base + off);
            r.v.x = q.x;
            r.v.y = q.y;
        } else {
            r.v = *(const uint4*)((const bf16_t*)base + off);
        }
    }
    return r;
}
// B value j of 8 (bf16 or e4m3 code), scaled as above.
__device__ __forceinline__ double ref_b_value(const RefBRaw& r, bool fp8, int j) {
    if (fp8) return ref_e4m3_scaled(j < 4 ? r.v.x : r.v.y, j & 3);
    return ref_bf16_scaled(j < 2 ? r.v.x : j < 4 ? r.v.y : j < 6 ? r.v.z : r.v.w, j & 1);
}

extern "C" __global__ void __launch_bounds__(128, 3) ref_gemm(const RefGemmArgs a) {
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    const int g = lane >> 2, t = lane & 3;
    const int bx = blockIdx.x;
    if (bx >= a.tiles[a.slots]) return;
    int lo = 0, hi = a.slots - 1;  // the slot whose tiles hold bx
    while (lo < hi) {
        int mid = (lo + hi + 1) >> 1;
        if (a.tiles[mid] <= bx) lo = mid;
        else hi = mid - 1;
    }
    const int s = lo;
    const int row0 = a.offsets[s] + (bx - a.tiles[s]) * REF_BM;
    const int rows = min(REF_BM, a.offsets[s + 1] - row0);
    const bool routed = s < a.e;
    const int N = routed ? a.n_routed : a.n_shared;
    const int K = routed ? a.k_routed : a.k_shared;
    const int n0 = blockIdx.y * REF_BN + warp * (REF_WF * 16);
    if (n0 >= N || rows <= 0) return;  // no block-wide synchronisation below
    const int slot = routed ? s : s - a.e;
    const bool fp8 = routed ? a.fp8_routed != 0 : a.fp8_shared != 0;
    const void* B = fp8 ? (const void*)((routed ? a.bq_routed : a.bq_shared) + (u64)slot * N * K)
                        : (const void*)((routed ? a.b_routed : a.b_shared) + (u64)slot * N * K);
    const int kblocks = (K + 127) / 128;
    const float* scales = fp8 ? (routed ? a.bs_routed : a.bs_shared) +
                                    (u64)slot * ((N + 127) / 128) * kblocks + (u64)(n0 / 128) * kblocks
                              : nullptr;
    const int mfa = min(REF_MF, (rows + 7) >> 3);

    // This lane's position in each fragment (position g of it); null past the slot's end.
    const bf16_t* ax[REF_MF];
    const double* af[REF_MF];
#pragma unroll
    for (int m = 0; m < REF_MF; m++) {
        ax[m] = nullptr;
        af[m] = nullptr;
        const int r = m * 8 + g;
        if (r < rows) {
            const int p = row0 + r;
            if (a.mode == 0) ax[m] = a.x + (u64)a.tok[(u64)a.row_of[p] / a.kps] * a.lda;
            else af[m] = a.act + (u64)p * a.lda;
        }
    }
    double acc[REF_WF][REF_MF][4];
#pragma unroll
    for (int f = 0; f < REF_WF; f++)
#pragma unroll
        for (int m = 0; m < REF_MF; m++)
#pragma unroll
            for (int i = 0; i < 4; i++) acc[f][m][i] = 0.0;

    // Weight rows g and g + 8 of each fragment; the chunk ahead loads while this one multiplies.
    RefBRaw next[REF_WF][2];
#pragma unroll
    for (int f = 0; f < REF_WF; f++)
#pragma unroll
        for (int h = 0; h < 2; h++) {
            const int n = n0 + 16 * f + 8 * h + g;
            next[f][h] = ref_load_b(B, fp8, n < N && 8 * t < K, (u64)n * K + 8 * t);
        }
    for (int k0 = 0; k0 < K; k0 += REF_KC) {
        const int kl = k0 + 8 * t;  // this lane's 8 consecutive k
        const bool kin = kl < K;
        RefBRaw cur[REF_WF][2];
#pragma unroll
        for (int f = 0; f < REF_WF; f++)
#pragma unroll
            for (int h = 0; h < 2; h++) {
                cur[f][h] = next[f][h];
                const int n = n0 + 16 * f + 8 * h + g;
                next[f][h] =
                    ref_load_b(B, fp8, n < N && kl + REF_KC < K, (u64)n * K + kl + REF_KC);
            }
        // One scale per (128-row, 128-k) block: the warp's 32 rows and the chunk share it, so it
        // multiplies the positions' values instead of every weight, with the difference of the
        // two codes' shifts (2^120: far from overflow; the products stay normal).
        const double scale = fp8 ? (double)scales[k0 / 128] * 0x1p120 : 1.0;
        uint4 xr[REF_MF];
        if (a.mode == 0) {
#pragma unroll
            for (int m = 0; m < REF_MF; m++) {
                xr[m] = make_uint4(0u, 0u, 0u, 0u);
                if (m < mfa && ax[m] != nullptr && kin) xr[m] = *(const uint4*)(ax[m] + kl);
            }
        }
#pragma unroll
        for (int half = 0; half < 2; half++) {  // k = kl + 4·half + j, j < 4: one MMA step
            double wv[REF_WF][8];
#pragma unroll
            for (int f = 0; f < REF_WF; f++)
#pragma unroll
                for (int i = 0; i < 8; i++)
                    wv[f][i] = ref_b_value(cur[f][i & 1], fp8, 4 * half + (i >> 1));
#pragma unroll
            for (int m = 0; m < REF_MF; m++) {
                if (m >= mfa) continue;
                double xv[4];
                if (a.mode == 0) {
                    // Back to the value (times the scale where FP8): exact products.
                    const u32 w0 = half ? xr[m].z : xr[m].x, w1 = half ? xr[m].w : xr[m].y;
                    xv[0] = ref_bf16_scaled(w0, 0) * 0x1p896;
                    xv[1] = ref_bf16_scaled(w0, 1) * 0x1p896;
                    xv[2] = ref_bf16_scaled(w1, 0) * 0x1p896;
                    xv[3] = ref_bf16_scaled(w1, 1) * 0x1p896;
                    if (fp8) {
#pragma unroll
                        for (int q = 0; q < 4; q++) xv[q] *= scale;
                    }
                } else {
                    double2 p0 = make_double2(0.0, 0.0), p1 = p0;
                    if (af[m] != nullptr && kin) {
                        p0 = *(const double2*)(af[m] + kl + 4 * half);
                        p1 = *(const double2*)(af[m] + kl + 4 * half + 2);
                    }
                    xv[0] = p0.x * scale;
                    xv[1] = p0.y * scale;
                    xv[2] = p1.x * scale;
                    xv[3] = p1.y * scale;
                }
#pragma unroll
                for (int f = 0; f < REF_WF; f++) ref_dmma(acc[f][m], wv[f], xv);
            }
        }
    }
    const double up = 0x1p896;  // the weights' codes were value · 2^-896
#pragma unroll
    for (int m = 0; m < REF_MF; m++) {
        if (m >= mfa) continue;
#pragma unroll
        for (int i = 0; i < 4; i++) {
            const int r = m * 8 + 2 * t + (i & 1);
            if (r >= rows) continue;
            double* o = a.out + (u64)(row0 + r) * a.ldo;
#pragma unroll
            for (int f = 0; f < REF_WF; f++) {
                const int n = n0 + 16 * f + 8 * (i >> 1) + g;
                if (n < N) o[n] = acc[f][m][i] * up;
            }
        }
    }
}

// act[p, c] = silu(gate) · up in f64 (compare::mlp_f64), per position; the slot decides the width.
extern "C" __global__ void ref_silu(const RefSiluArgs a) {
    const u64 total = (u64)a.offsets[a.slots] * a.ld;
    for (u64 q = (u64)blockIdx.x * blockDim.x + threadIdx.x; q < total;
         q += (u64)gridDim.x * blockDim.x) {
        int p = (int)(q / a.ld), c = (int)(q % a.ld);
        int lo = 0, hi = a.slots - 1;
        while (lo < hi) {
            int mid = (lo + hi + 1) >> 1;
            if (a.offsets[mid] <= p) lo = mid;
            else hi = mid - 1;
        }
        int inter = lo < a.e ? a.inter_routed : a.inter_shared;
        if (c >= inter) continue;
        double g = a.h1[(u64)p * 2 * a.ld + c];
        double u = a.h1[(u64)p * 2 * a.ld + inter + c];
        a.act[(u64)p * a.ld + c] = __dmul_rn(__ddiv_rn(g, __dadd_rn(1.0, exp(-g))), u);
    }
}

// y[i, c] = Σ_j rsf·p_j·E_j(x)[c] + g·Σ_s S_s(x)[c], summed in the CPU reference's order.
extern "C" __global__ void ref_combine(const RefCombineArgs a) {
    const u64 total = a.n * a.h;
    for (u64 q = (u64)blockIdx.x * blockDim.x + threadIdx.x; q < total;
         q += (u64)gridDim.x * blockDim.x) {
        u64 i = q / a.h, c = q % a.h;
        u64 tok = a.tok[i];
        double y = 0.0;
        for (int j = 0; j < a.k; j++) {
            double w = __dmul_rn(a.probs[tok * a.k + j], a.rsf);
            y = __dadd_rn(y, __dmul_rn(w, a.o[(u64)a.pos_of[i * a.kps + j] * a.h + c]));
        }
        double g = a.gate ? a.gate[i] : 1.0;
        for (int j = a.k; j < a.kps; j++)
            y = __dadd_rn(y, __dmul_rn(g, a.o[(u64)a.pos_of[i * a.kps + j] * a.h + c]));
        a.y[q] = y;
    }
}

// Per-token routing comparison of one path against the reference (numerics::RouteColumn order):
// id-set agreement, its class when they differ, the weight difference where they agree, and the
// contract's effective routed sum and shared weights. One thread per token.
extern "C" __global__ void ref_compare_routes(const RefCompareArgs a) {
    const u64 t = (u64)blockIdx.x * blockDim.x + threadIdx.x;
    if (t >= a.tokens) return;
    const u64 T = a.tokens;
    double* col = a.cols;
    u32 pid[REF_MAX_K];
    double pw[REF_MAX_K];
    double shared[4] = {0.0, 0.0, 0.0, 0.0};
    int np = 0;
    for (int q = 0; q < a.spt; q++) {
        u32 id = a.p_ids[t * a.spt + q];
        double wt = __dmul_rn((double)a.p_w[t * a.spt + q], a.out_scale);
        if (id < (u32)(a.e + a.s)) atomicAdd(&a.load[id], 1u);
        if (id < (u32)a.e) {
            if (np < REF_MAX_K) {
                pid[np] = id;
                pw[np] = wt;
            }
            np++;
        } else if (id < (u32)(a.e + a.s)) {
            shared[id - a.e] = __dadd_rn(shared[id - a.e], wt);
        }
    }
    if (a.sep)
        for (int j = 0; j < a.s; j++) shared[j] = __dadd_rn(shared[j], (double)a.sep[t]);
    const u32* rid = a.r_ids + t * a.k;
    const double* rp = a.r_probs + t * a.k;

    double rsum = 0.0, want = 0.0;
    for (int q = 0; q < np && q < REF_MAX_K; q++) rsum = __dadd_rn(rsum, pw[q]);
    for (int j = 0; j < a.k; j++) want = __dadd_rn(want, rp[j]);
    want = __dmul_rn(want, a.rsf);
    double gate = a.gate ? (double)a.gate[t] : 1.0;
    double sdev = 0.0;
    for (int j = 0; j < a.s; j++) sdev = fmax(sdev, fabs(shared[j] - gate) / fmax(fabs(gate), 1.0));

    // Set comparison (duplicates collapse, as with sets on the host).
    int distinct = 0;
    bool subset = np <= REF_MAX_K;
    for (int q = 0; q < np && q < REF_MAX_K; q++) {
        bool dup = false;
        for (int z = 0; z < q; z++) dup |= pid[z] == pid[q];
        if (dup) continue;
        distinct++;
        bool in = false;
        for (int j = 0; j < a.k; j++) in |= rid[j] == pid[q];
        subset &= in;
    }
    const bool agree = subset && distinct == a.k;
    double wdiff = 0.0;
    int cls = 0;  // 0 agree, 1 exact tie, 2 near tie, 3 real divergence
    if (agree) {
        for (int q = 0; q < np; q++)
            for (int j = 0; j < a.k; j++)
                if (rid[j] == pid[q]) wdiff = fmax(wdiff, fabs(pw[q] - __dmul_rn(rp[j], a.rsf)));
    } else if (distinct != a.k || np > REF_MAX_K) {
        cls = 3;
    } else {
        // Each expert the path chose and the reference did not: how far below the reference's
        // boundary it is (the last kept group, or the last chosen expert of a kept group).
        const int G = a.n_group > 1 ? a.n_group : 1, per = a.e / G;
        const float* sel = a.sel + t * a.e;
        float last_sel = sel[rid[a.k - 1]];
        float last_gs = G > 1 ? a.gscore[t * G + a.kept[t * a.topk_group + a.topk_group - 1]] : 0.0f;
        // The first cause decides (as numerics::RefToken::classify): where the path chose from
        // a group the reference did not keep, only the groups' scores count.
        bool swapped = false;
        for (int q = 0; q < np; q++) {
            bool in = false;
            for (int j = 0; j < a.k; j++) in |= rid[j] == pid[q];
            bool kept = G == 1;
            for (int z = 0; z < a.topk_group && !kept; z++)
                kept = a.kept[t * a.topk_group + z] == (u32)(pid[q] / per);
            swapped |= !in && !kept;
        }
        cls = 1;
        for (int q = 0; q < np; q++) {
            bool in = false;
            for (int j = 0; j < a.k; j++) in |= rid[j] == pid[q];
            if (in) continue;
            int g = pid[q] / per;
            bool kept = G == 1;
            for (int z = 0; z < a.topk_group && !kept; z++) kept = a.kept[t * a.topk_group + z] == (u32)g;
            if (swapped && kept) continue;
            float thr = kept ? last_sel : last_gs;
            float v = kept ? sel[pid[q]] : a.gscore[t * G + g];
            double gap = ref_gap(thr, v);
            float at = fabsf(thr);
            double ulp = (double)(__int_as_float(__float_as_int(at) + 1) - at);
            int c = gap == 0.0 ? 1 : (ref_finite(gap) && ref_finite(ulp) && gap <= a.near_ulps * ulp) ? 2 : 3;
            cls = max(cls, c);
        }
    }
    col[0 * T + t] = agree ? 1.0 : 0.0;
    col[1 * T + t] = cls == 1 ? 1.0 : 0.0;
    col[2 * T + t] = cls == 2 ? 1.0 : 0.0;
    col[3 * T + t] = cls == 3 ? 1.0 : 0.0;
    col[4 * T + t] = wdiff;
    col[5 * T + t] = rsum;
    col[6 * T + t] = want;
    col[7 * T + t] = fabs(rsum - want) / fmax(fabs(want), 1.0);
    col[8 * T + t] = sdev;
    col[9 * T + t] = gate;
    for (int j = 0; j < a.s; j++) col[(10 + j) * T + t] = shared[j];
    if (a.classes) a.classes[t] = (unsigned char)cls;
}

// Per token: whether two paths routed to the same set of experts (ids < e; duplicates collapse).
extern "C" __global__ void ref_compare_sets(const RefSetsArgs a) {
    const u64 t = (u64)blockIdx.x * blockDim.x + threadIdx.x;
    if (t >= a.tokens) return;
    const u32* x = a.a_ids + t * a.a_spt;
    const u32* y = a.b_ids + t * a.b_spt;
    bool same = true;
    for (int i = 0; i < a.a_spt; i++) {
        if (x[i] >= (u32)a.e) continue;
        bool in = false;
        for (int j = 0; j < a.b_spt; j++) in |= y[j] == x[i];
        same &= in;
    }
    for (int j = 0; j < a.b_spt; j++) {
        if (y[j] >= (u32)a.e) continue;
        bool in = false;
        for (int i = 0; i < a.a_spt; i++) in |= x[i] == y[j];
        same &= in;
    }
    a.out[t] = same ? 1.0 : 0.0;
}

// Copies n 32-bit words (a path's slot ids and weights, kept for the drill-down).
extern "C" __global__ void ref_copy_u32(const RefCopyArgs a) {
    for (u64 q = (u64)blockIdx.x * blockDim.x + threadIdx.x; q < a.n;
         q += (u64)gridDim.x * blockDim.x)
        a.dst[q] = a.src[q];
}

// Copies the compared tokens' output rows of a path (f32), to compare a later path with it.
extern "C" __global__ void ref_copy_rows(const RefCopyRowsArgs a) {
    const u64 total = a.n * a.h;
    for (u64 q = (u64)blockIdx.x * blockDim.x + threadIdx.x; q < total;
         q += (u64)gridDim.x * blockDim.x) {
        u64 i = q / a.h, c = q % a.h;
        a.out[q] = a.y[(u64)a.tok[i] * a.h + c];
    }
}

// Per compared token (one warp each): the path's output row against the reference row (f64, mode
// 0) or another path's copied row (f32, mode 1). Columns: rel L2, max abs, Σdiff², Σref².
extern "C" __global__ void ref_compare_rows(const RefRowsArgs a) {
    const int lane = threadIdx.x & 31;
    const u64 i = ((u64)blockIdx.x * blockDim.x + threadIdx.x) >> 5;
    if (i >= a.n) return;
    const float* y = a.y + (u64)a.tok[i] * a.h;
    double d2 = 0.0, n2 = 0.0, mx = 0.0;
    int bad = 0;
    for (int c = lane; c < a.h; c += 32) {
        double want = a.mode == 0 ? a.ref64[i * a.h + c] : (double)a.ref32[i * a.h + c];
        double d = (double)y[c] - want;
        bad |= !ref_finite(d);
        d2 += d * d;
        n2 += want * want;
        mx = fmax(mx, fabs(d));
    }
    d2 = warp_sum_d(d2);
    n2 = warp_sum_d(n2);
    for (int off = 16; off > 0; off >>= 1) {
        mx = fmax(mx, __shfl_xor_sync(0xffffffffu, mx, off));
        bad |= __shfl_xor_sync(0xffffffffu, bad, off);
    }
    if (lane != 0) return;
    const u64 n = a.n;
    a.cols[0 * n + i] = bad ? REF_NAN : (n2 == 0.0 ? sqrt(d2) : sqrt(d2 / n2));
    a.cols[1 * n + i] = bad ? REF_NAN : mx;
    a.cols[2 * n + i] = bad ? REF_NAN : d2;
    a.cols[3 * n + i] = n2;
}

// Order-preserving key of a double; NaN above everything (the worst error).
__device__ __forceinline__ u64 ref_key(double v) {
    if (v != v) return ~0ull;
    u64 b = (u64)__double_as_longlong(v);
    return (b >> 63) ? ~b : (b | 0x8000000000000000ull);
}
__device__ __forceinline__ double ref_unkey(u64 k) {
    if (k == ~0ull) return REF_NAN;
    return __longlong_as_double((long long)((k >> 63) ? (k & 0x7fffffffffffffffull) : ~k));
}

// The element of rank `rank` (ascending) of a column, by radix select on the keys: 8 passes of 8
// bits, one shared histogram.
__device__ double ref_select(const double* x, u64 n, u64 rank, u32* hist, u64* shared_prefix) {
    u64 prefix = 0, mask = 0;
    for (int shift = 56; shift >= 0; shift -= 8) {
        for (int b = threadIdx.x; b < 256; b += blockDim.x) hist[b] = 0;
        __syncthreads();
        for (u64 i = threadIdx.x; i < n; i += blockDim.x) {
            u64 key = ref_key(x[i]);
            if ((key & mask) == prefix) atomicAdd(&hist[(key >> shift) & 255], 1u);
        }
        __syncthreads();
        if (threadIdx.x == 0) {
            u64 cum = 0;
            int d = 0;
            for (; d < 255; d++) {
                if (cum + hist[d] > rank) break;
                cum += hist[d];
            }
            rank -= cum;
            *shared_prefix = prefix | ((u64)d << shift);
        }
        __syncthreads();
        prefix = *shared_prefix;
        mask |= 255ull << shift;
        __syncthreads();
    }
    return ref_unkey(prefix);
}

// One block per column: sum (fixed order), min, max, p50, p99, NaN and zero counts, and the REF_WORST
// largest entries (NaN first, ties to the lower index) with their indices.
extern "C" __global__ void __launch_bounds__(256) ref_summarize(const RefSummaryArgs a) {
    __shared__ double s_sum[256], s_min[256], s_max[256];
    __shared__ u64 s_nan[256], s_zero[256], s_key[256], s_idx[256];
    __shared__ u32 hist[256];
    __shared__ u64 prefix;
    __shared__ u64 worst[REF_WORST];
    const double* x = a.cols + (u64)blockIdx.x * a.stride;
    double* out = a.out + (u64)blockIdx.x * REF_SUMMARY_LEN;
    const u64 n = a.n;
    const int tid = threadIdx.x;
    double sum = 0.0, mn = REF_INF, mx = -REF_INF;
    u64 nan = 0, zeros = 0;
    for (u64 i = tid; i < n; i += 256) {
        double v = x[i];
        sum += v;
        zeros += v == 0.0;
        if (v != v) {
            nan++;
        } else {
            mn = fmin(mn, v);
            mx = fmax(mx, v);
        }
    }
    s_sum[tid] = sum;
    s_min[tid] = mn;
    s_max[tid] = mx;
    s_nan[tid] = nan;
    s_zero[tid] = zeros;
    __syncthreads();
    for (int off = 128; off > 0; off >>= 1) {
        if (tid < off) {
            s_sum[tid] += s_sum[tid + off];
            s_min[tid] = fmin(s_min[tid], s_min[tid + off]);
            s_max[tid] = fmax(s_max[tid], s_max[tid + off]);
            s_nan[tid] += s_nan[tid + off];
            s_zero[tid] += s_zero[tid + off];
        }
        __syncthreads();
    }
    if (tid == 0) {
        out[0] = s_sum[0];
        out[1] = n ? s_min[0] : 0.0;
        out[2] = n ? s_max[0] : 0.0;  // NaN ignored, as Stats::of; the count says if any
        out[5] = (double)s_nan[0];
        out[6] = (double)s_zero[0];
    }
    __syncthreads();
    if (n == 0) {
        if (tid == 0) {
            out[3] = out[4] = 0.0;
            for (int q = 0; q < REF_WORST; q++) out[7 + q] = -1.0, out[7 + REF_WORST + q] = 0.0;
        }
        return;
    }
    double p50 = ref_select(x, n, (u64)(0.5 * (double)(n - 1)), hist, &prefix);
    double p99 = ref_select(x, n, (u64)(0.99 * (double)(n - 1)), hist, &prefix);
    if (tid == 0) {
        out[3] = p50;
        out[4] = p99;
    }
    for (int q = 0; q < REF_WORST; q++) {
        u64 bk = 0, bi = ~0ull;
        for (u64 i = tid; i < n; i += 256) {
            bool taken = false;
            for (int z = 0; z < q; z++) taken |= worst[z] == i;
            if (taken) continue;
            u64 key = ref_key(x[i]);
            if (bi == ~0ull || key > bk || (key == bk && i < bi)) {
                bk = key;
                bi = i;
            }
        }
        s_key[tid] = bk;
        s_idx[tid] = bi;
        __syncthreads();
        for (int off = 128; off > 0; off >>= 1) {
            if (tid < off) {
                u64 ok = s_key[tid + off], oi = s_idx[tid + off];
                bool better = oi != ~0ull && (s_idx[tid] == ~0ull || ok > s_key[tid] ||
                                              (ok == s_key[tid] && oi < s_idx[tid]));
                if (better) {
                    s_key[tid] = ok;
                    s_idx[tid] = oi;
                }
            }
            __syncthreads();
        }
        if (tid == 0) {
            worst[q] = s_idx[0];
            bool none = s_idx[0] == ~0ull;
            out[7 + q] = none ? -1.0 : (double)s_idx[0];
            out[7 + REF_WORST + q] = none ? 0.0 : ref_unkey(s_key[0]);
        }
        __syncthreads();
    }
}

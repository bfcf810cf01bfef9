// The fused router: scores, bias, group scores, group top-k, expert top-k, weights and the shared
// slots in ONE kernel, one warp per token. Selection mirrors routing::route_token exactly: values
// are compared through order-preserving u32 keys (NaN lowest), ties to the lower index.
// Two kernel families (router.rs picks): the lane-contiguous `router_lanes_*` (below; sigmoid,
// E = 256 or 384, n_group a power of two, aligned loads) where they apply, with `router_screen_*`
// the same kernel selecting on f32 scores first (exact fallback; see "Screening"), and the
// general `router_fused_e*` for every shape, where lane l holds experts l, l+32, ... and the
// warp-wide best is found with redux.sync (max key, then min index among the lanes holding it).
// Limits (checked on the host): E <= 512, k + S <= 32. Argument struct and launch geometry:
// RouterFusedArgs in src/engine/cuda/kernels/registry.rs.

#define RF_MAX_E 512
#define RF_WARPS 4

__device__ __forceinline__ float load_logit(const void* p, u64 i, int is_bf16) {
    return is_bf16 ? bf16_to_f32(((const bf16_t*)p)[i]) : ((const float*)p)[i];
}

// The outputs of one token, shared by both kernels: lane r < k_eff holds the r-th chosen expert
// and its unbiased score. Probabilities are summed in selection order in double (as routing.rs).
__device__ __forceinline__ void rf_store(int my_id, float my_score, int t, int E, int k, int k_eff,
                                         int norm, double routed_scale, int S, double shared_w,
                                         const float* gate, u32* ids, float* weights,
                                         double* probs_out, int spt, int lane) {
    double sum = 0.0;
    for (int r = 0; r < k_eff; r++) sum += (double)__shfl_sync(0xffffffffu, my_score, r);
    double p = (double)my_score;
    if (norm && sum > 0.0) p = p / sum;
    const u64 base = (u64)t * spt;
    if (lane < k) {
        bool real = lane < k_eff;
        ids[base + lane] = real ? (u32)my_id : 0u;
        weights[base + lane] = real ? (float)(routed_scale * p) : 0.f;
        if (probs_out != 0) probs_out[(u64)t * k + lane] = real ? p : 0.0;
    } else if (lane < k + S) {
        float g = gate != 0 ? gate[t] : 1.0f;
        ids[base + lane] = (u32)(E + lane - k);
        weights[base + lane] = (float)(shared_w * (double)g);
    }
}

// ids/weights: [T x spt] slots (k routed, then S shared); probs_out (nullable): [T x k] the
// renormalized probabilities in double (rsf not included), for `moescope route`.
// RF_PER_LANE experts per lane: 8 (E <= 256) or 16 (E <= 512), one instantiation each.
// N floats (a multiple of 4, 16-byte aligned) into registers with 16-byte loads.
template <int N>
__device__ __forceinline__ void load_f32x4(const float* src, float* dst) {
    const float4* v4 = (const float4*)src;
#pragma unroll
    for (int j = 0; j < N / 4; j++) {
        float4 v = v4[j];
        dst[4 * j] = v.x;
        dst[4 * j + 1] = v.y;
        dst[4 * j + 2] = v.z;
        dst[4 * j + 3] = v.w;
    }
}

template <int RF_PER_LANE>
__device__ __forceinline__ void router_fused_body(const RouterFusedArgs& a) {
    const void* logits = a.logits;
    const bool logits_bf16 = a.logits_bf16, group_top2 = a.group_top2, softmax = a.softmax, norm = a.norm;
    const float *bias = a.bias, *gate = a.gate;
    const int T = a.t, E = a.e, n_group = a.n_group, topk_group = a.topk_group, k = a.k;
    const int k_eff = a.k_eff, S = a.s, spt = a.spt;
    const double routed_scale = a.routed_scale, shared_w = a.shared_w;
    u32* ids = a.ids;
    float* weights = a.weights;
    double* probs_out = a.probs;
    __shared__ float s_sel[RF_WARPS][RF_MAX_E];
    __shared__ float s_gs[RF_WARPS][RF_MAX_E];
    __shared__ unsigned char s_kept[RF_WARPS][RF_MAX_E];
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    const int per = E / n_group;
    // Group paths: groups of 32 are one register across the warp; up to 32 groups are one lane
    // each; anything else goes through shared memory.
    const bool warp_groups = n_group > 1 && per == 32;
    const bool lane_groups = n_group > 1 && n_group <= 32;
    for (int t = blockIdx.x * RF_WARPS + warp; t < T; t += gridDim.x * RF_WARPS) {
        const u64 row = (u64)t * E;
        float score[RF_PER_LANE], b[RF_PER_LANE];
        u32 key[RF_PER_LANE];
        // Logits and bias loads issued together (one memory latency, not two).
#pragma unroll
        for (int i = 0; i < RF_PER_LANE; i++) {
            int e = lane + 32 * i;
            score[i] = e < E ? load_logit(logits, row + e, logits_bf16) : NEG_INF;
            b[i] = (bias != 0 && e < E) ? bias[e] : 0.f;
        }
        if (softmax) {
            float m = NEG_INF;
#pragma unroll
            for (int i = 0; i < RF_PER_LANE; i++) m = fmaxf(m, score[i]);
            m = warp_max_f(m);
            double s = 0.0;
#pragma unroll
            for (int i = 0; i < RF_PER_LANE; i++)
                if (lane + 32 * i < E) s += exp((double)score[i] - (double)m);
            s = warp_sum_d(s);
#pragma unroll
            for (int i = 0; i < RF_PER_LANE; i++)
                if (lane + 32 * i < E) score[i] = (float)(exp((double)score[i] - (double)m) / s);
        } else {
#pragma unroll
            for (int i = 0; i < RF_PER_LANE; i++)
                if (lane + 32 * i < E) score[i] = sigmoid_score(score[i]);
        }
#pragma unroll
        for (int i = 0; i < RF_PER_LANE; i++) {
            int e = lane + 32 * i;
            float sel = bias != 0 ? score[i] + b[i] : score[i];
            key[i] = e < E ? sort_key(sel) : 0u;
            if (!warp_groups && n_group > 1 && e < E) s_sel[warp][e] = sel;
        }

        // Group scores: top-2 sum of sel with a bias, the max without (NaN never chosen).
        u32 kept_mask = 0xffffffffu;
        if (n_group > 1) {
            float my_gs = NEG_INF;
            if (warp_groups) {
#pragma unroll
                for (int i = 0; i < RF_PER_LANE; i++) {
                    if (i < n_group) {
                        u32 k1 = warp_umax(key[i]);
                        float r;
                        if (group_top2) {
                            u32 first_lane = warp_umin(key[i] == k1 ? (u32)lane : 32u);
                            u32 k2 = warp_umax((u32)lane == first_lane ? 0u : key[i]);
                            r = key_value(k1) + key_value(k2);
                        } else {
                            r = key_value(k1);
                        }
                        if (lane == i) my_gs = r;
                        if (!lane_groups) s_gs[warp][i] = r;
                    }
                }
            } else {
                __syncwarp();
                for (int g = lane; g < n_group; g += 32) {
                    const float* grp = &s_sel[warp][g * per];
                    float r = group_score(grp, per, group_top2);
                    if (lane_groups) my_gs = r;
                    else s_gs[warp][g] = r;
                }
            }
            if (lane_groups) {
                // Best topk_group groups: one lane per group, redux per round.
                u32 gk = lane < n_group ? sort_key(my_gs) : 0u;
                kept_mask = 0;
                for (int r = 0; r < topk_group; r++) {
                    u32 mk = warp_umax(gk);
                    u32 g = warp_umin(gk == mk ? (u32)lane : 32u);
                    kept_mask |= 1u << g;
                    if ((u32)lane == g) gk = 0u;
                }
            } else {
                __syncwarp();
                for (int g = lane; g < n_group; g += 32) s_kept[warp][g] = 0;
                __syncwarp();
                for (int r = 0; r < topk_group; r++) {
                    float bv = NEG_INF, dummy = 0.f;
                    int bi = 0x7fffffff;
                    for (int g = lane; g < n_group; g += 32) {
                        float v = s_gs[warp][g];
                        if (!s_kept[warp][g] && sel_better(v, g, bv, bi)) {
                            bv = v;
                            bi = g;
                        }
                    }
                    warp_best(bv, bi, dummy);
                    if (lane == 0) s_kept[warp][bi] = 1;
                    __syncwarp();
                }
            }
        }
        // Candidates: experts of the kept groups.
        u32 cand = 0;
#pragma unroll
        for (int i = 0; i < RF_PER_LANE; i++) {
            int e = lane + 32 * i;
            bool in = e < E;
            if (in && n_group > 1) in = lane_groups ? ((kept_mask >> (e / per)) & 1u) : s_kept[warp][e / per];
            if (in) cand |= 1u << i;
        }
        // Expert top-k: each lane keeps its best candidate; per round the warp's best by redux,
        // and only the winning lane rescans.
        u32 lb_key = 0u, lb_idx = 0xffffffffu;
        float lb_score = 0.f;
#pragma unroll
        for (int i = 0; i < RF_PER_LANE; i++)
            if (((cand >> i) & 1u) && key[i] > lb_key) {
                lb_key = key[i];
                lb_idx = lane + 32 * i;
                lb_score = score[i];
            }
        float my_score = 0.f;
        int my_id = 0;
        for (int r = 0; r < k_eff; r++) {
            u32 mk = warp_umax(lb_key);
            u32 wi = warp_umin(lb_key == mk ? lb_idx : 0xffffffffu);
            float ws = __shfl_sync(0xffffffffu, lb_score, wi & 31);
            if (lane == r) {
                my_id = (int)wi;
                my_score = ws;
            }
            if ((u32)lane == (wi & 31)) {
                cand &= ~(1u << (wi >> 5));
                lb_key = 0u;
                lb_idx = 0xffffffffu;
#pragma unroll
                for (int i = 0; i < RF_PER_LANE; i++)
                    if (((cand >> i) & 1u) && key[i] > lb_key) {
                        lb_key = key[i];
                        lb_idx = lane + 32 * i;
                        lb_score = score[i];
                    }
            }
        }
        rf_store(my_id, my_score, t, E, k, k_eff, norm, routed_scale, S, shared_w, gate, ids, weights,
                 probs_out, spt, lane);
        __syncwarp();
    }
}

// The general kernel: every shape the host accepts (softmax or sigmoid, any E <= 512, any group
// count); RF_PER_LANE experts per lane, 8 for E <= 256 (half the registers), else 16.
extern "C" __global__ void __launch_bounds__(RF_WARPS * 32) router_fused_e256(const RouterFusedArgs a) {
    router_fused_body<8>(a);
}
extern "C" __global__ void __launch_bounds__(RF_WARPS * 32) router_fused_e512(const RouterFusedArgs a) {
    router_fused_body<16>(a);
}

// The lane-contiguous router for sigmoid scoring with E = 32 * PER (PER = 8 or 12) and n_group
// a power of two (DeepSeek-V3 and Kimi-K2 shapes): lane l holds experts PER*l .. PER*l+PER-1, loaded
// with 16-byte (f32) or 8-byte (bf16) loads, so a group is L = 32 / n_group adjacent lanes and a
// lower lane always holds lower expert indices. Group top-2 is lane-local, then log2(L) shuffle
// merges; kept groups by rank counting (no serial rounds); each top-k round is one redux.max and
// one ballot (the lowest lane holding the max key has the lowest index among equals).
// The lane's best key and its lowest position among equals: a tree of depth log2(PER), lower
// positions always on the left (taken unless the right is strictly larger).
template <int PER>
__device__ __forceinline__ void rf_head(const u32 (&key)[PER], u32& hk, int& hj) {
    u32 k2[PER];
    int j2[PER];
#pragma unroll
    for (int j = 0; j < PER; j++) {
        k2[j] = key[j];
        j2[j] = j;
    }
#pragma unroll
    for (int w = 1; w < PER; w <<= 1)
#pragma unroll
        for (int j = 0; j + w < PER; j += 2 * w)
            if (k2[j + w] > k2[j]) {
                k2[j] = k2[j + w];
                j2[j] = j2[j + w];
            }
    hk = k2[0];
    hj = j2[0];
}

// Screening: the lanes kernel first selects on f32 scores (ex2.approx and rcp.approx: a few
// instructions an expert where the double formula of routing.rs takes about seventy), with each
// key's low bits replaced by its position in the lane (and each group score's by its group), so
// every key is distinct and one redux.max names its owner. The result stands only when every
// decision that shapes the output is wider than three times the error bound: the weakest kept
// group against the best dropped one, and each of the k best candidates against the next. Above
// twice the bound the exact values are in the same order, so the ids are identical. Otherwise
// (ties, near ties, NaN) the warp routes the token again by the exact path. Weights always come
// from the double formula.
// The bound, for a token whose largest |sel| is V >= 1: the f32 sigmoid is within 2.9e-7 of the
// rounded double one (ex2.approx and rcp.approx within 2 ulp each, the argument's rounding scaled
// by s(1-s)|x| <= 0.23); the sum with the bias rounds both ways (1 ulp), the position bits move a
// key by at most POS ulp; a group score adds two such values, its own roundings and the group bits.
#define RF_SIGMOID_ERR 2.9e-7f
#define RF_ULP 1.1920928955078125e-7f  // 2^-23: one ulp of a value in [1, 2), relative

__device__ __forceinline__ float rf_fast_sigmoid(float x) { return __fdividef(1.0f, 1.0f + __expf(-x)); }

// hi - lo exceeds the margin; false for NaN.
__device__ __forceinline__ bool rf_apart(float hi, float lo, float margin) { return hi - lo > margin; }

// Group top-2 (a multiset, as routing.rs) of the lane's two best keys merged over the group's L
// lanes, and the group's rank among all groups (larger score first, ties to the lower index).
__device__ __forceinline__ u32 rf_group_key(u32 a1, u32 a2, int L, bool group_top2) {
    for (int off = 1; off < L; off <<= 1) {
        u32 b1 = __shfl_xor_sync(0xffffffffu, a1, off);
        u32 b2 = __shfl_xor_sync(0xffffffffu, a2, off);
        a2 = max(min(a1, b1), max(a2, b2));
        a1 = max(a1, b1);
    }
    return sort_key(group_top2 ? key_value(a1) + key_value(a2) : key_value(a1));
}
// Lanes per group and my group, n_group a power of two (no integer division).
__device__ __forceinline__ void rf_group_lanes(int n_group, int lane, int& L, int& my_group) {
    const int lg = __ffs(n_group) - 1;
    L = 32 >> lg;
    my_group = lane >> (5 - lg);
}
__device__ __forceinline__ int rf_group_rank(u32 gk, int n_group, int L, int my_group) {
    int rank = 0;
#pragma unroll 8
    for (int h = 0; h < n_group; h++) {
        u32 o = __shfl_sync(0xffffffffu, gk, h * L);
        rank += (o > gk || (o == gk && h < my_group)) ? 1 : 0;
    }
    return rank;
}

// The screened selection (see above): lane r < k_eff gets the r-th expert in `my_id`; returns
// whether every decision cleared the margin (the same on every lane).
template <int PER>
__device__ __forceinline__ bool rf_screen(const float (&x)[PER], const float (&b)[PER], bool has_bias,
                                          bool group_top2, int n_group, int topk_group, int k_eff,
                                          int lane, int& my_id) {
    constexpr u32 POS = PER <= 8 ? 7u : 15u;  // the position bits, POS - j (lower j: larger key)
    u32 key[PER];
    float vmax = 1.0f;  // NaN anywhere makes the margin NaN: no decision clears it
#pragma unroll
    for (int j = 0; j < PER; j++) {
        float sc = rf_fast_sigmoid(x[j]);
        float sel = has_bias ? sc + b[j] : sc;
        vmax = fabsf(sel) > vmax || sel != sel ? fabsf(sel) : vmax;
        key[j] = (sort_key(sel) & ~POS) | (POS - j);
    }
    // |v| as bits orders like the value (NaN above all).
    const float V = __uint_as_float(warp_umax(__float_as_uint(vmax)));
    const float err = RF_SIGMOID_ERR + (float)(POS + 1) * RF_ULP * V;
    // Keys are distinct within a lane, so a plain odd-even transposition sort (descending).
#pragma unroll
    for (int r = 0; r < PER; r++)
#pragma unroll
        for (int j = r & 1; j + 1 < PER; j += 2) {
            u32 ka = key[j], kb = key[j + 1];
            key[j] = max(ka, kb);
            key[j + 1] = min(ka, kb);
        }
    bool groups_apart = true;
    if (n_group > 1) {
        int L, my_group;
        rf_group_lanes(n_group, lane, L, my_group);
        const u32 gbits = (u32)n_group - 1;
        u32 gk = (rf_group_key(key[0], key[1], L, group_top2) & ~gbits) | (gbits - (u32)my_group);
        // Kept groups: topk_group rounds of the best remaining (group keys are distinct).
        bool kept = false;
        u32 weakest_kept = 0u;
        for (int r = 0; r < topk_group; r++) {
            weakest_kept = warp_umax(kept ? 0u : gk);
            kept = kept || gk == weakest_kept;
        }
        if (topk_group < n_group) {
            u32 best_dropped = warp_umax(kept ? 0u : gk);
            const float gerr = 2.0f * err + (float)(n_group + 2) * RF_ULP * 2.0f * V;
            groups_apart = rf_apart(key_value(weakest_kept), key_value(best_dropped), 3.0f * gerr);
        }
        if (!kept) {
#pragma unroll
            for (int j = 0; j < PER; j++) key[j] = 0u;
        }
    }
    // Top-k rounds: the warp's best head; the owner pops it. Lane r keeps the r-th key, lane
    // k_eff the next one, for the gap test.
    u32 my_key = 0u;
    for (int r = 0; r < k_eff; r++) {
        u32 mk = warp_umax(key[0]);
        int wl = __ffs(__ballot_sync(0xffffffffu, key[0] == mk)) - 1;
        if (lane == r) {
            my_id = wl * PER + (int)(POS - (mk & POS));
            my_key = mk;
        }
        if (lane == wl) {
#pragma unroll
            for (int j = 0; j + 1 < PER; j++) key[j] = key[j + 1];
            key[PER - 1] = 0u;
        }
    }
    u32 next = warp_umax(key[0]);
    if (lane == k_eff) my_key = next;
    u32 above = __shfl_up_sync(0xffffffffu, my_key, 1);
    bool apart = lane == 0 || lane > k_eff || my_key == 0u ||
                 rf_apart(key_value(above), key_value(my_key), 3.0f * err);
    return __all_sync(0xffffffffu, apart && groups_apart);
}

// The exact selection on routing.rs's scores: lane r < k_eff gets the r-th expert in `my_id`.
// SORT: the lane's keys sorted once (descending, equal keys in position order), so the lane's
// top-2 and each round's head are its first entries and a pop is a shift.
template <int PER, bool SORT>
__device__ __forceinline__ void rf_exact(const float (&x)[PER], const float (&b)[PER], bool has_bias,
                                         bool group_top2, int n_group, int topk_group, int k_eff,
                                         int lane, int& my_id) {
    u32 key[PER];
    int pos[PER];
#pragma unroll
    for (int j = 0; j < PER; j++) {
        float sc = sigmoid_score(x[j]);
        key[j] = sort_key(has_bias ? sc + b[j] : sc);
        pos[j] = j;
    }
    if (SORT) {
        // Odd-even transposition sort; swapping only on a strictly larger right key keeps it
        // stable.
#pragma unroll
        for (int r = 0; r < PER; r++)
#pragma unroll
            for (int j = r & 1; j + 1 < PER; j += 2) {
                u32 ka = key[j], kb = key[j + 1];
                int pa = pos[j], pb = pos[j + 1];
                bool swap = kb > ka;
                key[j] = max(ka, kb);
                key[j + 1] = min(ka, kb);
                pos[j] = swap ? pb : pa;
                pos[j + 1] = swap ? pa : pb;
            }
    }
    if (n_group > 1) {
        u32 a1 = 0u, a2 = 0u;
        if (SORT) {
            a1 = key[0];
            a2 = key[1];
        } else {
#pragma unroll
            for (int j = 0; j < PER; j++) {
                a2 = max(a2, min(a1, key[j]));
                a1 = max(a1, key[j]);
            }
        }
        int L, my_group;
        rf_group_lanes(n_group, lane, L, my_group);
        u32 gk = rf_group_key(a1, a2, L, group_top2);
        if (rf_group_rank(gk, n_group, L, my_group) >= topk_group) {
#pragma unroll
            for (int j = 0; j < PER; j++) key[j] = 0u;
        }
    }
    u32 hk;
    int hj;
    if (SORT) {
        hk = key[0];
        hj = pos[0];
    } else {
        rf_head<PER>(key, hk, hj);
    }
    for (int r = 0; r < k_eff; r++) {
        u32 mk = warp_umax(hk);
        int wl = __ffs(__ballot_sync(0xffffffffu, hk == mk)) - 1;
        int wid = __shfl_sync(0xffffffffu, lane * PER + hj, wl);
        if (lane == r) my_id = wid;
        if (lane == wl) {
            if (SORT) {
#pragma unroll
                for (int j = 0; j + 1 < PER; j++) {
                    key[j] = key[j + 1];
                    pos[j] = pos[j + 1];
                }
                key[PER - 1] = 0u;
                hk = key[0];
                hj = pos[0];
            } else {
#pragma unroll
                for (int j = 0; j < PER; j++)
                    if (j == hj) key[j] = 0u;
                rf_head<PER>(key, hk, hj);
            }
        }
    }
}

template <int PER, bool SORT, bool SCREEN>
__device__ __forceinline__ void router_lanes_body(const RouterFusedArgs& a) {
    const void* logits = a.logits;
    const bool logits_bf16 = a.logits_bf16, group_top2 = a.group_top2, norm = a.norm;
    const float *bias = a.bias, *gate = a.gate;
    const int T = a.t, E = a.e, n_group = a.n_group, topk_group = a.topk_group, k = a.k;
    const int k_eff = a.k_eff, S = a.s, spt = a.spt;
    const double routed_scale = a.routed_scale, shared_w = a.shared_w;
    u32* ids = a.ids;
    float* weights = a.weights;
    double* probs_out = a.probs;
    __shared__ float s_logit[RF_WARPS][32 * PER];
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    for (int t = blockIdx.x * RF_WARPS + warp; t < T; t += gridDim.x * RF_WARPS) {
        const u64 first = (u64)t * E + (u64)lane * PER;
        float x[PER], b[PER];
        if (logits_bf16) {
            const uint2* src = (const uint2*)((const bf16_t*)logits + first);
#pragma unroll
            for (int j = 0; j < PER / 4; j++) {
                uint2 v = src[j];
                x[4 * j] = __uint_as_float(v.x << 16);
                x[4 * j + 1] = __uint_as_float(v.x & 0xffff0000u);
                x[4 * j + 2] = __uint_as_float(v.y << 16);
                x[4 * j + 3] = __uint_as_float(v.y & 0xffff0000u);
            }
        } else {
            load_f32x4<PER>((const float*)logits + first, x);
        }
        if (bias != 0) {
            load_f32x4<PER>(bias + lane * PER, b);
        } else {
#pragma unroll
            for (int j = 0; j < PER; j++) b[j] = 0.f;
        }
#pragma unroll
        for (int j = 0; j < PER; j++) s_logit[warp][j * 32 + lane] = x[j];  // [position][lane]: no bank conflicts
        int my_id = 0;
        if (!SCREEN || !rf_screen<PER>(x, b, bias != 0, group_top2, n_group, topk_group, k_eff, lane, my_id))
            rf_exact<PER, SORT>(x, b, bias != 0, group_top2, n_group, topk_group, k_eff, lane, my_id);
        __syncwarp();
        float my_score = lane < k_eff ? sigmoid_score(s_logit[warp][(my_id % PER) * 32 + my_id / PER]) : 0.f;
        rf_store(my_id, my_score, t, E, k, k_eff, norm, routed_scale, S, shared_w, gate, ids,
                 weights, probs_out, spt, lane);
        __syncwarp();
    }
}

// Sorting pays for 8 keys a lane; for 12 the exact path's sort (keys and positions) costs more
// than the rescans it saves (run 11). router_screen_* screen first (router.rs says when that pays).
extern "C" __global__ void __launch_bounds__(RF_WARPS * 32) router_lanes_8(const RouterFusedArgs a) {
    router_lanes_body<8, true, false>(a);
}
extern "C" __global__ void __launch_bounds__(RF_WARPS * 32) router_lanes_12(const RouterFusedArgs a) {
    router_lanes_body<12, false, false>(a);
}
extern "C" __global__ void __launch_bounds__(RF_WARPS * 32) router_screen_8(const RouterFusedArgs a) {
    router_lanes_body<8, true, true>(a);
}
extern "C" __global__ void __launch_bounds__(RF_WARPS * 32) router_screen_12(const RouterFusedArgs a) {
    router_lanes_body<12, false, true>(a);
}

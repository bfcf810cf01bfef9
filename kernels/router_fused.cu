// The fused router: scores, bias, group scores, group top-k, expert top-k, weights and the shared
// slots in ONE kernel, one warp per token. Selection mirrors routing::route_token exactly.
// Limits (checked on the host): E <= 512, k + S <= 32.

#define RF_MAX_E 512
#define RF_PER_LANE 16
#define RF_WARPS 4

__device__ __forceinline__ float load_logit(const void* p, u64 i, int is_bf16) {
    return is_bf16 ? bf16_to_f32(((const bf16_t*)p)[i]) : ((const float*)p)[i];
}

// ids/weights: [T x spt] slots (k routed, then S shared); probs_out (nullable): [T x k] the
// renormalized probabilities in double (rsf not included), for `moescope route`.
extern "C" __global__ void __launch_bounds__(RF_WARPS * 32)
router_fused(const void* logits, int logits_bf16, const float* bias, int group_top2, int T, int E,
             int n_group, int topk_group, int k, int k_eff, int softmax, int norm,
             double routed_scale, int S, double shared_w, const float* gate, u32* ids,
             float* weights, double* probs_out, int spt) {
    __shared__ float s_sel[RF_WARPS][RF_MAX_E];
    __shared__ float s_gs[RF_WARPS][RF_MAX_E];
    __shared__ unsigned char s_kept[RF_WARPS][RF_MAX_E];
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    const int per = E / n_group;
    for (int t = blockIdx.x * RF_WARPS + warp; t < T; t += gridDim.x * RF_WARPS) {
        const u64 row = (u64)t * E;
        float x[RF_PER_LANE], score[RF_PER_LANE], sel[RF_PER_LANE];
#pragma unroll
        for (int i = 0; i < RF_PER_LANE; i++) {
            int e = lane + 32 * i;
            x[i] = e < E ? load_logit(logits, row + e, logits_bf16) : NEG_INF;
        }
        if (softmax) {
            float m = NEG_INF;
#pragma unroll
            for (int i = 0; i < RF_PER_LANE; i++) m = fmaxf(m, x[i]);
            m = warp_max_f(m);
            double s = 0.0;
#pragma unroll
            for (int i = 0; i < RF_PER_LANE; i++)
                if (lane + 32 * i < E) s += exp((double)x[i] - (double)m);
            s = warp_sum_d(s);
#pragma unroll
            for (int i = 0; i < RF_PER_LANE; i++) score[i] = (float)(exp((double)x[i] - (double)m) / s);
        } else {
#pragma unroll
            for (int i = 0; i < RF_PER_LANE; i++) score[i] = sigmoid_score(x[i]);
        }
#pragma unroll
        for (int i = 0; i < RF_PER_LANE; i++) {
            int e = lane + 32 * i;
            sel[i] = (bias != 0 && e < E) ? score[i] + bias[e] : score[i];
            if (e < E) s_sel[warp][e] = sel[i];
        }
        __syncwarp();
        if (n_group > 1) {
            for (int g = lane; g < n_group; g += 32) {
                const float* grp = &s_sel[warp][g * per];
                float r;
                if (group_top2) {
                    float first = NEG_INF, second = NEG_INF;
                    for (int j = 0; j < per; j++) {
                        float v = grp[j];
                        if (v > first) {
                            second = first;
                            first = v;
                        } else if (v > second) {
                            second = v;
                        }
                    }
                    r = first + second;
                } else {
                    r = NEG_INF;
                    for (int j = 0; j < per; j++) r = fmaxf(r, grp[j]);
                }
                s_gs[warp][g] = r;
                s_kept[warp][g] = 0;
            }
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
        u32 cand = 0;
#pragma unroll
        for (int i = 0; i < RF_PER_LANE; i++) {
            int e = lane + 32 * i;
            if (e < E && (n_group == 1 || s_kept[warp][e / per])) cand |= 1u << i;
        }
        float my_score = 0.f;
        int my_id = 0;
        for (int r = 0; r < k_eff; r++) {
            float bv = NEG_INF, bp = 0.f;
            int bi = 0x7fffffff;
#pragma unroll
            for (int i = 0; i < RF_PER_LANE; i++) {
                if ((cand >> i) & 1u) {
                    int e = lane + 32 * i;
                    if (sel_better(sel[i], e, bv, bi)) {
                        bv = sel[i];
                        bi = e;
                        bp = score[i];
                    }
                }
            }
            warp_best(bv, bi, bp);
            if ((bi & 31) == lane) cand &= ~(1u << (bi >> 5));
            if (lane == r) {
                my_id = bi;
                my_score = bp;
            }
        }
        // Probabilities: the chosen experts' unbiased scores, summed in selection order in double.
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
        __syncwarp();
    }
}

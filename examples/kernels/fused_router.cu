// A correct fused router against the moescope ABI (include/moescope_router.h): scores, bias, group
// scores, kept groups, expert top-k, weights and the shared slots in one kernel, one warp per
// token. Selection follows design §1 exactly: sigmoid in double rounded to float, ties toward the
// lower group and then the lower expert, NaN never chosen. `moescope check --kernel` passes it on
// every preset.
//
//   moescope check --kernel examples/kernels/fused_router.cu --all
//   moescope run --kernel examples/kernels/fused_router.cu
#include "moescope_router.h"

#define FR_WARPS 4
#define FR_MAX_E 512
#define FR_MAX_SLOTS 32
#define FR_NEG_INF __int_as_float(0xff800000)

MOESCOPE_DECLARE_ROUTER(MOESCOPE_APPENDS_SHARED | MOESCOPE_RSF_IN_ROUTER, FR_WARPS * 32, FR_WARPS);

__device__ __forceinline__ float fr_key(float v) { return v != v ? FR_NEG_INF : v; }

// Warp-wide best (value, index): larger value first, the lower index among equals.
__device__ __forceinline__ void fr_warp_best(float& v, int& i) {
#pragma unroll
    for (int off = 16; off > 0; off >>= 1) {
        float ov = __shfl_xor_sync(0xffffffffu, v, off);
        int oi = __shfl_xor_sync(0xffffffffu, i, off);
        if (ov > v || (ov == v && oi < i)) {
            v = ov;
            i = oi;
        }
    }
}

extern "C" __global__ void __launch_bounds__(FR_WARPS * 32) moescope_router(const MoescopeRouterArgs a) {
    __shared__ float s_score[FR_WARPS][FR_MAX_E];
    __shared__ float s_sel[FR_WARPS][FR_MAX_E];
    __shared__ float s_group[FR_WARPS][FR_MAX_E];
    __shared__ int s_chosen[FR_WARPS][FR_MAX_SLOTS];
    __shared__ unsigned char s_open[FR_WARPS][FR_MAX_E];  // still selectable
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    const int64_t t = (int64_t)blockIdx.x * FR_WARPS + warp;
    if (t >= a.tokens) return;  // whole warps leave together
    const int E = a.n_experts, G = a.n_group, per = E / G;
    const int64_t row = t * E;
    float* score = s_score[warp];
    float* sel = s_sel[warp];

    // 1. scores
    if (a.scoring == MOESCOPE_SCORING_SOFTMAX) {
        float m = FR_NEG_INF;
        for (int e = lane; e < E; e += 32) m = fmaxf(m, moescope_logit(a, row + e));
#pragma unroll
        for (int off = 16; off > 0; off >>= 1) m = fmaxf(m, __shfl_xor_sync(0xffffffffu, m, off));
        double sum = 0.0;
        for (int e = lane; e < E; e += 32) sum += exp((double)moescope_logit(a, row + e) - (double)m);
#pragma unroll
        for (int off = 16; off > 0; off >>= 1) sum += __shfl_xor_sync(0xffffffffu, sum, off);
        for (int e = lane; e < E; e += 32)
            score[e] = (float)(exp((double)moescope_logit(a, row + e) - (double)m) / sum);
    } else {
        for (int e = lane; e < E; e += 32)
            score[e] = (float)(1.0 / (1.0 + exp(-(double)moescope_logit(a, row + e))));
    }
    // 2. selection values
    for (int e = lane; e < E; e += 32) sel[e] = a.bias != 0 ? score[e] + a.bias[e] : score[e];
    __syncwarp();

    // 3. group scores (top-2 sum as a multiset, or the max), 4. kept groups: only their experts
    // stay selectable.
    unsigned char* open = s_open[warp];
    for (int e = lane; e < E; e += 32) open[e] = 1;
    if (G > 1) {
        for (int g = lane; g < G; g += 32) {
            float first = FR_NEG_INF, second = FR_NEG_INF;
            for (int j = 0; j < per; j++) {
                float v = fr_key(sel[g * per + j]);
                if (v > first) {
                    second = first;
                    first = v;
                } else if (v > second) {
                    second = v;
                }
            }
            s_group[warp][g] = a.group_score == MOESCOPE_GROUP_TOP2_SUM ? first + second : first;
        }
        __syncwarp();
        unsigned long long kept_lo = 0, kept_hi = 0;  // up to 128 groups
        for (int r = 0; r < a.topk_group; r++) {
            float v = FR_NEG_INF;
            int i = 0x7fffffff;
            for (int g = lane; g < G; g += 32) {
                bool taken = g < 64 ? (kept_lo >> g) & 1ull : (kept_hi >> (g - 64)) & 1ull;
                float x = fr_key(s_group[warp][g]);
                if (!taken && (x > v || (x == v && g < i))) {
                    v = x;
                    i = g;
                }
            }
            fr_warp_best(v, i);
            if (i < 64) kept_lo |= 1ull << i;
            else kept_hi |= 1ull << (i - 64);
        }
        for (int e = lane; e < E; e += 32) {
            int g = e / per;
            bool kept = g < 64 ? (kept_lo >> g) & 1ull : (kept_hi >> (g - 64)) & 1ull;
            if (!kept) open[e] = 0;
        }
        __syncwarp();
    }

    // 5. expert top-k: k rounds of a warp-wide best; the winner is closed. A lane with no open
    // expert offers index 0x7fffffff, which loses every comparison with a real one.
    const int k = a.top_k;
    for (int r = 0; r < k; r++) {
        float v = FR_NEG_INF;
        int i = 0x7fffffff;
        for (int e = lane; e < E; e += 32) {
            float x = fr_key(sel[e]);
            if (open[e] && (x > v || (x == v && e < i))) {
                v = x;
                i = e;
            }
        }
        fr_warp_best(v, i);
        if (lane == 0) {
            s_chosen[warp][r] = i < E ? i : 0;  // top_k <= experts of the kept groups (validated)
            if (i < E) open[i] = 0;
        }
        __syncwarp();
    }

    // 6. weights: unbiased scores, renormalized in double in selection order, rsf inside.
    if (lane == 0) {
        double sum = 0.0;
        for (int r = 0; r < k; r++) sum += (double)score[s_chosen[warp][r]];
        const int64_t out = t * a.out_stride;
        for (int r = 0; r < k; r++) {
            int id = s_chosen[warp][r];
            double p = (double)score[id];
            if (a.renormalize && sum > 0.0) p /= sum;
            a.ids[out + r] = id;
            a.weights[out + r] = (float)(a.routed_scaling_factor * p);
        }
        // 7. the shared slots: ids E..E+S-1, weight 1 (x the shared gate).
        const float gate = a.shared_gate != 0 ? a.shared_gate[t] : 1.0f;
        for (int j = 0; j < a.n_shared; j++) {
            a.ids[out + k + j] = E + j;
            a.weights[out + k + j] = gate;
        }
    }
}

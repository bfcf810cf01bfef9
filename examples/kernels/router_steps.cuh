// The routing steps of design §1, one thread per token, for the small bug examples: each example
// includes this file and gets one thing wrong where it writes its outputs (or, for the group tie
// example, where it scores a group). Plain and slow on purpose; fused_router.cu is the fast one.
#ifndef ROUTER_STEPS_CUH
#define ROUTER_STEPS_CUH
#include "moescope_router.h"

#define RS_MAX_E 512
#define RS_MAX_K 32
#define RS_NEG_INF __int_as_float(0xff800000)

// Selection order: larger first, NaN as the smallest; callers break ties toward the lower index.
__device__ __forceinline__ float rs_key(float v) { return v != v ? RS_NEG_INF : v; }

// One token's choice: expert ids best first and their unbiased scores.
struct RsChoice {
    int n;
    int ids[RS_MAX_K];
    float score[RS_MAX_K];
};

// How a group is scored. `drop_equal_max` is the tie bug: every value equal to the group maximum
// is dropped before the second is taken, so tied top experts count once.
__device__ inline float rs_group_score(const float* sel, int per, int top2, bool drop_equal_max) {
    float first = RS_NEG_INF;
    for (int j = 0; j < per; j++) first = fmaxf(first, rs_key(sel[j]));
    if (!top2) return first;
    float second = RS_NEG_INF;
    bool first_seen = false;
    for (int j = 0; j < per; j++) {
        float v = rs_key(sel[j]);
        if (v == first && (drop_equal_max || !first_seen)) {
            first_seen = true;
            continue;
        }
        second = fmaxf(second, v);
    }
    return first + second;
}

// Routes token t to k experts (k may exceed top_k: the shared-dropped example asks for K + S).
__device__ inline void rs_route(const MoescopeRouterArgs& a, int64_t t, int k,
                                bool group_tie_bug, RsChoice& out) {
    const int E = a.n_experts;
    float score[RS_MAX_E], sel[RS_MAX_E];
    const int64_t row = t * E;
    if (a.scoring == MOESCOPE_SCORING_SOFTMAX) {
        float m = RS_NEG_INF;
        for (int e = 0; e < E; e++) m = fmaxf(m, moescope_logit(a, row + e));
        double sum = 0.0;
        for (int e = 0; e < E; e++) sum += exp((double)moescope_logit(a, row + e) - (double)m);
        for (int e = 0; e < E; e++)
            score[e] = (float)(exp((double)moescope_logit(a, row + e) - (double)m) / sum);
    } else {
        for (int e = 0; e < E; e++)
            score[e] = (float)(1.0 / (1.0 + exp(-(double)moescope_logit(a, row + e))));
    }
    for (int e = 0; e < E; e++) sel[e] = a.bias != 0 ? score[e] + a.bias[e] : score[e];

    bool kept[RS_MAX_E];
    const int per = E / a.n_group;
    for (int e = 0; e < E; e++) kept[e] = a.n_group <= 1;
    if (a.n_group > 1) {
        float gs[RS_MAX_E];
        bool taken[RS_MAX_E];
        for (int g = 0; g < a.n_group; g++) {
            gs[g] = rs_group_score(sel + g * per, per, a.group_score == MOESCOPE_GROUP_TOP2_SUM,
                                   group_tie_bug);
            taken[g] = false;
        }
        for (int r = 0; r < a.topk_group; r++) {
            int best = -1;
            for (int g = 0; g < a.n_group; g++)
                if (!taken[g] && (best < 0 || rs_key(gs[g]) > rs_key(gs[best]))) best = g;
            taken[best] = true;
            for (int j = 0; j < per; j++) kept[best * per + j] = true;
        }
    }
    out.n = 0;
    for (int r = 0; r < k && r < RS_MAX_K; r++) {
        int best = -1;
        for (int e = 0; e < E; e++)
            if (kept[e] && (best < 0 || rs_key(sel[e]) > rs_key(sel[best]))) best = e;
        if (best < 0) break;
        kept[best] = false;
        out.ids[out.n] = best;
        out.score[out.n] = score[best];
        out.n++;
    }
}

// Probability of choice i: its score, over the chosen scores' sum (double) if renormalizing.
__device__ inline double rs_prob(const MoescopeRouterArgs& a, const RsChoice& c, int i) {
    if (!a.renormalize) return (double)c.score[i];
    double sum = 0.0;
    for (int j = 0; j < c.n; j++) sum += (double)c.score[j];
    return sum > 0.0 ? (double)c.score[i] / sum : (double)c.score[i];
}

__device__ inline float rs_gate(const MoescopeRouterArgs& a, int64_t t) {
    return a.shared_gate != 0 ? a.shared_gate[t] : 1.0f;
}

// One thread per token: the token of this thread, or -1.
__device__ inline int64_t rs_token(const MoescopeRouterArgs& a) {
    int64_t t = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
    return t < a.tokens ? t : -1;
}

#endif

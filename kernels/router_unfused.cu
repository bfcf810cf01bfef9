// The unfused router: one kernel per step of the PyTorch sequence, as cpu::unfused_router runs
// them (scores, add bias, group scores, group top-k, mask, expert top-k, gather, renormalize,
// scale). Each writes its intermediate to device memory, as the op-by-op router does.
// Argument structs and launch geometry: src/engine/cuda/kernels/registry.rs.

#define RU_PER_LANE 16

// Sigmoid: one thread per element. Softmax: one warp per token (launch T warps).
extern "C" __global__ void router_scores(const RouterScoresArgs a) {
    const void* logits = a.logits;
    const bool logits_bf16 = a.logits_bf16, softmax = a.softmax;
    float* scores = a.scores;
    const int T = a.t, E = a.e;
    if (!softmax) {
        u64 n = (u64)T * E;
        u64 stride = (u64)gridDim.x * blockDim.x;
        for (u64 i = (u64)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += stride) {
            float x = logits_bf16 ? bf16_to_f32(((const bf16_t*)logits)[i]) : ((const float*)logits)[i];
            scores[i] = sigmoid_score(x);
        }
        return;
    }
    int t = (int)(((u64)blockIdx.x * blockDim.x + threadIdx.x) >> 5);
    int lane = threadIdx.x & 31;
    if (t >= T) return;
    u64 row = (u64)t * E;
    float m = NEG_INF;
    for (int e = lane; e < E; e += 32) {
        float x = logits_bf16 ? bf16_to_f32(((const bf16_t*)logits)[row + e]) : ((const float*)logits)[row + e];
        m = fmaxf(m, x);
    }
    m = warp_max_f(m);
    double s = 0.0;
    for (int e = lane; e < E; e += 32) {
        float x = logits_bf16 ? bf16_to_f32(((const bf16_t*)logits)[row + e]) : ((const float*)logits)[row + e];
        s += exp((double)x - (double)m);
    }
    s = warp_sum_d(s);
    for (int e = lane; e < E; e += 32) {
        float x = logits_bf16 ? bf16_to_f32(((const bf16_t*)logits)[row + e]) : ((const float*)logits)[row + e];
        scores[row + e] = (float)(exp((double)x - (double)m) / s);
    }
}

// sel = scores + bias (a copy where the model has no bias).
extern "C" __global__ void router_add_bias(const RouterAddBiasArgs a) {
    const float *scores = a.scores, *bias = a.bias;
    float* sel = a.sel;
    const int T = a.t, E = a.e;
    u64 n = (u64)T * E;
    u64 stride = (u64)gridDim.x * blockDim.x;
    for (u64 i = (u64)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += stride)
        sel[i] = bias != 0 ? scores[i] + bias[i % E] : scores[i];
}

// One thread per (token, group): top-2 sum with a bias, max without.
extern "C" __global__ void router_group_scores(const RouterGroupScoresArgs a) {
    const float* sel = a.sel;
    float* gs = a.gs;
    const int T = a.t, E = a.e, G = a.g;
    u64 i = (u64)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= (u64)T * G) return;
    int per = E / G;
    u64 t = i / G, g = i % G;
    gs[i] = group_score(sel + t * E + g * per, per, a.top2);
}

// One thread per token: the best topk_group groups, as flags [T x G].
extern "C" __global__ void router_group_topk(const RouterGroupTopkArgs a) {
    const float* gs = a.gs;
    unsigned char* kept = a.kept;
    const int T = a.t, G = a.g, topk_group = a.topk_group;
    int t = blockIdx.x * blockDim.x + threadIdx.x;
    if (t >= T) return;
    const float* row = gs + (u64)t * G;
    unsigned char* flags = kept + (u64)t * G;
    for (int g = 0; g < G; g++) flags[g] = 0;
    for (int r = 0; r < topk_group; r++) {
        float bv = NEG_INF;
        int bi = 0x7fffffff;
        for (int g = 0; g < G; g++)
            if (!flags[g] && sel_better(row[g], g, bv, bi)) {
                bv = row[g];
                bi = g;
            }
        if (bi < G) flags[bi] = 1;
    }
}

// masked = sel where the expert's group is kept, else -inf.
extern "C" __global__ void router_mask(const RouterMaskArgs a) {
    const float* sel = a.sel;
    const unsigned char* kept = a.kept;
    float* masked = a.masked;
    const int T = a.t, E = a.e, G = a.g;
    u64 n = (u64)T * E;
    int per = E / G;
    u64 stride = (u64)gridDim.x * blockDim.x;
    for (u64 i = (u64)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += stride) {
        u64 t = i / E;
        int e = (int)(i % E);
        masked[i] = kept[t * G + e / per] ? sel[i] : NEG_INF;
    }
}

// One warp per token: top-k of masked over all E experts, best first, into ids [T x spt].
extern "C" __global__ void router_expert_topk(const RouterExpertTopkArgs a) {
    const float* masked = a.masked;
    u32* ids = a.ids;
    const int T = a.t, E = a.e, k = a.k, spt = a.spt;
    int t = (int)(((u64)blockIdx.x * blockDim.x + threadIdx.x) >> 5);
    int lane = threadIdx.x & 31;
    if (t >= T) return;
    const float* row = masked + (u64)t * E;
    float v[RU_PER_LANE];
    u32 cand = 0;
#pragma unroll
    for (int i = 0; i < RU_PER_LANE; i++) {
        int e = lane + 32 * i;
        v[i] = e < E ? row[e] : NEG_INF;
        if (e < E) cand |= 1u << i;
    }
    for (int r = 0; r < k; r++) {
        float bv = NEG_INF, dummy = 0.f;
        int bi = 0x7fffffff;
#pragma unroll
        for (int i = 0; i < RU_PER_LANE; i++)
            if (((cand >> i) & 1u) && sel_better(v[i], lane + 32 * i, bv, bi)) {
                bv = v[i];
                bi = lane + 32 * i;
            }
        warp_best(bv, bi, dummy);
        if ((bi & 31) == lane) cand &= ~(1u << (bi >> 5));
        if (lane == 0) ids[(u64)t * spt + r] = (u32)bi;
    }
}

// One thread per (token, slot < k): the chosen experts' unbiased scores, in double.
extern "C" __global__ void router_gather(const RouterGatherArgs a) {
    const float* scores = a.scores;
    const u32* ids = a.ids;
    double* w = a.w;
    const int T = a.t, E = a.e, k = a.k, spt = a.spt;
    u64 i = (u64)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= (u64)T * k) return;
    u64 t = i / k, s = i % k;
    w[i] = (double)scores[t * E + ids[t * spt + s]];
}

// One thread per token: renormalize to sum 1 (sum in selection order, double).
extern "C" __global__ void router_renormalize(const RouterRenormalizeArgs a) {
    double* w = a.w;
    const int T = a.t, k = a.k;
    const bool norm = a.norm;
    int t = blockIdx.x * blockDim.x + threadIdx.x;
    if (t >= T || !norm) return;
    double* row = w + (u64)t * k;
    double sum = 0.0;
    for (int i = 0; i < k; i++) sum += row[i];
    if (sum > 0.0)
        for (int i = 0; i < k; i++) row[i] = row[i] / sum;
}

// One thread per (token, slot): routed slots get (float)(w * routed_scale); the S shared slots
// after them get id E + j and the contract's shared weight times the gate.
extern "C" __global__ void router_scale(const RouterScaleArgs a) {
    const double* w = a.w;
    const int T = a.t, E = a.e, k = a.k, S = a.s, spt = a.spt;
    const double routed_scale = a.routed_scale, shared_w = a.shared_w;
    const float* gate = a.gate;
    u32* ids = a.ids;
    float* weights = a.weights;
    u64 i = (u64)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= (u64)T * spt) return;
    u64 t = i / spt;
    int s = (int)(i % spt);
    if (s < k) {
        weights[i] = (float)(w[t * k + s] * routed_scale);
    } else {
        float g = gate != 0 ? gate[t] : 1.0f;
        ids[i] = (u32)(E + s - k);
        weights[i] = (float)(shared_w * (double)g);
    }
}

// Shared helpers, prepended to every kernel file before NVRTC compiles it. Self-contained: NVRTC
// from pip ships no CUDA headers, so bf16 is `unsigned short` with explicit round-to-nearest-even
// and the hash and selection arithmetic mirror src/engine (weights/synthetic.rs, routing.rs).

typedef unsigned short bf16_t;
typedef unsigned int u32;
typedef unsigned long long u64;
typedef long long i64;

#define NEG_INF __int_as_float(0xff800000)

__device__ __forceinline__ float bf16_to_f32(bf16_t v) { return __uint_as_float(((u32)v) << 16); }

// Round to nearest even, NaN stays a quiet NaN (as half::bf16::from_f32).
__device__ __forceinline__ bf16_t f32_to_bf16(float x) {
    u32 b = __float_as_uint(x);
    if ((b & 0x7fffffffu) > 0x7f800000u) return (bf16_t)((b >> 16) | 0x0040u);
    b += 0x7fffu + ((b >> 16) & 1u);
    return (bf16_t)(b >> 16);
}

// SplitMix64 finalizer (synthetic::mix64).
__device__ __forceinline__ u64 mix64(u64 z) {
    z += 0x9E3779B97F4A7C15ull;
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

// Uniform in [-1, 1) (synthetic::uniform); explicit roundings so no FMA contraction changes it.
__device__ __forceinline__ float hash_uniform(u64 seed, u64 tensor, u64 index) {
    u64 h = mix64(seed ^ mix64(tensor ^ mix64(index)));
    return __fsub_rn(__fmul_rn((float)(h >> 40), 1.0f / 8388608.0f), 1.0f);
}

// Irwin-Hall normal (synthetic::normal): left-to-right sum of four uniforms, then the scale.
__device__ __forceinline__ float hash_normal(u64 seed, u64 tensor, u64 index) {
    u64 i = index * 4ull;
    float s = hash_uniform(seed, tensor, i);
    s = __fadd_rn(s, hash_uniform(seed, tensor, i + 1));
    s = __fadd_rn(s, hash_uniform(seed, tensor, i + 2));
    s = __fadd_rn(s, hash_uniform(seed, tensor, i + 3));
    return __fmul_rn(s, 0.8660254f);
}

// Selection order of routing.rs: larger first, NaN as the smallest, ties to the lower index.
__device__ __forceinline__ float sel_key(float v) { return v != v ? NEG_INF : v; }
__device__ __forceinline__ bool sel_better(float a, int ia, float b, int ib) {
    float ka = sel_key(a), kb = sel_key(b);
    return ka > kb || (ka == kb && ia < ib);
}

// routing::scores_into, sigmoid: computed in double, rounded to float.
__device__ __forceinline__ float sigmoid_score(float x) {
    return (float)(1.0 / (1.0 + exp(-(double)x)));
}

// Warp-wide argmax by sel_better; every lane ends with the winner (value, index, payload).
__device__ __forceinline__ void warp_best(float& v, int& idx, float& payload) {
#pragma unroll
    for (int off = 16; off > 0; off >>= 1) {
        float ov = __shfl_xor_sync(0xffffffffu, v, off);
        int oi = __shfl_xor_sync(0xffffffffu, idx, off);
        float op = __shfl_xor_sync(0xffffffffu, payload, off);
        if (sel_better(ov, oi, v, idx)) {
            v = ov;
            idx = oi;
            payload = op;
        }
    }
}

__device__ __forceinline__ double warp_sum_d(double v) {
#pragma unroll
    for (int off = 16; off > 0; off >>= 1) v += __shfl_xor_sync(0xffffffffu, v, off);
    return v;
}

__device__ __forceinline__ float warp_max_f(float v) {
#pragma unroll
    for (int off = 16; off > 0; off >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, off));
    return v;
}

__device__ __forceinline__ float warp_sum_f(float v) {
#pragma unroll
    for (int off = 16; off > 0; off >>= 1) v += __shfl_xor_sync(0xffffffffu, v, off);
    return v;
}

// Order-preserving u32 key of a selection value: NaN sorts as -inf, -0 as +0 (they compare equal
// in routing.rs), larger value -> larger key. Key 0 is below every value's key ("none").
__device__ __forceinline__ u32 sort_key(float v) {
    if (v != v) v = NEG_INF;
    if (v == 0.0f) v = 0.0f;
    u32 b = __float_as_uint(v);
    return (b & 0x80000000u) ? ~b : (b | 0x80000000u);
}
__device__ __forceinline__ float key_value(u32 k) {
    return __uint_as_float((k & 0x80000000u) ? (k & 0x7fffffffu) : ~k);
}

// Warp-wide max / min of a u32 in one instruction (redux.sync, sm_80+).
__device__ __forceinline__ u32 warp_umax(u32 v) {
    u32 r;
    asm volatile("redux.sync.max.u32 %0, %1, 0xffffffff;" : "=r"(r) : "r"(v));
    return r;
}
__device__ __forceinline__ u32 warp_umin(u32 v) {
    u32 r;
    asm volatile("redux.sync.min.u32 %0, %1, 0xffffffff;" : "=r"(r) : "r"(v));
    return r;
}

// Score of one group of `per` selection values (routing::group_scores_into): the sum of the top
// two with a correction bias (`top2`), the maximum without.
__device__ __forceinline__ float group_score(const float* grp, int per, int top2) {
    if (!top2) {
        float r = NEG_INF;
        for (int j = 0; j < per; j++) r = fmaxf(r, grp[j]);
        return r;
    }
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
    return first + second;
}

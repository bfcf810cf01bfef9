// FP8 experts (DeepSeek-V3's format): activations quantized per row and group of 128 along K
// (bf16 input, or SiLU*mul of the up projection's f32 output), and a grouped GEMM on e4m3 tensor
// cores with fp32 accumulation (or, on Hopper's wgmma, fp32 sums of the tensor cores' K-block
// sums: registry.rs Fp8Sum), one weight scale per 128x128 block and one activation scale per row and 128-column group, applied per K block;
// per-group row offsets read from device memory.
// The quantizers compute the bits of src/engine/weights/fp8.rs: s = amax / 448 (1 for an
// all-zero group), q = e4m3_rn_satfinite(x / s).

#define F8_BK 128 // values per scale group (and per 128x128 weight block)

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

// --- grouped GEMM (kernels/grouped_gemm.cuh, with the e4m3 MMA and block scales) -------------

// 16-row tiles: decode and small batches (each warp 16 x 16 of the 16 x 128 tile).
extern "C" __global__ void __launch_bounds__(256, 2) grouped_gemm_fp8_m16(const Fp8GemmArgs a) {
    grouped_gemm_tiles<E4m3Mma, 1, 1, 2>(a);
}

// 32-row tiles: groups of a few dozen rows (warps 2 x 4, each 16 x 32).
extern "C" __global__ void __launch_bounds__(256, 2) grouped_gemm_fp8_m32(const Fp8GemmArgs a) {
    grouped_gemm_tiles<E4m3Mma, 2, 1, 4>(a);
}

// 64-row tiles: larger batches (warps 2 x 4, each 32 x 32), fp32 sums (registry.rs Fp8Sum).
extern "C" __global__ void __launch_bounds__(256, 2) grouped_gemm_fp8_m64(const Fp8GemmArgs a) {
    grouped_gemm_tiles<E4m3Mma, 2, 2, 4>(a);
}

// 128-row tiles: prefill-sized groups (warps 2 x 4, each 64 x 32), one block per SM.
extern "C" __global__ void __launch_bounds__(256, 1) grouped_gemm_fp8_m128(const Fp8GemmArgs a) {
    grouped_gemm_tiles<E4m3Mma, 2, 4, 4>(a);
}

// The same tiles summed by the tensor cores (Fp8Sum::TensorCore): on sm_90a two warpgroups on
// wgmma (64 x 64 each for 64-row tiles, 64 x 128 for 128-row tiles), each K block promoted to
// fp32 (grouped_gemm_wgmma); elsewhere the mma.sync loop above.
extern "C" __global__ void __launch_bounds__(256, 2) grouped_gemm_fp8_tc_m64(const Fp8GemmArgs a) {
#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
    grouped_gemm_wgmma<E4m3Mma, 64>(a);
#else
    grouped_gemm_tiles<E4m3Mma, 2, 2, 4>(a);
#endif
}

extern "C" __global__ void __launch_bounds__(256, 1) grouped_gemm_fp8_tc_m128(const Fp8GemmArgs a) {
#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
    grouped_gemm_wgmma<E4m3Mma, 128>(a);
#else
    grouped_gemm_tiles<E4m3Mma, 2, 4, 4>(a);
#endif
}

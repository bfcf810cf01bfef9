/* moescope router kernel ABI, version 1 (docs/kernel-abi.md).
 *
 * A router kernel reads router logits [T, E] and writes, per token, K + S slots: the ids of the
 * K routed experts it chose and of the S shared slots (numbered E .. E+S-1), and the weight each
 * slot's expert output is multiplied by. moescope's align, grouped GEMM and combine consume those
 * slots unchanged, so what the kernel writes is what the layer computes.
 *
 * Two ways in:
 *   - a .cu file compiled by NVRTC: it includes this header, defines
 *       extern "C" __global__ void moescope_router(const MoescopeRouterArgs a)
 *     and declares itself with MOESCOPE_DECLARE_ROUTER(conventions, threads, tokens_per_block).
 *     The config is also passed as macros (MOESCOPE_E, MOESCOPE_TOP_K, ...; see below).
 *   - a shared library built with nvcc exporting
 *       const MoescopeRouterInfo* moescope_router_get_info(void);
 *       int moescope_router_launch(const MoescopeRouterArgs* args, void* stream);
 *     `stream` is a cudaStream_t (CUstream) of moescope's context (the device's primary context);
 *     the launcher returns 0, or a cudaError_t / nonzero code of its own.
 *
 * This header is plain C for the host and self-contained for NVRTC (no system headers there).
 */
#ifndef MOESCOPE_ROUTER_H
#define MOESCOPE_ROUTER_H

#if defined(__CUDACC_RTC__)
typedef unsigned int uint32_t;
typedef int int32_t;
typedef long long int64_t;
#else
#include <stdint.h>
#endif

#define MOESCOPE_ROUTER_ABI_VERSION 1u

/* logits_dtype */
#define MOESCOPE_DTYPE_F32 0
#define MOESCOPE_DTYPE_BF16 1 /* raw bf16 bits, uint16 per element */

/* scoring */
#define MOESCOPE_SCORING_SIGMOID 0
#define MOESCOPE_SCORING_SOFTMAX 1

/* group_score: how a group of experts is scored before the best topk_group groups are kept */
#define MOESCOPE_GROUP_MAX 0      /* the group's largest selection value (models without bias) */
#define MOESCOPE_GROUP_TOP2_SUM 1 /* sum of its two largest (with a correction bias, noaux_tc) */

/* conventions, a bit set the kernel declares */
/* The kernel writes the S shared slots itself (columns K .. K+S-1: id E+j, weight below). Without
 * it the kernel writes columns 0 .. K-1 only and moescope appends the shared slots. */
#define MOESCOPE_APPENDS_SHARED 1u
/* The routed weights include the routed scaling factor and the shared slot carries 1 (x gate);
 * the layer output is not scaled afterwards. Without it the routed weights are the (renormalized)
 * probabilities, the shared slot carries 1/rsf (x gate) and moescope multiplies the summed
 * output by rsf. */
#define MOESCOPE_RSF_IN_ROUTER 2u
#define MOESCOPE_KNOWN_CONVENTIONS (MOESCOPE_APPENDS_SHARED | MOESCOPE_RSF_IN_ROUTER)

/* Everything one launch needs. Pointers are device addresses. 104 bytes, no padding. */
typedef struct MoescopeRouterArgs {
    uint32_t abi_version; /* MOESCOPE_ROUTER_ABI_VERSION */
    uint32_t struct_size; /* sizeof(MoescopeRouterArgs) */
    const void* logits;   /* [tokens, n_experts] row-major, logits_dtype */
    const float* bias;    /* [n_experts] e_score_correction_bias, or NULL */
    const float* shared_gate; /* [tokens] gate on the shared experts (Qwen3-Next), or NULL = 1 */
    int32_t* ids;         /* [tokens, out_stride] */
    float* weights;       /* [tokens, out_stride] */
    int64_t tokens;
    int32_t logits_dtype;
    int32_t n_experts;    /* E */
    int32_t n_group;      /* 1 = ungrouped */
    int32_t topk_group;
    int32_t top_k;        /* K */
    int32_t n_shared;     /* S */
    int32_t out_stride;   /* K + S: elements between two tokens' rows of ids and weights */
    int32_t scoring;
    int32_t renormalize;  /* norm_topk_prob */
    int32_t group_score;
    double routed_scaling_factor;
} MoescopeRouterArgs;

/* What a kernel declares about itself. */
typedef struct MoescopeRouterInfo {
    uint32_t abi_version; /* MOESCOPE_ROUTER_ABI_VERSION the kernel was written against */
    uint32_t conventions; /* MOESCOPE_APPENDS_SHARED | MOESCOPE_RSF_IN_ROUTER */
    uint32_t threads_per_block; /* .cu: block size of the launch (ignored for a .so) */
    uint32_t tokens_per_block;  /* .cu: grid = ceil(tokens / tokens_per_block) (ignored for a .so) */
} MoescopeRouterInfo;

#if defined(__CUDACC__)
/* In a .cu: the kernel's declaration, read by moescope after NVRTC compiled it. */
#define MOESCOPE_DECLARE_ROUTER(conventions, threads_per_block, tokens_per_block)             \
    extern "C" __device__ const MoescopeRouterInfo moescope_router_info = {                   \
        MOESCOPE_ROUTER_ABI_VERSION, (conventions), (threads_per_block), (tokens_per_block)}

/* Bits of a bf16 logit to float. */
__device__ __forceinline__ float moescope_bf16_to_f32(unsigned short v) {
    return __uint_as_float(((unsigned int)v) << 16);
}
/* Logit i of the row-major [tokens, n_experts] input, either dtype. */
__device__ __forceinline__ float moescope_logit(const MoescopeRouterArgs& a, int64_t i) {
    return a.logits_dtype == MOESCOPE_DTYPE_BF16
               ? moescope_bf16_to_f32(((const unsigned short*)a.logits)[i])
               : ((const float*)a.logits)[i];
}
#endif

/* Config macros moescope passes to NVRTC for a .cu (the same values as in MoescopeRouterArgs):
 * MOESCOPE_E, MOESCOPE_N_GROUP, MOESCOPE_TOPK_GROUP, MOESCOPE_TOP_K, MOESCOPE_N_SHARED,
 * MOESCOPE_SCORING, MOESCOPE_RENORMALIZE, MOESCOPE_GROUP_SCORE, MOESCOPE_HAS_BIAS,
 * MOESCOPE_LOGITS_DTYPE, MOESCOPE_RSF (a double literal). */

#endif /* MOESCOPE_ROUTER_H */

// Bug: the routed scaling factor is applied twice: inside the router weights, while the kernel
// declares rsf on the output (vLLM #24119, #24132, #45037: DeepSeek-R1 gsm8k 0.66 instead of 0.95).
// `check` names it: scaling, routed weight sum rsf^2.
// Built on router_steps.cuh (a correct one-thread-per-token router); the bug is in the routed weights.
#include "router_steps.cuh"

MOESCOPE_DECLARE_ROUTER(MOESCOPE_APPENDS_SHARED, 128, 128);

extern "C" __global__ void moescope_router(const MoescopeRouterArgs a) {
    const int64_t t = rs_token(a);
    if (t < 0) return;
    RsChoice c;
    rs_route(a, t, a.top_k, false, c);
    const int64_t row = t * a.out_stride;
    for (int i = 0; i < c.n; i++) {
        a.ids[row + i] = c.ids[i];
        a.weights[row + i] = (float)(a.routed_scaling_factor * rs_prob(a, c, i));  // BUG: rsf again
    }
    for (int j = 0; j < a.n_shared; j++) {
        a.ids[row + a.top_k + j] = a.n_experts + j;
        a.weights[row + a.top_k + j] = (float)(rs_gate(a, t) / a.routed_scaling_factor);
    }
}

// Bug: the kernel declares rsf inside the router weights but its scaling factor is hard-coded
// to 1.0, so the routed experts are weighted 1/rsf too little (reported against sglang and
// FlashInfer in 2026). `check` names it: scaling, routed weight sum 1 instead of rsf.
// Built on router_steps.cuh (a correct one-thread-per-token router); the bug is in the routed weights.
#include "router_steps.cuh"

MOESCOPE_DECLARE_ROUTER(MOESCOPE_APPENDS_SHARED | MOESCOPE_RSF_IN_ROUTER, 128, 128);

extern "C" __global__ void moescope_router(const MoescopeRouterArgs a) {
    const int64_t t = rs_token(a);
    if (t < 0) return;
    RsChoice c;
    rs_route(a, t, a.top_k, false, c);
    const int64_t row = t * a.out_stride;
    const double scale = 1.0;  // BUG: a.routed_scaling_factor ignored
    for (int i = 0; i < c.n; i++) {
        a.ids[row + i] = c.ids[i];
        a.weights[row + i] = (float)(scale * rs_prob(a, c, i));
    }
    for (int j = 0; j < a.n_shared; j++) {
        a.ids[row + a.top_k + j] = a.n_experts + j;
        a.weights[row + a.top_k + j] = rs_gate(a, t);
    }
}

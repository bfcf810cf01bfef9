// Bug: the shared slot carries sum/rsf after the routed slots were renormalized, and nothing
// scales the output afterwards, so the shared expert is weighted 1/rsf instead of 1 (the review of
// vLLM PR #28540). `check` names it: scaling, shared weight 1/rsf.
// Built on router_steps.cuh (a correct one-thread-per-token router); the bug is in the shared slot's weight.
#include "router_steps.cuh"

MOESCOPE_DECLARE_ROUTER(MOESCOPE_APPENDS_SHARED | MOESCOPE_RSF_IN_ROUTER, 128, 128);

extern "C" __global__ void moescope_router(const MoescopeRouterArgs a) {
    const int64_t t = rs_token(a);
    if (t < 0) return;
    RsChoice c;
    rs_route(a, t, a.top_k, false, c);
    const int64_t row = t * a.out_stride;
    double sum = 0.0;
    for (int i = 0; i < c.n; i++) {
        double p = rs_prob(a, c, i);
        sum += p;
        a.ids[row + i] = c.ids[i];
        a.weights[row + i] = (float)(a.routed_scaling_factor * p);
    }
    for (int j = 0; j < a.n_shared; j++) {
        a.ids[row + a.top_k + j] = a.n_experts + j;
        a.weights[row + a.top_k + j] = (float)(sum / a.routed_scaling_factor * rs_gate(a, t));  // BUG
    }
}

// Bug: the shared slot is hard-coded as sum/2.5 with rsf on the output (early sglang
// moe_fused_gate): right for DeepSeek-V3 (rsf 2.5), wrong for every model whose rsf is not 2.5
// (DeepSeek-V2 16.0, Kimi-K2 2.827). `check --all` names it on those presets: scaling.
// Built on router_steps.cuh (a correct one-thread-per-token router); the bug is in the shared slot's weight.
#include "router_steps.cuh"

MOESCOPE_DECLARE_ROUTER(MOESCOPE_APPENDS_SHARED, 128, 128);

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
        a.weights[row + i] = (float)p;
    }
    for (int j = 0; j < a.n_shared; j++) {
        a.ids[row + a.top_k + j] = a.n_experts + j;
        a.weights[row + a.top_k + j] = (float)(sum / 2.5 * rs_gate(a, t));  // BUG: 2.5 for every model
    }
}

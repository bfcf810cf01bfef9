// Bug: the group score drops every value equal to the group maximum before taking the
// second, so a group whose two best experts tie counts its best once and can lose its place (the
// Triton router of design §1: ids differ for ~70% of tokens with exact ties). `check` names it:
// group selection, tie-rule difference.
// Built on router_steps.cuh (a correct one-thread-per-token router); the bug is in rs_group_score (drop_equal_max = true).
#include "router_steps.cuh"

MOESCOPE_DECLARE_ROUTER(MOESCOPE_APPENDS_SHARED | MOESCOPE_RSF_IN_ROUTER, 128, 128);

extern "C" __global__ void moescope_router(const MoescopeRouterArgs a) {
    const int64_t t = rs_token(a);
    if (t < 0) return;
    RsChoice c;
    rs_route(a, t, a.top_k, true, c);  // BUG: tied top experts of a group counted once
    const int64_t row = t * a.out_stride;
    for (int i = 0; i < c.n; i++) {
        a.ids[row + i] = c.ids[i];
        a.weights[row + i] = (float)(a.routed_scaling_factor * rs_prob(a, c, i));
    }
    for (int j = 0; j < a.n_shared; j++) {
        a.ids[row + a.top_k + j] = a.n_experts + j;
        a.weights[row + a.top_k + j] = rs_gate(a, t);
    }
}

// Bug: the shared-slot marker is written twice: once over the last routed slot (the routed
// top-k shrinks to K-1) and the slot counter then advances past it, so the appended shared ids run
// E+1 .. E+S and the last one is out of range. `check` names it: shared slot, id out of range.
// Built on router_steps.cuh (a correct one-thread-per-token router); the bug is in the shared-slot append.
#include "router_steps.cuh"

MOESCOPE_DECLARE_ROUTER(MOESCOPE_APPENDS_SHARED | MOESCOPE_RSF_IN_ROUTER, 128, 128);

extern "C" __global__ void moescope_router(const MoescopeRouterArgs a) {
    const int64_t t = rs_token(a);
    if (t < 0) return;
    RsChoice c;
    rs_route(a, t, a.top_k, false, c);
    const int64_t row = t * a.out_stride;
    for (int i = 0; i < c.n; i++) {
        a.ids[row + i] = c.ids[i];
        a.weights[row + i] = (float)(a.routed_scaling_factor * rs_prob(a, c, i));
    }
    int marker = a.n_experts;
    if (a.n_shared > 0) {
        a.ids[row + a.top_k - 1] = marker++;  // BUG: the marker, written over a routed slot
        a.weights[row + a.top_k - 1] = rs_gate(a, t);
    }
    for (int j = 0; j < a.n_shared; j++) {
        a.ids[row + a.top_k + j] = marker++;  // ... and again, one past
        a.weights[row + a.top_k + j] = rs_gate(a, t);
    }
}

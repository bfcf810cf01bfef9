// Bug: the shared-expert count never reached the kernel, so it routes K + S experts and an
// extra routed expert takes the shared slot (sglang #38963). `check` names it: shared slot.
// Built on router_steps.cuh (a correct one-thread-per-token router); the bug is in the slots it fills.
#include "router_steps.cuh"

MOESCOPE_DECLARE_ROUTER(MOESCOPE_APPENDS_SHARED | MOESCOPE_RSF_IN_ROUTER, 128, 128);

extern "C" __global__ void moescope_router(const MoescopeRouterArgs a) {
    const int64_t t = rs_token(a);
    if (t < 0) return;
    RsChoice c;
    rs_route(a, t, a.out_stride, false, c);  // BUG: top_k + n_shared routed experts
    const int64_t row = t * a.out_stride;
    for (int i = 0; i < a.out_stride; i++) {
        bool real = i < c.n;
        a.ids[row + i] = real ? c.ids[i] : 0;
        a.weights[row + i] = real ? (float)(a.routed_scaling_factor * rs_prob(a, c, i)) : 0.f;
    }
}

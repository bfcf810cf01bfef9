// Device-side weight and hidden-state init, bit for bit synthetic.rs (tensor, hidden_row), and
// small conversion and fill helpers.

// A tensor of n elements, uniform in +-amp, rounded to bf16 (synthetic::tensor).
extern "C" __global__ void init_uniform_bf16(bf16_t* out, u64 n, u64 seed, u64 tensor, float amp) {
    u64 stride = (u64)gridDim.x * blockDim.x;
    for (u64 i = (u64)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += stride)
        out[i] = f32_to_bf16(__fmul_rn(hash_uniform(seed, tensor, i), amp));
}

// SwiGLU weights of n_slots experts starting at tensor slot `slot0`: w13 holds per slot the gate
// rows [inter x hidden] then the up rows, w2 the down matrix [hidden x inter]
// (synthetic::SyntheticWeights::mlp, tensor ids 16 + 4 slot + {0, 1, 2}).
extern "C" __global__ void init_mlp_bf16(bf16_t* w13, bf16_t* w2, u64 slot0, u64 n_slots, u64 inter,
                                         u64 hidden, u64 seed, float amp_in, float amp_down) {
    u64 per = inter * hidden;
    u64 n = n_slots * 3ull * per;
    u64 stride = (u64)gridDim.x * blockDim.x;
    for (u64 i = (u64)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += stride) {
        u64 slot = i / (3ull * per);
        u64 rem = i - slot * 3ull * per;
        u64 which = rem / per;
        u64 idx = rem - which * per;
        u64 tensor = 16ull + 4ull * (slot0 + slot) + which;
        float amp = which == 2 ? amp_down : amp_in;
        bf16_t v = f32_to_bf16(__fmul_rn(hash_uniform(seed, tensor, idx), amp));
        if (which < 2)
            w13[slot * 2ull * per + which * per + idx] = v;
        else
            w2[slot * per + idx] = v;
    }
}

// Hidden states [tokens x hidden] of one step (synthetic::hidden_row), bf16.
extern "C" __global__ void init_hidden_bf16(bf16_t* out, u64 n, u64 seed, u64 tensor) {
    u64 stride = (u64)gridDim.x * blockDim.x;
    for (u64 i = (u64)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += stride)
        out[i] = f32_to_bf16(hash_normal(seed, tensor, i));
}

extern "C" __global__ void f32_to_bf16_kernel(const float* in, bf16_t* out, u64 n) {
    u64 stride = (u64)gridDim.x * blockDim.x;
    for (u64 i = (u64)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += stride)
        out[i] = f32_to_bf16(in[i]);
}

extern "C" __global__ void bf16_to_f32_kernel(const bf16_t* in, float* out, u64 n) {
    u64 stride = (u64)gridDim.x * blockDim.x;
    for (u64 i = (u64)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += stride)
        out[i] = bf16_to_f32(in[i]);
}

// Fills n 32-bit words with a pattern (poison before a check, so unwritten outputs show).
extern "C" __global__ void fill_u32(u32* out, u64 n, u32 value) {
    u64 stride = (u64)gridDim.x * blockDim.x;
    for (u64 i = (u64)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += stride) out[i] = value;
}

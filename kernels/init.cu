// Device-side weight and hidden-state init, bit for bit synthetic.rs (tensor, hidden_row), and
// small conversion and fill helpers. Argument structs: src/engine/cuda/kernels.rs.

// A tensor of n elements, uniform in +-amp, rounded to bf16 (synthetic::tensor).
extern "C" __global__ void init_uniform_bf16(const InitUniformArgs a) {
    u64 stride = (u64)gridDim.x * blockDim.x;
    for (u64 i = (u64)blockIdx.x * blockDim.x + threadIdx.x; i < a.n; i += stride)
        a.out[i] = f32_to_bf16(__fmul_rn(hash_uniform(a.seed, a.tensor, i), a.amp));
}

// SwiGLU weights of n_slots experts starting at tensor slot `slot0`: w13 holds per slot the gate
// rows [inter x hidden] then the up rows, w2 the down matrix [hidden x inter]
// (synthetic::SyntheticWeights::mlp, tensor ids 16 + 4 slot + {0, 1, 2}).
extern "C" __global__ void init_mlp_bf16(const InitMlpArgs a) {
    const u64 per = a.inter * a.hidden;
    const u64 n = a.n_slots * 3ull * per;
    u64 stride = (u64)gridDim.x * blockDim.x;
    for (u64 i = (u64)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += stride) {
        u64 slot = i / (3ull * per);
        u64 rem = i - slot * 3ull * per;
        u64 which = rem / per;
        u64 idx = rem - which * per;
        u64 tensor = 16ull + 4ull * (a.slot0 + slot) + which;
        float amp = which == 2 ? a.amp_down : a.amp_in;
        bf16_t v = f32_to_bf16(__fmul_rn(hash_uniform(a.seed, tensor, idx), amp));
        if (which < 2)
            a.w13[slot * 2ull * per + which * per + idx] = v;
        else
            a.w2[slot * per + idx] = v;
    }
}

// Hidden states [tokens x hidden] of one step (synthetic::hidden_row), bf16.
extern "C" __global__ void init_hidden_bf16(const InitHiddenArgs a) {
    u64 stride = (u64)gridDim.x * blockDim.x;
    for (u64 i = (u64)blockIdx.x * blockDim.x + threadIdx.x; i < a.n; i += stride)
        a.out[i] = f32_to_bf16(hash_normal(a.seed, a.tensor, i));
}

extern "C" __global__ void f32_to_bf16_kernel(const ToBf16Args a) {
    u64 stride = (u64)gridDim.x * blockDim.x;
    for (u64 i = (u64)blockIdx.x * blockDim.x + threadIdx.x; i < a.n; i += stride)
        a.out[i] = f32_to_bf16(a.input[i]);
}

// Fills n 32-bit words with a pattern (poison before a check, so unwritten outputs show).
extern "C" __global__ void fill_u32(const FillArgs a) {
    u64 stride = (u64)gridDim.x * blockDim.x;
    for (u64 i = (u64)blockIdx.x * blockDim.x + threadIdx.x; i < a.n; i += stride) a.out[i] = a.value;
}

//! Layer weights: the `LayerWeights` host form every backend and the f64 reference read, and
//! the two ways to get them — seeded synthetic weights and (see `checkpoint`) a Hugging Face
//! safetensors checkpoint.

pub mod checkpoint;
pub mod fp8;
pub mod synthetic;

use super::config::MoeConfig;

/// One SwiGLU MLP, `down(silu(gate(x)) * up(x))`, in the checkpoint layout (out × in, row-major),
/// values as f32 (already rounded to the compute type where the backend computes in bf16).
#[derive(Clone, Debug, PartialEq)]
pub struct ExpertWeights {
    pub hidden: usize,
    pub intermediate: usize,
    /// [intermediate × hidden]
    pub gate: Vec<f32>,
    /// [intermediate × hidden]
    pub up: Vec<f32>,
    /// [hidden × intermediate]
    pub down: Vec<f32>,
}

/// Where a backend gets the layer's weights from. Synthetic weights generate any tensor on
/// demand; checkpoints read it from memory-mapped files.
pub trait WeightSource: Send + Sync {
    fn config(&self) -> &MoeConfig;
    /// Router gate [E × H].
    fn router_gate(&self) -> anyhow::Result<Vec<f32>>;
    /// `e_score_correction_bias` [E], where the model has one.
    fn router_bias(&self) -> anyhow::Result<Option<Vec<f32>>>;
    /// Offset added to every token's router logits [E] (synthetic routing skew; zero for real
    /// checkpoints).
    fn logit_offset(&self) -> anyhow::Result<Vec<f32>>;
    /// Routed expert `e` (< E).
    fn expert(&self, e: usize) -> anyhow::Result<ExpertWeights>;
    /// Shared slot `j` (< S): the j-th slice of the shared MLP's intermediate dimension, so that
    /// the shared MLP equals the sum of its slots.
    fn shared_slot(&self, j: usize) -> anyhow::Result<ExpertWeights>;
    /// Qwen3-Next `shared_expert_gate` [H], where the model has it.
    fn shared_gate(&self) -> anyhow::Result<Option<Vec<f32>>>;
    /// Routed expert `e` as an FP8 checkpoint stores it (e4m3 and block scales, not
    /// re-quantized); None where the weights are not stored in FP8 (`fp8::expert` then
    /// block-quantizes `expert(e)`).
    fn expert_fp8(&self, _e: usize) -> anyhow::Result<Option<fp8::Fp8Mlp>> {
        Ok(None)
    }
    /// Shared slot `j` as an FP8 checkpoint stores it, as `expert_fp8`.
    fn shared_slot_fp8(&self, _j: usize) -> anyhow::Result<Option<fp8::Fp8Mlp>> {
        Ok(None)
    }
    /// A short description for headers ("synthetic seed 7", "checkpoint DIR layer 3").
    fn describe(&self) -> String;
    /// The synthetic weights behind this source, where it is one: the CUDA backend then
    /// generates them on the device instead of uploading them.
    fn synthetic(&self) -> Option<&synthetic::SyntheticWeights> {
        None
    }
}

/// Round an f32 to the nearest bf16 (ties to even) and back: the value a bf16 buffer holds.
pub fn round_bf16(x: f32) -> f32 {
    half::bf16::from_f32(x).to_f32()
}

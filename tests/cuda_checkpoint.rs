//! The CUDA backend on a real (tiny) Hugging Face checkpoint with captured hidden states: weights
//! uploaded from the host, activations uploaded and rounded on the device; against the f64
//! reference and the CPU backend. Skips (and says so) without a GPU.

mod checkpoint_support;

use checkpoint_support::*;
use moescope::engine::config::MoeConfig;
use moescope::engine::weights::checkpoint;
use moescope::engine::{cuda, Engine};
use safetensors::Dtype;
use serde_json::json;
use std::sync::Arc;

#[test]
fn checkpoint_layer_with_captured_hidden_states_on_the_gpu() {
    if let Err(why) = cuda::probe() {
        println!("skipped: no CUDA: {why}");
        return;
    }
    // Sizes the expert kernels take (multiples of 64).
    let (h, i, tokens) = (128, 64, 40);
    let config = json!({
        "model_type": "deepseek_v3", "n_routed_experts": 16, "n_shared_experts": 1,
        "num_experts_per_tok": 4, "n_group": 4, "topk_group": 2, "topk_method": "noaux_tc",
        "scoring_func": "sigmoid", "norm_topk_prob": true, "routed_scaling_factor": 2.5,
        "hidden_size": h, "moe_intermediate_size": i, "intermediate_size": 4 * i,
        "num_hidden_layers": 1, "first_k_dense_replace": 0, "moe_layer_freq": 1
    });
    let cfg = MoeConfig::from_hf_json(&config).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let layer = Layer::random(&cfg, 21).stored_as(Dtype::BF16);
    let tensors = layer_tensors(&layer, "model.layers.0.", Naming::DeepSeek, Dtype::BF16);
    write_checkpoint(dir.path(), &config, &tensors, 1);
    let hidden_path = dir.path().join("hidden.safetensors");
    write_hidden(&hidden_path, tokens, h, 5);
    let hidden = checkpoint::read_hidden_states(&hidden_path, h).unwrap();

    let source = checkpoint::open(dir.path(), None, 1).unwrap();
    let backend = cuda::open(source).unwrap();
    let paths = moescope::engine::paths::PathSpec::default_pair();
    let mut engine = Engine::new(backend, paths, 0, 7, Some(Arc::new(hidden.clone())));
    let rec = engine.step().unwrap();
    assert_eq!(rec.backend, moescope::engine::BackendKind::Cuda);
    assert_eq!(rec.tokens, tokens);
    assert_eq!(rec.comparison.routing_agreement_ref, vec![1.0, 1.0]);
    assert!(rec.paths.iter().all(|p| p.contract.ok), "contract");
    for e in &rec.comparison.output_rel_l2_ref {
        assert!(*e < 1e-2, "rel L2 vs f64 reference {e}");
    }
    let cpu = one_step(checkpoint::open(dir.path(), None, 1).unwrap(), &hidden);
    for (g, c) in rec.paths.iter().zip(&cpu.paths) {
        assert_eq!(g.output.nonfinite, 0);
        let rel = (g.output.rms - c.output.rms).abs() / c.output.rms;
        assert!(
            rel < 1e-3,
            "output rms {} vs CPU {}",
            g.output.rms,
            c.output.rms
        );
        assert!(g.clean_us.is_some());
    }
}

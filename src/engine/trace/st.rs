//! Safetensors traces: `topk_ids` (any integer dtype), optional `topk_weights` (F32/F16/BF16/F64)
//! or `expert_counts`. Other tensors are ignored.

use super::{RawArray, RawValues, RoutingTrace, TraceArrays, COUNTS, IDS, WEIGHTS};
use anyhow::{bail, Context, Result};
use safetensors::tensor::TensorView;
use safetensors::{Dtype, SafeTensors};

pub fn read(bytes: &[u8]) -> Result<TraceArrays> {
    let st = SafeTensors::deserialize(bytes).context("not a valid safetensors file")?;
    let get = |name: &str| -> Result<Option<RawArray>> {
        match st.tensor(name) {
            Ok(view) => Ok(Some(raw(name, &view)?)),
            Err(_) => Ok(None),
        }
    };
    let arrays = TraceArrays {
        ids: get(IDS)?,
        weights: get(WEIGHTS)?,
        counts: get(COUNTS)?,
    };
    if arrays.ids.is_none() && arrays.counts.is_none() {
        let mut names: Vec<String> = st.names().into_iter().map(str::to_string).collect();
        names.sort();
        bail!(
            "holds no `{IDS}` [T, K] or `{COUNTS}` [layers, E]; its tensors are: {}",
            if names.is_empty() {
                "none".to_string()
            } else {
                names.join(", ")
            }
        );
    }
    Ok(arrays)
}

fn raw(name: &str, view: &TensorView<'_>) -> Result<RawArray> {
    let b = view.data();
    let ints =
        |n: usize, f: &dyn Fn(&[u8]) -> i64| RawValues::Int(b.chunks_exact(n).map(f).collect());
    let values = match view.dtype() {
        Dtype::I8 => ints(1, &|c| c[0] as i8 as i64),
        Dtype::U8 => ints(1, &|c| c[0] as i64),
        Dtype::I16 => ints(2, &|c| i16::from_le_bytes([c[0], c[1]]) as i64),
        Dtype::U16 => ints(2, &|c| u16::from_le_bytes([c[0], c[1]]) as i64),
        Dtype::I32 => ints(4, &|c| i32::from_le_bytes([c[0], c[1], c[2], c[3]]) as i64),
        Dtype::U32 => ints(4, &|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]]) as i64),
        Dtype::I64 | Dtype::U64 => ints(8, &|c| {
            i64::from_le_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]])
        }),
        Dtype::F64 => RawValues::Float(
            b.chunks_exact(8)
                .map(|c| f64::from_le_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]))
                .collect(),
        ),
        Dtype::F32 | Dtype::F16 | Dtype::BF16 => RawValues::Float(
            crate::engine::inputs::tensor_to_f32(name, view)?
                .into_iter()
                .map(f64::from)
                .collect(),
        ),
        other => bail!("tensor `{name}` has dtype {other:?}; expected an integer or float dtype"),
    };
    Ok(RawArray {
        shape: view.shape().to_vec(),
        values,
    })
}

/// `topk_ids` I32 and `topk_weights` F32, both [steps, T, K].
pub fn write(trace: &RoutingTrace) -> Result<Vec<u8>> {
    let shape = vec![trace.steps, trace.tokens, trace.k];
    let ids: Vec<u8> = trace
        .ids
        .iter()
        .flat_map(|&i| (i as i32).to_le_bytes())
        .collect();
    let mut tensors = vec![(IDS, TensorView::new(Dtype::I32, shape.clone(), &ids)?)];
    let weights: Vec<u8>;
    if let Some(w) = &trace.weights {
        weights = w.iter().flat_map(|v| v.to_le_bytes()).collect();
        tensors.push((WEIGHTS, TensorView::new(Dtype::F32, shape, &weights)?));
    }
    Ok(safetensors::serialize(tensors, None)?)
}

//! `.npy` traces (through the `npyz` crate): one array, ids [T, K] / [steps, T, K] /
//! [T, layers, K] or counts [layers, E]. Which one is told by the last dimension: K (the config's
//! experts per token) means ids, E means counts.

use super::{RawArray, RawValues, RoutingTrace, TraceArrays};
use crate::engine::config::MoeConfig;
use anyhow::{bail, Context, Result};
use npyz::{NpyFile, WriterBuilder};

pub fn read(bytes: &[u8], cfg: &MoeConfig) -> Result<TraceArrays> {
    let file = NpyFile::new(bytes).context("not a valid .npy file")?;
    let shape: Vec<usize> = file.shape().iter().map(|&d| d as usize).collect();
    let dtype = file.dtype().descr();
    let bad = |e: std::io::Error| anyhow::anyhow!("cannot read the array data ({dtype}): {e}");
    // The descriptor as numpy writes it, quoted: '<i4'.
    let values = match dtype.trim_matches('\'').trim_start_matches(['<', '|', '=']) {
        "i1" => RawValues::Int(
            file.into_vec::<i8>()
                .map_err(bad)?
                .into_iter()
                .map(i64::from)
                .collect(),
        ),
        "u1" => RawValues::Int(
            file.into_vec::<u8>()
                .map_err(bad)?
                .into_iter()
                .map(i64::from)
                .collect(),
        ),
        "i2" => RawValues::Int(
            file.into_vec::<i16>()
                .map_err(bad)?
                .into_iter()
                .map(i64::from)
                .collect(),
        ),
        "u2" => RawValues::Int(
            file.into_vec::<u16>()
                .map_err(bad)?
                .into_iter()
                .map(i64::from)
                .collect(),
        ),
        "i4" => RawValues::Int(
            file.into_vec::<i32>()
                .map_err(bad)?
                .into_iter()
                .map(i64::from)
                .collect(),
        ),
        "u4" => RawValues::Int(
            file.into_vec::<u32>()
                .map_err(bad)?
                .into_iter()
                .map(i64::from)
                .collect(),
        ),
        "i8" => RawValues::Int(file.into_vec::<i64>().map_err(bad)?),
        other => bail!(
            "holds dtype `{other}`; expected integer ids or counts (int8..int64, uint8..uint32)"
        ),
    };
    let array = RawArray { shape, values };
    let last = array.shape.last().copied().unwrap_or(0);
    let (k, e) = (cfg.num_experts_per_tok, cfg.n_routed_experts);
    if last == k {
        Ok(TraceArrays {
            ids: Some(array),
            ..TraceArrays::default()
        })
    } else if last == e {
        Ok(TraceArrays {
            counts: Some(array),
            ..TraceArrays::default()
        })
    } else {
        bail!(
            "array {:?} ends in {last}; expected ids [.., K = {k}] or counts [.., E = {e}] for {}",
            array.shape,
            cfg.name
        )
    }
}

/// The ids as int32 [steps, T, K] (a `.npy` file holds one array: the weights are not kept).
pub fn write(trace: &RoutingTrace) -> Result<Vec<u8>> {
    let mut out = Vec::new();
    let shape = [trace.steps as u64, trace.tokens as u64, trace.k as u64];
    let mut w = npyz::WriteOptions::new()
        .default_dtype()
        .shape(&shape)
        .writer(&mut out)
        .begin_nd()?;
    w.extend(trace.ids.iter().map(|&i| i as i32))?;
    w.finish()?;
    Ok(out)
}

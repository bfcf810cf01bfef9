//! JSON traces: `{"topk_ids": [[..]], "topk_weights": [[..]]}`, `{"expert_counts": [[..]]}`, or
//! a bare nested array of ids. Arrays nest one level per dimension and must be rectangular.

use super::{RawArray, RawValues, RoutingTrace, TraceArrays, COUNTS, IDS, WEIGHTS};
use anyhow::{bail, Context, Result};
use serde_json::Value;

pub fn read(bytes: &[u8]) -> Result<TraceArrays> {
    let doc: Value = serde_json::from_slice(bytes).context("not valid JSON")?;
    match &doc {
        Value::Array(_) => Ok(TraceArrays {
            ids: Some(array(IDS, &doc)?),
            ..TraceArrays::default()
        }),
        Value::Object(map) => {
            let get = |name: &str| map.get(name).map(|v| array(name, v)).transpose();
            let arrays = TraceArrays {
                ids: get(IDS)?,
                weights: get(WEIGHTS)?,
                counts: get(COUNTS)?,
            };
            if arrays.ids.is_none() && arrays.counts.is_none() {
                let keys: Vec<&str> = map.keys().map(String::as_str).collect();
                bail!(
                    "holds no `{IDS}` or `{COUNTS}` key; its keys are: {}",
                    if keys.is_empty() {
                        "none".to_string()
                    } else {
                        keys.join(", ")
                    }
                );
            }
            Ok(arrays)
        }
        _ => bail!("expected an object with `{IDS}` or `{COUNTS}`, or a nested array of ids"),
    }
}

/// A rectangular nested array; integers stay integers unless any element is a float.
fn array(name: &str, v: &Value) -> Result<RawArray> {
    let mut shape = Vec::new();
    let mut cur = v;
    while let Value::Array(items) = cur {
        shape.push(items.len());
        match items.first() {
            Some(first) => cur = first,
            None => break,
        }
    }
    if shape.is_empty() {
        bail!("`{name}` is not an array");
    }
    let mut leaves = Vec::new();
    collect(name, v, &shape, 0, &mut Vec::new(), &mut leaves)?;
    let values = if leaves.iter().all(|x| x.is_i64()) {
        RawValues::Int(leaves.iter().filter_map(|x| x.as_i64()).collect())
    } else {
        RawValues::Float(leaves.iter().filter_map(|x| x.as_f64()).collect())
    };
    Ok(RawArray { shape, values })
}

fn collect<'v>(
    name: &str,
    v: &'v Value,
    shape: &[usize],
    depth: usize,
    at: &mut Vec<usize>,
    out: &mut Vec<&'v Value>,
) -> Result<()> {
    let here = || format!("`{name}`{at:?}");
    if depth == shape.len() {
        if !v.is_number() {
            bail!("{} is {v}; expected a number", here());
        }
        out.push(v);
        return Ok(());
    }
    let Value::Array(items) = v else {
        bail!(
            "{} is {v}; expected an array of {} (the array is not rectangular)",
            here(),
            shape[depth]
        );
    };
    if items.len() != shape[depth] {
        bail!(
            "{} has {} elements; expected {} (the array is not rectangular)",
            here(),
            items.len(),
            shape[depth]
        );
    }
    for (i, item) in items.iter().enumerate() {
        at.push(i);
        collect(name, item, shape, depth + 1, at, out)?;
        at.pop();
    }
    Ok(())
}

pub fn write(trace: &RoutingTrace) -> Result<Vec<u8>> {
    let nest = |flat: Vec<Value>| -> Value {
        let tokens: Vec<Value> = flat
            .chunks(trace.k)
            .map(|c| Value::Array(c.to_vec()))
            .collect();
        Value::Array(
            tokens
                .chunks(trace.tokens)
                .map(|c| Value::Array(c.to_vec()))
                .collect(),
        )
    };
    let mut doc = serde_json::Map::new();
    doc.insert(
        IDS.to_string(),
        nest(trace.ids.iter().map(|&i| Value::from(i)).collect()),
    );
    if let Some(w) = &trace.weights {
        doc.insert(
            WEIGHTS.to_string(),
            nest(w.iter().map(|&x| Value::from(x as f64)).collect()),
        );
    }
    Ok(serde_json::to_vec(&Value::Object(doc))?)
}

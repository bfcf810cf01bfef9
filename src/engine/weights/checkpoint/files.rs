//! A checkpoint directory's files: the shard index, safetensors headers parsed from memory
//! maps, and reading 2-D blocks of a tensor (F32, BF16, F16, or F8_E4M3 with block scales) as
//! f32. Only the bytes of the blocks asked for are touched.

use crate::engine::inputs::tensor_to_f32;
use anyhow::{anyhow, bail, ensure, Context, Result};
use memmap2::Mmap;
use safetensors::tensor::{Dtype, SafeTensorError, TensorView};
use safetensors::SafeTensors;
use std::collections::BTreeMap;
use std::ops::Range;
use std::path::{Component, Path, PathBuf};

pub const INDEX_FILE: &str = "model.safetensors.index.json";
pub const SINGLE_FILE: &str = "model.safetensors";
/// DeepSeek-V3's FP8 block size (`quantization_config.weight_block_size`).
pub const DEFAULT_BLOCK: [usize; 2] = [128, 128];

/// One tensor as a header describes it.
#[derive(Clone, Debug, PartialEq)]
pub struct TensorMeta {
    pub dtype: Dtype,
    pub shape: Vec<usize>,
    /// Absolute byte range in the file.
    pub bytes: Range<usize>,
}

impl TensorMeta {
    pub fn len_bytes(&self) -> usize {
        self.bytes.end - self.bytes.start
    }
}

/// Says what a safetensors parse error means for the user.
fn explain(err: SafeTensorError, file_len: usize) -> anyhow::Error {
    match err {
        SafeTensorError::HeaderTooLarge => {
            anyhow!("header too large (the first 8 bytes declare more than 100 MB of header)")
        }
        SafeTensorError::HeaderTooSmall | SafeTensorError::InvalidHeaderLength => anyhow!(
            "truncated: the header declared by the first 8 bytes does not fit in the file's {file_len} bytes"
        ),
        SafeTensorError::MetadataIncompleteBuffer => anyhow!(
            "truncated or corrupt: the tensors' data offsets do not end at the file's end ({file_len} bytes)"
        ),
        other => anyhow!("corrupt header: {other}"),
    }
}

/// Parses the header of a whole safetensors file's bytes: every tensor's dtype, shape and byte
/// range, checked against the file's length. Never panics, whatever the bytes.
pub fn parse_header(bytes: &[u8]) -> Result<BTreeMap<String, TensorMeta>> {
    let (n, meta) = SafeTensors::read_metadata(bytes).map_err(|e| explain(e, bytes.len()))?;
    // read_metadata checked that the offsets tile [0, len − 8 − n) exactly.
    let start = 8 + n;
    Ok(meta
        .tensors()
        .into_iter()
        .map(|(name, info)| {
            let meta = TensorMeta {
                dtype: info.dtype,
                shape: info.shape.clone(),
                bytes: start + info.data_offsets.0..start + info.data_offsets.1,
            };
            (name, meta)
        })
        .collect())
}

/// Parses `model.safetensors.index.json`: tensor name → shard file name. Never panics.
pub fn parse_index(bytes: &[u8]) -> Result<BTreeMap<String, String>> {
    let value: serde_json::Value = serde_json::from_slice(bytes).context("not valid JSON")?;
    let map = value
        .get("weight_map")
        .and_then(|m| m.as_object())
        .ok_or_else(|| anyhow!("has no `weight_map` object (tensor name → file name)"))?;
    let mut out = BTreeMap::new();
    for (name, file) in map {
        let file = file
            .as_str()
            .ok_or_else(|| anyhow!("`weight_map` entry `{name}` is not a file name string"))?;
        let path = Path::new(file);
        let plain = !file.is_empty()
            && path
                .components()
                .all(|c| matches!(c, Component::Normal(_) | Component::CurDir));
        ensure!(
            plain,
            "`weight_map` entry `{name}` names `{file}`; expected a file name inside the checkpoint directory"
        );
        out.insert(name.clone(), file.to_string());
    }
    ensure!(!out.is_empty(), "`weight_map` is empty");
    Ok(out)
}

/// One memory-mapped safetensors file and its parsed header.
pub struct Shard {
    pub path: PathBuf,
    map: Mmap,
    pub tensors: BTreeMap<String, TensorMeta>,
}

impl Shard {
    pub fn open(path: &Path) -> Result<Shard> {
        let file = std::fs::File::open(path)
            .with_context(|| format!("cannot open safetensors file {}", path.display()))?;
        // SAFETY: the map is only read. As with every mmap-based loader, a file changed by
        // another process while mapped is outside what the tool promises.
        let map = unsafe { Mmap::map(&file) }
            .with_context(|| format!("cannot memory-map {}", path.display()))?;
        let tensors = parse_header(&map)
            .with_context(|| format!("{} is not a valid safetensors file", path.display()))?;
        Ok(Shard {
            path: path.to_path_buf(),
            map,
            tensors,
        })
    }

    fn bytes(&self, meta: &TensorMeta) -> &[u8] {
        // The header parse checked every range against the file's length.
        &self.map[meta.bytes.clone()]
    }
}

/// Every tensor of a checkpoint directory by name, with the shards opened so far.
pub struct Files {
    pub dir: PathBuf,
    /// Tensor name → shard file name, for every tensor of the checkpoint.
    pub names: BTreeMap<String, String>,
    /// How the names were found ("model.safetensors.index.json", "model.safetensors", ...).
    pub source: String,
    shards: BTreeMap<String, Shard>,
    /// FP8 block size [rows, cols].
    pub block: [usize; 2],
}

impl Files {
    /// Finds the checkpoint's tensors: from the index when there is one, else from the
    /// headers of `model.safetensors` or of every `*.safetensors` in the directory.
    pub fn scan(dir: &Path, block: [usize; 2]) -> Result<Files> {
        let mut files = Files {
            dir: dir.to_path_buf(),
            names: BTreeMap::new(),
            source: String::new(),
            shards: BTreeMap::new(),
            block,
        };
        let index = dir.join(INDEX_FILE);
        if index.is_file() {
            let bytes = std::fs::read(&index)
                .with_context(|| format!("cannot read {}", index.display()))?;
            files.names = parse_index(&bytes)
                .with_context(|| format!("index {} is not usable", index.display()))?;
            files.source = INDEX_FILE.to_string();
            return Ok(files);
        }
        let single = dir.join(SINGLE_FILE);
        let shard_names: Vec<String> = if single.is_file() {
            vec![SINGLE_FILE.to_string()]
        } else {
            let entries = std::fs::read_dir(dir)
                .with_context(|| format!("cannot read checkpoint directory {}", dir.display()))?;
            let mut found = Vec::new();
            for entry in entries {
                let entry =
                    entry.with_context(|| format!("cannot list directory {}", dir.display()))?;
                let name = entry.file_name().to_string_lossy().into_owned();
                if name.ends_with(".safetensors") {
                    found.push(name);
                }
            }
            found.sort();
            found
        };
        ensure!(
            !shard_names.is_empty(),
            "{} holds neither {SINGLE_FILE} nor {INDEX_FILE} nor any *.safetensors file",
            dir.display()
        );
        for file in &shard_names {
            let shard = Shard::open(&dir.join(file))?;
            for name in shard.tensors.keys() {
                files.names.insert(name.clone(), file.clone());
            }
            files.shards.insert(file.clone(), shard);
        }
        files.source = shard_names.join(", ");
        Ok(files)
    }

    pub fn contains(&self, name: &str) -> bool {
        self.names.contains_key(name)
    }

    /// Opens the shards that hold `names` (each once), and checks that each shard's header
    /// really has the tensors the index places there.
    pub fn open_for<'a>(&mut self, names: impl IntoIterator<Item = &'a str>) -> Result<()> {
        for name in names {
            let Some(file) = self.names.get(name) else {
                continue;
            };
            if !self.shards.contains_key(file) {
                let shard = Shard::open(&self.dir.join(file))?;
                self.shards.insert(file.clone(), shard);
            }
            let shard = &self.shards[file];
            ensure!(
                shard.tensors.contains_key(name),
                "{} places tensor `{name}` in {}, but that file has no such tensor",
                self.source,
                shard.path.display()
            );
        }
        Ok(())
    }

    /// The header entry of an opened tensor; a missing tensor is an error naming it.
    pub fn meta(&self, name: &str) -> Result<(&Shard, &TensorMeta)> {
        let file = self
            .names
            .get(name)
            .ok_or_else(|| anyhow!("tensor `{name}` is missing from {}", self.dir.display()))?;
        let shard = self
            .shards
            .get(file)
            .ok_or_else(|| anyhow!("shard {file} holding `{name}` was not opened"))?;
        let meta = shard
            .tensors
            .get(name)
            .ok_or_else(|| anyhow!("tensor `{name}` is missing from {}", shard.path.display()))?;
        Ok((shard, meta))
    }

    /// An opened tensor's header entry and stored bytes, as they are (FP8 read without
    /// dequantizing).
    pub fn raw(&self, name: &str) -> Result<(&TensorMeta, &[u8])> {
        let (shard, meta) = self.meta(name)?;
        Ok((meta, shard.bytes(meta)))
    }

    /// Checks a tensor's shape, and that its dtype can be read (F8_E4M3 with a matching
    /// `{name}_scale_inv` block-scale tensor).
    pub fn check(&self, name: &str, want: &[usize], what: &str) -> Result<()> {
        let (_, meta) = self.meta(name)?;
        ensure!(
            meta.shape == want,
            "tensor `{name}` ({what}) has shape {:?}; expected {want:?} from config.json — config and weights disagree",
            meta.shape
        );
        match meta.dtype {
            Dtype::F32 | Dtype::BF16 | Dtype::F16 => Ok(()),
            Dtype::F8_E4M3 => {
                self.scale_meta(name, &meta.shape)?;
                Ok(())
            }
            other => bail!(
                "tensor `{name}` has dtype {other}; supported: F32, BF16, F16, F8_E4M3 with block scales"
            ),
        }
    }

    /// The block-scale tensor of an FP8 tensor, its shape checked: [⌈R/b⌉, ⌈C/b⌉] per 2-D slab.
    fn scale_meta(&self, name: &str, shape: &[usize]) -> Result<(&Shard, &TensorMeta)> {
        let scale_name = format!("{name}_scale_inv");
        let per_tensor = format!("{name}_scale");
        ensure!(
            self.contains(&scale_name) || !self.contains(&per_tensor),
            "F8_E4M3 tensor `{name}` has per-tensor or per-channel scales `{per_tensor}`; only block scales `{scale_name}` (DeepSeek-V3's format) are supported"
        );
        let (shard, meta) = self.meta(&scale_name).with_context(|| {
            format!("F8_E4M3 tensor `{name}` needs its block scales `{scale_name}`")
        })?;
        let [br, bc] = self.block;
        let mut want = shape.to_vec();
        let n = want.len();
        ensure!(
            n >= 2,
            "F8_E4M3 tensor `{name}` has shape {shape:?}; expected a matrix"
        );
        want[n - 2] = shape[n - 2].div_ceil(br);
        want[n - 1] = shape[n - 1].div_ceil(bc);
        ensure!(
            meta.shape == want,
            "scale tensor `{scale_name}` has shape {:?}; expected {want:?} ({br}×{bc} blocks of {shape:?})",
            meta.shape
        );
        ensure!(
            matches!(meta.dtype, Dtype::F32 | Dtype::BF16 | Dtype::F16),
            "scale tensor `{scale_name}` has dtype {}; expected F32",
            meta.dtype
        );
        Ok((shard, meta))
    }

    /// Reads the whole tensor (any rank) as f32.
    pub fn read_all(&self, name: &str) -> Result<Vec<f32>> {
        let (_, meta) = self.meta(name)?;
        let (rows, cols) = match meta.shape.as_slice() {
            [] => (1, 1),
            [n] => (1, *n),
            [r, c] => (*r, *c),
            other => bail!("tensor `{name}` has shape {other:?}; expected a vector or a matrix"),
        };
        self.read_block(name, None, 0..rows, 0..cols)
    }

    /// Reads `rows × cols` of a matrix, or of slab `slab` of a 3-D tensor (the expert index of
    /// fused expert weights), as f32 row-major.
    pub fn read_block(
        &self,
        name: &str,
        slab: Option<usize>,
        rows: Range<usize>,
        cols: Range<usize>,
    ) -> Result<Vec<f32>> {
        let (shard, meta) = self.meta(name)?;
        let (slabs, nr, nc) = match (meta.shape.as_slice(), slab) {
            ([n], None) => (1, 1, *n),
            ([r, c], None) => (1, *r, *c),
            ([e, r, c], Some(_)) => (*e, *r, *c),
            (shape, _) => bail!(
                "tensor `{name}` has shape {shape:?}; expected {}",
                if slab.is_some() {
                    "3 dimensions"
                } else {
                    "a matrix"
                }
            ),
        };
        let s = slab.unwrap_or(0);
        ensure!(
            s < slabs
                && rows.start <= rows.end
                && rows.end <= nr
                && cols.start <= cols.end
                && cols.end <= nc,
            "block [{slab:?}, {rows:?}, {cols:?}] lies outside tensor `{name}` of shape {:?}",
            meta.shape
        );
        let data = shard.bytes(meta);
        let base = s * nr * nc;
        let width = cols.end - cols.start;
        let mut out = Vec::with_capacity((rows.end - rows.start) * width);
        if meta.dtype == Dtype::F8_E4M3 {
            let (scale_shard, scale_meta) = self.scale_meta(name, &meta.shape)?;
            let [br, bc] = self.block;
            let (sr, sc) = (nr.div_ceil(br), nc.div_ceil(bc));
            let scale_bytes = scale_shard.bytes(scale_meta);
            let scale_es = if scale_meta.dtype == Dtype::F32 { 4 } else { 2 };
            let per_slab = sr * sc * scale_es;
            let slab_scales = &scale_bytes[s * per_slab..(s + 1) * per_slab];
            let view = TensorView::new(scale_meta.dtype, vec![sr * sc], slab_scales)
                .map_err(|e| anyhow!("scale tensor of `{name}`: {e}"))?;
            let scales = tensor_to_f32(&format!("{name}_scale_inv"), &view)?;
            let lut = e4m3_table();
            for r in rows {
                let row = &data[base + r * nc..base + (r + 1) * nc];
                let row_scales = &scales[(r / br) * sc..(r / br + 1) * sc];
                // One column block (one scale) at a time; the last block may be ragged.
                let mut c = cols.start;
                while c < cols.end {
                    let end = ((c / bc + 1) * bc).min(cols.end);
                    let s = row_scales[c / bc];
                    out.extend(row[c..end].iter().map(|&b| lut[usize::from(b)] * s));
                    c = end;
                }
            }
            return Ok(out);
        }
        let es = match meta.dtype {
            Dtype::F32 => 4,
            Dtype::BF16 | Dtype::F16 => 2,
            other => bail!(
                "tensor `{name}` has dtype {other}; supported: F32, BF16, F16, F8_E4M3 with block scales"
            ),
        };
        let mut convert = |start: usize, len: usize| -> Result<()> {
            let bytes = &data[start * es..(start + len) * es];
            let view = TensorView::new(meta.dtype, vec![len], bytes)
                .map_err(|e| anyhow!("tensor `{name}`: {e}"))?;
            out.extend(tensor_to_f32(name, &view)?);
            Ok(())
        };
        if width == nc {
            // Whole rows are contiguous: one conversion.
            convert(base + rows.start * nc, (rows.end - rows.start) * nc)?;
        } else {
            for r in rows {
                convert(base + r * nc + cols.start, width)?;
            }
        }
        Ok(out)
    }
}

/// All 256 E4M3 values, decoded once.
fn e4m3_table() -> &'static [f32; 256] {
    static TABLE: std::sync::OnceLock<[f32; 256]> = std::sync::OnceLock::new();
    TABLE.get_or_init(|| std::array::from_fn(|b| e4m3_to_f32(b as u8)))
}

/// Decodes one OCP FP8 E4M3 ("e4m3fn") value: 1 sign, 4 exponent (bias 7) and 3 mantissa bits,
/// no infinities, S.1111.111 is NaN.
pub fn e4m3_to_f32(bits: u8) -> f32 {
    let sign = if bits & 0x80 != 0 { -1.0f32 } else { 1.0 };
    let exp = u32::from((bits >> 3) & 0x0F);
    let man = u32::from(bits & 0x07);
    if exp == 0x0F && man == 0x07 {
        return f32::NAN;
    }
    if exp == 0 {
        // Subnormal: man/8 · 2^(1−7).
        return sign * man as f32 * (1.0 / 512.0);
    }
    // Normal: move the exponent to f32's bias (127 − 7 = 120) and the mantissa to the top.
    sign * f32::from_bits(((exp + 120) << 23) | (man << 20))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn e4m3_known_values() {
        assert_eq!(e4m3_to_f32(0x00), 0.0);
        assert_eq!(e4m3_to_f32(0x38), 1.0); // exp 7, man 0
        assert_eq!(e4m3_to_f32(0x7E), 448.0); // the largest finite value
        assert_eq!(e4m3_to_f32(0xFE), -448.0);
        assert_eq!(e4m3_to_f32(0x01), 1.0 / 512.0); // the smallest subnormal
        assert!(e4m3_to_f32(0x7F).is_nan());
        assert!(e4m3_to_f32(0xFF).is_nan());
    }

    #[test]
    fn index_rejects_paths_outside_the_directory() {
        let bad = br#"{"weight_map": {"a": "../x.safetensors"}}"#;
        assert!(parse_index(bad).is_err());
        let good = br#"{"metadata": {}, "weight_map": {"a": "model-00001.safetensors"}}"#;
        assert_eq!(parse_index(good).unwrap()["a"], "model-00001.safetensors");
    }
}

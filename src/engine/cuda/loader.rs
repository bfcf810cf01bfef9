//! Finding NVRTC, compiling the embedded kernels for one architecture, and the on-disk cache.
//!
//! cudarc opens libnvrtc by name, so only the loader path is searched. NVRTC also comes as a pip
//! wheel (`nvidia-cuda-nvrtc`) whose directory is on no loader path: we open it by full path
//! first, and a later open by name then finds the already loaded library (same soname).

use anyhow::{anyhow, bail, Context, Result};
use std::ffi::{CStr, CString};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use super::kernels::Module;

/// kernels/common.cu, prepended to every module.
pub const COMMON: &str = include_str!("../../../kernels/common.cu");

/// The text NVRTC compiles for a module: common.cu, the module's argument structs, its shared
/// prelude (the grouped GEMM template, where it uses one), the module.
pub fn full_source(module: Module) -> String {
    format!(
        "{COMMON}\n// ---- argument structs (src/engine/cuda/kernels/registry.rs) ----\n{}\n{}\n// ---- {}.cu ----\n{}",
        module.arg_structs(),
        module.prelude(),
        module.name(),
        module.source()
    )
}

/// Directories where a pip or toolkit NVRTC may live, most specific first.
fn nvrtc_candidates() -> Vec<PathBuf> {
    let mut dirs: Vec<PathBuf> = Vec::new();
    if let Some(p) = std::env::var_os("MOESCOPE_NVRTC") {
        let p = PathBuf::from(p);
        if p.is_file() {
            return vec![p];
        }
        dirs.push(p);
    }
    for var in ["CUDA_HOME", "CUDA_PATH"] {
        if let Some(home) = std::env::var_os(var) {
            dirs.push(Path::new(&home).join("lib64"));
            dirs.push(Path::new(&home).join("lib"));
        }
    }
    dirs.push("/usr/local/cuda/lib64".into());
    dirs.push("/usr/local/cuda/targets/x86_64-linux/lib".into());
    // Python site-packages of pyenv, virtualenvs and the system, where pip puts nvidia/*/lib.
    let mut site: Vec<PathBuf> = Vec::new();
    let mut python_roots: Vec<PathBuf> = vec!["/usr/lib".into(), "/usr/local/lib".into()];
    if let Some(home) = std::env::var_os("HOME") {
        let versions = Path::new(&home).join(".pyenv/versions");
        python_roots.extend(list_dir(&versions).into_iter().map(|v| v.join("lib")));
        python_roots.push(Path::new(&home).join(".local/lib"));
    }
    if let Some(venv) = std::env::var_os("VIRTUAL_ENV") {
        python_roots.push(Path::new(&venv).join("lib"));
    }
    for opt in list_dir(Path::new("/opt")) {
        python_roots.push(opt.join(".venv/lib"));
    }
    for root in python_roots {
        for py in list_dir(&root) {
            let is_python = py
                .file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("python3"));
            if is_python {
                site.push(py.join("site-packages"));
                site.push(py.join("dist-packages"));
            }
        }
    }
    for s in site {
        for sub in [
            "nvidia/cu13/lib",
            "nvidia/cuda_nvrtc/lib",
            "nvidia/cu12/lib",
        ] {
            dirs.push(s.join(sub));
        }
    }
    let names = ["libnvrtc.so.13", "libnvrtc.so.12", "libnvrtc.so"];
    dirs.iter()
        .flat_map(|d| names.iter().map(move |n| d.join(n)))
        .filter(|p| p.is_file())
        .collect()
}

fn list_dir(dir: &Path) -> Vec<PathBuf> {
    let mut out: Vec<PathBuf> = std::fs::read_dir(dir)
        .map(|rd| rd.filter_map(|e| e.ok().map(|e| e.path())).collect())
        .unwrap_or_default();
    out.sort();
    out
}

/// Makes NVRTC loadable; returns where it came from, or why it is absent. Never panics.
pub fn nvrtc_available() -> Result<String, String> {
    static FOUND: OnceLock<Result<String, String>> = OnceLock::new();
    FOUND
        .get_or_init(|| {
            // SAFETY: probing dlopen of a library by name; nothing is called.
            if unsafe { cudarc::nvrtc::sys::is_culib_present() } {
                return Ok("the loader path".to_string());
            }
            for path in nvrtc_candidates() {
                // SAFETY: loading NVRTC runs no initialisers with preconditions. The library is
                // kept loaded for the life of the process (cudarc holds its own handle too).
                if let Ok(lib) = unsafe { libloading::Library::new(&path) } {
                    std::mem::forget(lib);
                    // NVRTC opens its builtins library by name at compile time: preload it too.
                    let dir = path.parent().unwrap_or(Path::new("."));
                    for builtins in list_dir(dir).into_iter().filter(|p| {
                        p.file_name()
                            .and_then(|n| n.to_str())
                            .is_some_and(|n| n.starts_with("libnvrtc-builtins.so"))
                    }) {
                        if let Ok(b) = unsafe { libloading::Library::new(&builtins) } {
                            std::mem::forget(b);
                        }
                    }
                    if unsafe { cudarc::nvrtc::sys::is_culib_present() } {
                        return Ok(path.display().to_string());
                    }
                }
            }
            Err("NVRTC (libnvrtc.so.13) not found on the loader path, under CUDA_HOME, /usr/local/cuda or in a pip `nvidia-cuda-nvrtc` install; set MOESCOPE_NVRTC to its path".to_string())
        })
        .clone()
}

/// Hash of a module's source and target, for the cache key (FNV-1a, stable across builds).
fn source_hash(text: &str, arch: &str) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in text.bytes().chain([0u8]).chain(arch.bytes()) {
        h ^= b as u64;
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

/// Where compiled kernels are cached: $XDG_CACHE_HOME/moescope or ~/.cache/moescope.
pub fn cache_dir() -> Option<PathBuf> {
    if let Some(x) = std::env::var_os("XDG_CACHE_HOME").filter(|x| !x.is_empty()) {
        return Some(Path::new(&x).join("moescope"));
    }
    std::env::var_os("HOME").map(|h| Path::new(&h).join(".cache/moescope"))
}

/// Compiles one module with NVRTC for `arch` (e.g. "sm_90") to a CUBIN.
pub fn compile(module: Module, arch: &str) -> Result<Vec<u8>> {
    compile_source(&full_source(module), module.name(), arch)
}

/// Compiles CUDA C++ `text` (named `name`.cu in messages) with NVRTC for `arch` to a CUBIN.
pub fn compile_source(text: &str, name: &str, arch: &str) -> Result<Vec<u8>> {
    nvrtc_available().map_err(|e| anyhow!(e))?;
    use cudarc::nvrtc::{result, sys};
    let src = CString::new(text).map_err(|_| anyhow!("kernel {name} holds a NUL byte"))?;
    let file = CString::new(format!("{name}.cu")).map_err(|_| anyhow!("bad kernel name {name}"))?;
    let prog = result::create_program(&src, Some(&file))
        .map_err(|e| anyhow!("NVRTC could not create program {name}: {e:?}"))?;
    let options = [
        format!("--gpu-architecture={arch}"),
        "--std=c++17".to_string(),
        "-default-device".to_string(),
    ];
    // SAFETY: `prog` was just created and is destroyed below exactly once.
    let compiled = unsafe { result::compile_program(prog, &options) };
    let out = match compiled {
        Ok(()) => cubin(prog),
        Err(e) => {
            let log = unsafe { result::get_program_log(prog) }
                .map(|raw| {
                    unsafe { CStr::from_ptr(raw.as_ptr()) }
                        .to_string_lossy()
                        .into_owned()
                })
                .unwrap_or_default();
            Err(anyhow!(
                "NVRTC failed to compile {name}.cu for {arch}: {e:?}\n{log}"
            ))
        }
    };
    // SAFETY: created above, not destroyed before.
    let _ = unsafe { result::destroy_program(prog) };
    return out;

    fn cubin(prog: sys::nvrtcProgram) -> Result<Vec<u8>> {
        let mut size = 0usize;
        // SAFETY: prog compiled successfully; the buffer has the size NVRTC reports.
        unsafe { sys::nvrtcGetCUBINSize(prog, &mut size) }
            .result()
            .map_err(|e| anyhow!("NVRTC gave no CUBIN size: {e:?}"))?;
        let mut buf = vec![0u8; size];
        unsafe { sys::nvrtcGetCUBIN(prog, buf.as_mut_ptr() as *mut std::ffi::c_char) }
            .result()
            .map_err(|e| anyhow!("NVRTC gave no CUBIN: {e:?}"))?;
        if buf.is_empty() {
            bail!("NVRTC returned an empty CUBIN");
        }
        Ok(buf)
    }
}

/// A module's CUBIN for `arch`, from the disk cache or freshly compiled (and then cached; a cache
/// that cannot be written is skipped silently, it only saves time).
pub fn cubin_cached(module: Module, arch: &str) -> Result<Vec<u8>> {
    let key = source_hash(&full_source(module), arch);
    let path = cache_dir().map(|d| d.join(format!("{}-{arch}-{key:016x}.cubin", module.name())));
    if let Some(p) = &path {
        if let Ok(bytes) = std::fs::read(p) {
            if !bytes.is_empty() {
                return Ok(bytes);
            }
        }
    }
    let bytes =
        compile(module, arch).with_context(|| format!("kernel module {}", module.name()))?;
    if let Some(p) = &path {
        if let Some(dir) = p.parent() {
            if std::fs::create_dir_all(dir).is_ok() {
                let tmp = p.with_extension(format!("tmp{}", std::process::id()));
                if std::fs::write(&tmp, &bytes).is_ok() {
                    let _ = std::fs::rename(&tmp, p);
                }
            }
        }
    }
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cache_key_changes_with_source_and_arch() {
        let a = source_hash("kernel", "sm_90");
        assert_eq!(a, source_hash("kernel", "sm_90"));
        assert_ne!(a, source_hash("kernel ", "sm_90"));
        assert_ne!(a, source_hash("kernel", "sm_100"));
    }

    #[test]
    fn every_module_is_self_contained() {
        for &m in Module::ALL {
            // Self-contained: NVRTC from pip has no CUDA headers.
            assert!(
                !full_source(m).contains("#include"),
                "kernels/{}.cu includes a header",
                m.name()
            );
        }
    }
}

//! Every example kernel (examples/kernels/*.cu) compiles through NVRTC against the ABI header
//! without a GPU, declares the conventions its comment claims, and a broken kernel's error names
//! its file and line.

use moescope::engine::config::{MoeConfig, PRESET_NAMES};
use moescope::engine::cuda::loader;
use moescope::engine::cuda::user_kernel::{self, Conventions, LogitsDtype, RouterArgs};
use std::path::{Path, PathBuf};

fn nvrtc_or_skip() -> bool {
    match loader::nvrtc_available() {
        Ok(_) => true,
        Err(why) => {
            println!("skipped: {why}");
            false
        }
    }
}

fn examples() -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir("examples/kernels")
        .expect("examples/kernels")
        .map(|e| e.expect("dir entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "cu"))
        .collect();
    v.sort();
    v
}

/// What each example declares: (appends shared, rsf in router).
fn declared(name: &str) -> Option<(bool, bool)> {
    Some(match name {
        "fused_router.cu" => (true, true),
        "bug_shared_inv_rsf.cu" => (true, true),
        "bug_rsf_twice.cu" => (true, false),
        "bug_hardcoded_2_5.cu" => (true, false),
        "bug_shared_dropped.cu" => (true, true),
        "bug_group_tie.cu" => (true, true),
        "bug_shared_marker_twice.cu" => (true, true),
        "bug_rsf_ignored.cu" => (true, true),
        _ => return None,
    })
}

#[test]
fn every_example_compiles_and_declares_its_conventions() {
    if !nvrtc_or_skip() {
        return;
    }
    let cfg = MoeConfig::preset("deepseek-v3").unwrap();
    let files = examples();
    assert!(
        files.len() >= 9,
        "examples/kernels holds {} .cu files",
        files.len()
    );
    for path in files {
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        if name == "so_router.cu" {
            // The .so example: its device code through NVRTC (the host launcher is nvcc's).
            let text = std::fs::read_to_string(&path).unwrap();
            let opts = vec![
                "--gpu-architecture=sm_90".to_string(),
                "--std=c++17".to_string(),
                "-default-device".to_string(),
                "--include-path=examples/kernels".to_string(),
            ];
            let (ptx, _) = user_kernel::nvrtc(&text, &path.display().to_string(), &opts)
                .unwrap_or_else(|e| panic!("{}: {e:#}", path.display()));
            assert!(
                ptx.contains("so_router_kernel"),
                "{name}: no kernel in the PTX"
            );
            continue;
        }
        let compiled = user_kernel::compile_cu(&path, &cfg, LogitsDtype::F32, "sm_90")
            .unwrap_or_else(|e| panic!("{e:#}"));
        assert_eq!(&compiled.cubin[..4], b"\x7fELF", "{name}");
        let (shared, rsf) =
            declared(&name).unwrap_or_else(|| panic!("{name}: add it to `declared`"));
        let conv = Conventions::from_bits(compiled.info.conventions).unwrap();
        assert_eq!(
            (conv.appends_shared, conv.rsf_in_router),
            (shared, rsf),
            "{name}"
        );
    }
}

#[test]
fn the_fused_example_compiles_for_every_preset_and_bf16() {
    if !nvrtc_or_skip() {
        return;
    }
    let path = Path::new("examples/kernels/fused_router.cu");
    for &preset in PRESET_NAMES {
        let cfg = MoeConfig::preset(preset).unwrap();
        for dtype in [LogitsDtype::F32, LogitsDtype::Bf16] {
            user_kernel::compile_cu(path, &cfg, dtype, "sm_90")
                .unwrap_or_else(|e| panic!("{preset} {dtype:?}: {e:#}"));
        }
    }
}

#[test]
fn a_broken_kernel_names_its_file_and_line() {
    if !nvrtc_or_skip() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("broken.cu");
    std::fs::write(
        &path,
        "#include \"moescope_router.h\"\nMOESCOPE_DECLARE_ROUTER(0, 32, 1);\n\nextern \"C\" __global__ void moescope_router(const MoescopeRouterArgs a) {\n    a.ids[0] = not_declared_here;\n}\n",
    )
    .unwrap();
    let cfg = MoeConfig::preset("deepseek-v3").unwrap();
    let err = match user_kernel::compile_cu(&path, &cfg, LogitsDtype::F32, "sm_90") {
        Ok(_) => panic!("a broken kernel compiled"),
        Err(e) => format!("{e:#}"),
    };
    let want = format!("{}:5: error", path.display());
    assert!(err.contains(&want), "expected `{want}` in:\n{err}");
    assert!(err.contains("not_declared_here"), "{err}");
}

#[test]
fn a_kernel_without_its_declaration_or_entry_point_is_refused() {
    if !nvrtc_or_skip() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let cfg = MoeConfig::preset("deepseek-v3").unwrap();
    let cases = [
        ("nodecl.cu", "extern \"C\" __global__ void moescope_router(int x) {}\n", "MOESCOPE_DECLARE_ROUTER"),
        ("noentry.cu", "#include \"moescope_router.h\"\nMOESCOPE_DECLARE_ROUTER(0, 32, 1);\nextern \"C\" __global__ void other(int x) {}\n", "no entry point"),
        ("badbits.cu", "#include \"moescope_router.h\"\nMOESCOPE_DECLARE_ROUTER(8, 32, 1);\nextern \"C\" __global__ void moescope_router(const MoescopeRouterArgs a) {}\n", "unknown convention bits"),
        ("geometry.cu", "#include \"moescope_router.h\"\nMOESCOPE_DECLARE_ROUTER(0, 0, 1);\nextern \"C\" __global__ void moescope_router(const MoescopeRouterArgs a) {}\n", "launch geometry"),
    ];
    for (name, text, want) in cases {
        let path = dir.path().join(name);
        std::fs::write(&path, text).unwrap();
        let err = match user_kernel::compile_cu(&path, &cfg, LogitsDtype::F32, "sm_90") {
            Ok(_) => panic!("{name} was accepted"),
            Err(e) => format!("{e:#}"),
        };
        assert!(err.contains(want) && err.contains(name), "{name}: {err}");
    }
}

/// NVRTC has no `offsetof`; instead an aggregate initialised in the Rust struct's field order
/// must give every named C field its value and size. Same order, sizes and total size under the
/// C rules that #[repr(C)] follows means the same layout.
#[test]
fn the_c_header_and_the_rust_struct_agree() {
    if !nvrtc_or_skip() {
        return;
    }
    use std::mem::{offset_of, size_of};
    // (field, its offset in Rust, its size, a distinct value)
    let fields = [
        ("abi_version", offset_of!(RouterArgs, abi_version), 4, "1u"),
        ("struct_size", offset_of!(RouterArgs, struct_size), 4, "2u"),
        (
            "logits",
            offset_of!(RouterArgs, logits),
            8,
            "(const void*)0",
        ),
        ("bias", offset_of!(RouterArgs, bias), 8, "(const float*)0"),
        (
            "shared_gate",
            offset_of!(RouterArgs, shared_gate),
            8,
            "(const float*)0",
        ),
        ("ids", offset_of!(RouterArgs, ids), 8, "(int32_t*)0"),
        ("weights", offset_of!(RouterArgs, weights), 8, "(float*)0"),
        ("tokens", offset_of!(RouterArgs, tokens), 8, "3"),
        ("logits_dtype", offset_of!(RouterArgs, logits_dtype), 4, "4"),
        ("n_experts", offset_of!(RouterArgs, n_experts), 4, "5"),
        ("n_group", offset_of!(RouterArgs, n_group), 4, "6"),
        ("topk_group", offset_of!(RouterArgs, topk_group), 4, "7"),
        ("top_k", offset_of!(RouterArgs, top_k), 4, "8"),
        ("n_shared", offset_of!(RouterArgs, n_shared), 4, "9"),
        ("out_stride", offset_of!(RouterArgs, out_stride), 4, "10"),
        ("scoring", offset_of!(RouterArgs, scoring), 4, "11"),
        ("renormalize", offset_of!(RouterArgs, renormalize), 4, "12"),
        ("group_score", offset_of!(RouterArgs, group_score), 4, "13"),
        (
            "routed_scaling_factor",
            offset_of!(RouterArgs, routed_scaling_factor),
            8,
            "14.5",
        ),
    ];
    // The list is in the Rust declaration order and covers the whole struct without gaps.
    let mut end = 0;
    for (name, off, size, _) in fields {
        assert_eq!(off, end, "{name}: the list is not in declaration order");
        end = off + size;
    }
    assert_eq!(end, size_of::<RouterArgs>());
    let values: Vec<&str> = fields.iter().map(|f| f.3).collect();
    let mut src = format!(
        "#include \"moescope_router.h\"\nconstexpr MoescopeRouterArgs x = {{{}}};\nstatic_assert(sizeof(MoescopeRouterArgs) == {end}, \"size\");\n",
        values.join(", ")
    );
    for (name, _, size, value) in fields {
        src.push_str(&format!(
            "static_assert(sizeof(x.{name}) == {size}, \"{name} size\");\n"
        ));
        if !value.contains('*') {
            src.push_str(&format!(
                "static_assert(x.{name} == {value}, \"{name} order\");\n"
            ));
        }
    }
    src.push_str("static_assert(sizeof(MoescopeRouterInfo) == 16, \"info\");\n");
    src.push_str("static_assert(MOESCOPE_ROUTER_ABI_VERSION == 1u, \"version\");\n");
    let opts = vec![
        "--gpu-architecture=sm_90".to_string(),
        "--std=c++17".to_string(),
        "-default-device".to_string(),
    ];
    user_kernel::nvrtc(&src, "layout.cu", &opts).unwrap_or_else(|e| panic!("{e:#}\n{src}"));
    assert_eq!(user_kernel::ABI_VERSION, 1);
}

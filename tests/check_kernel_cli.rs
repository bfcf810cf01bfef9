//! `moescope check --kernel` as a user runs it, on a machine without a GPU: a .cu's compile error
//! (file:line) and a .so's missing entry point or wrong ABI version show before any GPU is
//! needed; a missing file or a wrong kind of file is one clear error; a correct kernel gets as far
//! as asking for a device. Every failure exits non-zero without a panic.

use std::path::Path;
use std::process::{Command, Output};

fn moescope(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_moescope"))
        .args(args)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .unwrap()
}

fn stderr_of_failure(out: &Output) -> String {
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(!out.status.success(), "succeeded; stderr: {stderr}");
    assert!(!stderr.contains("panicked"), "panic: {stderr}");
    stderr
}

fn nvrtc() -> bool {
    let ok = moescope::engine::cuda::loader::nvrtc_available().is_ok();
    if !ok {
        println!("skipped: no NVRTC");
    }
    ok
}

fn gpu() -> bool {
    moescope::engine::cuda::probe().is_ok()
}

#[test]
fn a_missing_or_foreign_file_is_named() {
    let err = stderr_of_failure(&moescope(&["check", "--kernel", "no/such/router.cu"]));
    assert!(
        err.contains("no/such/router.cu") && err.contains("no such file"),
        "{err}"
    );
    let err = stderr_of_failure(&moescope(&["check", "--kernel", "Cargo.toml"]));
    assert!(
        err.contains("Cargo.toml") && err.contains(".cu file"),
        "{err}"
    );
}

#[test]
fn a_compile_error_names_file_and_line_without_a_gpu() {
    if !nvrtc() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("typo.cu");
    std::fs::write(
        &path,
        "#include \"moescope_router.h\"\nMOESCOPE_DECLARE_ROUTER(0, 32, 1);\nextern \"C\" __global__ void moescope_router(const MoescopeRouterArgs a) {\n    a.ids[0] = a.top_kk;\n}\n",
    )
    .unwrap();
    let err = stderr_of_failure(&moescope(&["check", "--kernel", path.to_str().unwrap()]));
    assert!(
        err.contains(&format!("{}:4: error", path.display())),
        "{err}"
    );
    assert!(err.contains("top_kk"), "{err}");
    assert!(
        !err.contains("CUDA device"),
        "the compile error must come first: {err}"
    );
}

#[test]
fn a_correct_kernel_compiles_and_then_needs_a_device() {
    if !nvrtc() || gpu() {
        println!("skipped: needs NVRTC and no GPU (the GPU run is tests/cuda_user_kernel.rs)");
        return;
    }
    let err = stderr_of_failure(&moescope(&[
        "check",
        "--kernel",
        "examples/kernels/fused_router.cu",
    ]));
    assert!(
        err.contains("fused_router.cu") && err.contains("CUDA device"),
        "{err}"
    );
}

/// Builds a shared library from C source with the system compiler, or None without one.
fn shared_library(dir: &Path, name: &str, source: &str) -> Option<String> {
    let src = dir.join(format!("{name}.c"));
    let out = dir.join(format!("lib{name}.so"));
    std::fs::write(&src, source).unwrap();
    let include = Path::new(env!("CARGO_MANIFEST_DIR")).join("include");
    let status = Command::new("cc")
        .args(["-shared", "-fPIC", "-I"])
        .arg(&include)
        .arg("-o")
        .arg(&out)
        .arg(&src)
        .status()
        .ok()?;
    status.success().then(|| out.display().to_string())
}

#[test]
fn a_library_without_the_entry_points_or_of_another_version_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let Some(empty) = shared_library(dir.path(), "empty", "int unrelated(void) { return 0; }\n")
    else {
        println!("skipped: no C compiler to build a test library");
        return;
    };
    let err = stderr_of_failure(&moescope(&["check", "--kernel", &empty]));
    assert!(
        err.contains("libempty.so") && err.contains("moescope_router_get_info"),
        "{err}"
    );

    let v2 = "#include \"moescope_router.h\"\nstatic const MoescopeRouterInfo info = {2u, 0u, 0u, 0u};\nconst MoescopeRouterInfo* moescope_router_get_info(void) { return &info; }\nint moescope_router_launch(const MoescopeRouterArgs* a, void* s) { return 0; }\n";
    let lib = shared_library(dir.path(), "v2", v2).expect("the same compiler built the first");
    let err = stderr_of_failure(&moescope(&["check", "--kernel", &lib]));
    assert!(
        err.contains("libv2.so") && err.contains("version 2"),
        "{err}"
    );

    let no_launch = "#include \"moescope_router.h\"\nstatic const MoescopeRouterInfo info = {1u, 0u, 0u, 0u};\nconst MoescopeRouterInfo* moescope_router_get_info(void) { return &info; }\n";
    let lib = shared_library(dir.path(), "nolaunch", no_launch).unwrap();
    let err = stderr_of_failure(&moescope(&["check", "--kernel", &lib]));
    assert!(err.contains("moescope_router_launch"), "{err}");
}

#[test]
fn run_with_a_kernel_on_the_cpu_backend_says_it_needs_cuda() {
    let out = moescope(&[
        "run",
        "--headless",
        "--steps",
        "1",
        "--backend",
        "cpu",
        "--kernel",
        "examples/kernels/fused_router.cu",
    ]);
    let err = stderr_of_failure(&out);
    assert!(
        err.contains("fused_router.cu") && err.contains("CUDA backend only"),
        "{err}"
    );
    let err = stderr_of_failure(&moescope(&["run", "--headless", "--kernel", "missing.cu"]));
    assert!(
        err.contains("missing.cu") && err.contains("no such file"),
        "{err}"
    );
}

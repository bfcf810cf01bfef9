//! Every kernel module compiles for sm_90 through the backend's own loader (NVRTC, no GPU needed),
//! the CUBIN holds every function the registry lists, and the argument structs NVRTC sees are laid
//! out as Rust laid them out (the loader's static_asserts, which a wrong layout trips).

use moescope::engine::cuda::kernels::{ArgsInfo, FillArgs, Kernel, Module, RouterFusedArgs};
use moescope::engine::cuda::loader;

fn nvrtc() -> bool {
    match loader::nvrtc_available() {
        Ok(_) => true,
        Err(why) => {
            println!("skipped: {why}");
            false
        }
    }
}

/// Plain sm_90 (the mma.sync kernels everywhere) and sm_90a (what a Hopper card compiles: the
/// 64- and 128-row GEMM tiles on wgmma).
#[test]
fn every_kernel_compiles_for_sm_90_and_sm_90a() {
    if !nvrtc() {
        return;
    }
    for (&module, arch) in Module::ALL
        .iter()
        .flat_map(|m| [(m, "sm_90"), (m, "sm_90a")])
    {
        let cubin = loader::compile(module, arch)
            .unwrap_or_else(|e| panic!("kernels/{}.cu for {arch}: {e:#}", module.name()));
        assert_eq!(&cubin[..4], b"\x7fELF", "{} is not a CUBIN", module.name());
        for k in module.kernels() {
            let f = k.function;
            assert!(
                cubin.windows(f.len()).any(|w| w == f.as_bytes()),
                "kernels/{}.cu has no function {f}",
                module.name()
            );
        }
        // Every struct of the module is checked against its Rust layout.
        let text = loader::full_source(module);
        for k in module.kernels() {
            let want = format!("sizeof({}) == {}", k.args.name, k.args.size);
            assert!(text.contains(&want), "{} has no layout check", k.args.name);
        }
    }
}

/// `info` with field `field` declared in C as `c_type` (None: as registered), compiled alone:
/// NVRTC's verdict.
fn compile_as(
    info: ArgsInfo,
    field: usize,
    c_type: Option<&'static str>,
) -> anyhow::Result<Vec<u8>> {
    let mut fields = info.fields.to_vec();
    if let Some(c) = c_type {
        fields[field].c_type = c;
    }
    let moved = ArgsInfo {
        fields: Box::leak(fields.into_boxed_slice()),
        ..info
    };
    let text = format!(
        "{}\n{}\n{}",
        loader::COMMON,
        moved.c_struct(),
        moved.c_layout_asserts()
    );
    loader::compile_source(&text, "layout", "sm_90")
}

#[test]
fn a_c_struct_laid_out_unlike_the_rust_one_does_not_compile() {
    if !nvrtc() {
        return;
    }
    // As declared: compiles (bools, doubles and pointers mixed, so padding is exercised).
    compile_as(RouterFusedArgs::ARGS, 0, None).expect("the declared layout compiles");
    // A 64-bit value where Rust has 32 bits (every later offset would shift).
    let err = compile_as(FillArgs::ARGS, 2, Some("u64")).unwrap_err();
    let msg = format!("{err:#}");
    assert!(
        msg.contains("FillArgs.value (at byte 16): size or alignment differs"),
        "{msg}"
    );
    // An int flag where Rust has a bool.
    let err = compile_as(RouterFusedArgs::ARGS, 3, Some("int")).unwrap_err();
    assert!(
        format!("{err:#}").contains("RouterFusedArgs.group_top2"),
        "{err:#}"
    );
}

//! Every kernel module compiles for sm_90 through the backend's own loader (NVRTC, no GPU needed).

use moescope::engine::cuda::loader;

#[test]
fn every_kernel_compiles_for_sm_90() {
    if let Err(why) = loader::nvrtc_available() {
        println!("skipped: {why}");
        return;
    }
    for module in loader::MODULES {
        let cubin = loader::compile(module, "sm_90")
            .unwrap_or_else(|e| panic!("kernels/{}.cu: {e:#}", module.name));
        // An ELF image that names every function the backend loads.
        assert_eq!(&cubin[..4], b"\x7fELF", "{} is not a CUBIN", module.name);
        for f in module.functions {
            assert!(
                cubin.windows(f.len()).any(|w| w == f.as_bytes()),
                "kernels/{}.cu has no function {f}",
                module.name
            );
        }
    }
}

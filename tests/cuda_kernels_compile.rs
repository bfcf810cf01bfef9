//! Every kernel module compiles for sm_90 through the backend's own loader (NVRTC, no GPU needed),
//! and the CUBIN holds every function the backend loads from it.

use moescope::engine::cuda::kernels::{Module, KERNELS};
use moescope::engine::cuda::loader;

#[test]
fn every_kernel_compiles_for_sm_90() {
    if let Err(why) = loader::nvrtc_available() {
        println!("skipped: {why}");
        return;
    }
    for &module in Module::ALL {
        let cubin = loader::compile(module, "sm_90")
            .unwrap_or_else(|e| panic!("kernels/{}.cu: {e:#}", module.name()));
        assert_eq!(&cubin[..4], b"\x7fELF", "{} is not a CUBIN", module.name());
        let typed = KERNELS
            .iter()
            .filter(|k| k.module == module)
            .map(|k| k.function);
        for f in typed.chain(loader::legacy_functions(module).iter().copied()) {
            assert!(
                cubin.windows(f.len()).any(|w| w == f.as_bytes()),
                "kernels/{}.cu has no function {f}",
                module.name()
            );
        }
    }
}

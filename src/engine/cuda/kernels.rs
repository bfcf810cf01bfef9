//! The kernel registry. Every kernel takes ONE argument, a struct declared here with
//! [`kernels!`]: the macro defines the Rust `#[repr(C)]` struct and the identical C struct that
//! the loader prepends to the kernel's module (so the two can never disagree), and lists the
//! kernel under its module. A launch is `gpu.launch(grid, Args { .. })`: the argument types are
//! checked by the compiler, and every registered kernel is loaded (or fails) when the device
//! opens, not at its first call.
//!
//! In C the struct is `NameArgs` and the kernel reads its fields: `extern "C" __global__ void
//! silu_mul(const SiluMulArgs a) { .. a.rows .. }`.

use cudarc::driver::{CudaSlice, DevicePtr, DeviceRepr};
use std::marker::PhantomData;

/// A device address of a buffer of `T` (0 is a null pointer the kernel checks for).
#[repr(transparent)]
pub struct DevPtr<T> {
    addr: u64,
    _elem: PhantomData<fn() -> T>,
}

impl<T> Clone for DevPtr<T> {
    fn clone(&self) -> Self {
        *self
    }
}
impl<T> Copy for DevPtr<T> {}
impl<T> std::fmt::Debug for DevPtr<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:#x}", self.addr)
    }
}
impl<T> PartialEq for DevPtr<T> {
    fn eq(&self, other: &Self) -> bool {
        self.addr == other.addr
    }
}

impl<T> DevPtr<T> {
    pub const NULL: DevPtr<T> = DevPtr {
        addr: 0,
        _elem: PhantomData,
    };

    /// The start of `buf`. The backend uses one stream with event tracking off, so the
    /// address needs no synchronization guard.
    pub fn of(stream: &cudarc::driver::CudaStream, buf: &CudaSlice<T>) -> DevPtr<T> {
        let (addr, _sync) = buf.device_ptr(stream);
        DevPtr {
            addr,
            _elem: PhantomData,
        }
    }

    /// `of`, or NULL for `None`.
    pub fn of_opt(stream: &cudarc::driver::CudaStream, buf: Option<&CudaSlice<T>>) -> DevPtr<T> {
        buf.map(|b| DevPtr::of(stream, b)).unwrap_or(DevPtr::NULL)
    }

    /// The address `elems` elements further on.
    pub fn at(self, elems: usize) -> DevPtr<T> {
        DevPtr {
            addr: self.addr + (elems * std::mem::size_of::<T>()) as u64,
            _elem: PhantomData,
        }
    }

    /// The same address as a pointer to `U` (a reinterpretation, as a C cast).
    pub fn cast<U>(self) -> DevPtr<U> {
        DevPtr {
            addr: self.addr,
            _elem: PhantomData,
        }
    }

    pub fn addr(self) -> u64 {
        self.addr
    }

    pub fn is_null(self) -> bool {
        self.addr == 0
    }
}

// SAFETY: a u64 address, passed by value.
unsafe impl<T> DeviceRepr for DevPtr<T> {}

/// The C spelling of a field type in the generated structs.
pub trait CType {
    const C: &'static str;
}

macro_rules! c_types {
    ($($t:ty => $c:literal),* $(,)?) => { $(impl CType for $t { const C: &'static str = $c; })* };
}
c_types!(
    u64 => "u64", i64 => "i64", u32 => "u32", i32 => "int", f32 => "float", f64 => "double",
    DevPtr<f32> => "float*", DevPtr<f64> => "double*", DevPtr<u16> => "bf16_t*",
    DevPtr<u32> => "u32*", DevPtr<i32> => "int*", DevPtr<u8> => "unsigned char*",
    DevPtr<u64> => "u64*",
);

/// A kernel source file (kernels/NAME.cu), compiled with `common.cu` and its argument structs
/// prepended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Module {
    Init,
    RouterFused,
    RouterUnfused,
    Moe,
    Fp8,
}

impl Module {
    pub const ALL: &'static [Module] = &[
        Module::Init,
        Module::RouterFused,
        Module::RouterUnfused,
        Module::Moe,
        Module::Fp8,
    ];

    /// The file name without `.cu`.
    pub fn name(self) -> &'static str {
        match self {
            Module::Init => "init",
            Module::RouterFused => "router_fused",
            Module::RouterUnfused => "router_unfused",
            Module::Moe => "moe",
            Module::Fp8 => "fp8",
        }
    }

    pub fn source(self) -> &'static str {
        match self {
            Module::Init => include_str!("../../../kernels/init.cu"),
            Module::RouterFused => include_str!("../../../kernels/router_fused.cu"),
            Module::RouterUnfused => include_str!("../../../kernels/router_unfused.cu"),
            Module::Moe => include_str!("../../../kernels/moe.cu"),
            Module::Fp8 => include_str!("../../../kernels/fp8.cu"),
        }
    }

    /// The C structs of this module's kernels, as `kernels!` declares them.
    pub fn arg_structs(self) -> String {
        KERNELS
            .iter()
            .filter(|k| k.module == self)
            .map(|k| k.c_struct())
            .collect::<Vec<_>>()
            .join("\n")
    }
}

/// What the registry knows of one kernel.
#[derive(Clone, Copy, Debug)]
pub struct KernelInfo {
    pub id: KernelId,
    pub module: Module,
    /// The `extern "C"` function name.
    pub function: &'static str,
    /// The argument struct's name (the same in Rust and C).
    pub args: &'static str,
    /// (field, C type), in order.
    pub fields: &'static [(&'static str, &'static str)],
}

impl KernelInfo {
    /// `struct NameArgs { float* h; u64 rows; };`
    pub fn c_struct(&self) -> String {
        let fields: Vec<String> = self
            .fields
            .iter()
            .map(|(name, ty)| format!("    {ty} {name};"))
            .collect();
        format!("struct {} {{\n{}\n}};", self.args, fields.join("\n"))
    }
}

/// A kernel's argument struct.
pub trait Kernel: DeviceRepr + Copy {
    const INFO: KernelInfo;
}

/// Declares kernels: `Module::function(ArgsName { field: Type, .. });` each.
macro_rules! kernels {
    ($( $(#[$doc:meta])* $module:ident :: $function:ident ( $args:ident {
        $( $(#[$fdoc:meta])* $field:ident : $ty:ty ),* $(,)?
    } ); )*) => {
        /// Every registered kernel, by its argument struct's name.
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
        pub enum KernelId { $( $args ),* }

        $(
            $(#[$doc])*
            #[repr(C)]
            #[derive(Clone, Copy, Debug)]
            pub struct $args { $( $(#[$fdoc])* pub $field: $ty, )* }

            // SAFETY: #[repr(C)] of plain integers, floats and device addresses; the kernel
            // declares the identical struct (generated from this one).
            unsafe impl DeviceRepr for $args {}

            impl Kernel for $args {
                const INFO: KernelInfo = KernelInfo {
                    id: KernelId::$args,
                    module: Module::$module,
                    function: stringify!($function),
                    args: stringify!($args),
                    fields: &[$( (stringify!($field), <$ty as CType>::C) ),*],
                };
            }
        )*

        /// The registry, in declaration order (`KernelId as usize` indexes it).
        pub const KERNELS: &[KernelInfo] = &[ $( <$args as Kernel>::INFO ),* ];
    };
}

kernels! {
    /// Fills `n` 32-bit words with `value` (zeroing, ones, NaN poison before a check).
    Init::fill_u32(FillArgs { out: DevPtr<u32>, n: u64, value: u32 });
    /// A tensor of `n` bf16 values, uniform in ±amp (synthetic::tensor).
    Init::init_uniform_bf16(InitUniformArgs {
        out: DevPtr<u16>, n: u64, seed: u64, tensor: u64, amp: f32,
    });
    /// SwiGLU weights of `n_slots` experts from tensor slot `slot0` (synthetic::mlp).
    Init::init_mlp_bf16(InitMlpArgs {
        w13: DevPtr<u16>, w2: DevPtr<u16>, slot0: u64, n_slots: u64, inter: u64, hidden: u64,
        seed: u64, amp_in: f32, amp_down: f32,
    });
    /// Hidden states [tokens × hidden] of one step (synthetic::hidden_row).
    Init::init_hidden_bf16(InitHiddenArgs { out: DevPtr<u16>, n: u64, seed: u64, tensor: u64 });
    /// f32 → bf16, round to nearest even (captured hidden states).
    Init::f32_to_bf16_kernel(ToBf16Args { input: DevPtr<f32>, out: DevPtr<u16>, n: u64 });
    /// bf16 [rows × cols] → e4m3 and f32 scales per row and group of 128 (weights::fp8).
    Fp8::fp8_quant_rows(Fp8QuantArgs {
        input: DevPtr<u16>, out: DevPtr<u8>, scales: DevPtr<f32>, rows: u64, cols: u64,
    });
    /// SiLU·mul of the up projection's f32 [rows × 2I], rounded to bf16, quantized as above.
    Fp8::fp8_silu_mul_quant(Fp8SiluArgs {
        h: DevPtr<f32>, out: DevPtr<u8>, scales: DevPtr<f32>, rows: u64, inter: u64,
    });
    /// Tile offsets [groups + 1] for `bm`-row tiles from row offsets [groups + 1].
    Fp8::fp8_tile_scan(Fp8TilesArgs {
        offsets: DevPtr<i32>, tiles: DevPtr<i32>, groups: i32, bm: i32,
    });
    /// FP8 grouped GEMM with 16-row tiles (small batches).
    Fp8::grouped_gemm_fp8_m16(Fp8GemmM16Args {
        a: DevPtr<u8>, a_scales: DevPtr<f32>, a_mode: i32, a_map: DevPtr<i32>, a_div: i32,
        b0: DevPtr<u8>, b1: DevPtr<u8>, bs0: DevPtr<f32>, bs1: DevPtr<f32>, n_first: i32,
        b_stride: i64, bs_stride: i64, c: DevPtr<f32>, offsets: DevPtr<i32>, tiles: DevPtr<i32>,
        groups: i32, n: i32, k: i32, k_splits: i32, c_split: i64,
    });
    /// FP8 grouped GEMM with 64-row tiles.
    Fp8::grouped_gemm_fp8_m64(Fp8GemmM64Args {
        a: DevPtr<u8>, a_scales: DevPtr<f32>, a_mode: i32, a_map: DevPtr<i32>, a_div: i32,
        b0: DevPtr<u8>, b1: DevPtr<u8>, bs0: DevPtr<f32>, bs1: DevPtr<f32>, n_first: i32,
        b_stride: i64, bs_stride: i64, c: DevPtr<f32>, offsets: DevPtr<i32>, tiles: DevPtr<i32>,
        groups: i32, n: i32, k: i32, k_splits: i32, c_split: i64,
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_registry_is_indexed_by_id() {
        for (i, k) in KERNELS.iter().enumerate() {
            assert_eq!(k.id as usize, i, "{}", k.function);
        }
    }

    #[test]
    fn every_registered_kernel_takes_its_struct() {
        for k in KERNELS {
            let src = k.module.source();
            let want = format!("{}(const {} a)", k.function, k.args);
            assert!(
                src.contains(&want),
                "kernels/{}.cu lacks `{want}`",
                k.module.name()
            );
        }
    }

    #[test]
    fn c_structs_list_every_field_in_order() {
        let s = <FillArgs as Kernel>::INFO.c_struct();
        assert_eq!(
            s,
            "struct FillArgs {\n    u32* out;\n    u64 n;\n    u32 value;\n};"
        );
        assert_eq!(std::mem::size_of::<FillArgs>(), 24);
    }
}

//! The kernel registry. Every kernel takes ONE argument, a struct declared in `registry.rs` with
//! [`kernels!`]: the macro defines the Rust `#[repr(C)]` struct and the identical C struct that
//! the loader prepends to the kernel's module, followed by `static_assert`s of its size and alignment
//! and its fields' as Rust laid them out (so NVRTC refuses a module whose structs disagree), the
//! launch geometry beside the struct, and the kernel functions that take it. A launch is
//! `gpu.launch(Args { .. })` (or `gpu.launch_fn(id, args)` where several functions take one
//! struct): the argument types are checked by the compiler, and every registered kernel is loaded
//! (or fails) when the device opens, not at its first call.
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

    /// A raw address (a foreign allocation; tests of pointer-dependent choices).
    pub fn from_addr(addr: u64) -> DevPtr<T> {
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

/// Router logits, f32 or bf16 (the kernel reads `logits_bf16`): `void*` in C.
pub type AnyPtr = DevPtr<std::ffi::c_void>;

/// The C spelling of a field type in the generated structs.
pub trait CType {
    const C: &'static str;
}

macro_rules! c_types {
    ($($t:ty => $c:literal),* $(,)?) => { $(impl CType for $t { const C: &'static str = $c; })* };
}
c_types!(
    u64 => "u64", i64 => "i64", u32 => "u32", i32 => "int", f32 => "float", f64 => "double",
    bool => "bool",
    DevPtr<f32> => "float*", DevPtr<f64> => "double*", DevPtr<u16> => "bf16_t*",
    DevPtr<u32> => "u32*", DevPtr<i32> => "int*", DevPtr<u8> => "unsigned char*",
    DevPtr<u64> => "u64*", DevPtr<[u32; 4]> => "uint4*", AnyPtr => "void*",
);

/// Launch geometry: blocks, threads per block, dynamic shared memory.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Grid {
    pub blocks: (u32, u32, u32),
    pub threads: u32,
    pub shared_bytes: u32,
}

impl Grid {
    pub fn x(blocks: u32, threads: u32) -> Grid {
        Grid {
            blocks: (blocks, 1, 1),
            threads,
            shared_bytes: 0,
        }
    }
    pub fn xy(x: u32, y: u32, threads: u32) -> Grid {
        Grid {
            blocks: (x, y, 1),
            threads,
            shared_bytes: 0,
        }
    }
    pub fn xyz(x: u32, y: u32, z: u32, threads: u32) -> Grid {
        Grid {
            blocks: (x, y, z),
            threads,
            shared_bytes: 0,
        }
    }
    pub fn with_shared(self, bytes: u32) -> Grid {
        Grid {
            shared_bytes: bytes,
            ..self
        }
    }
    /// A grid-stride kernel over `n` items: enough blocks to fill `sms` multiprocessors (16
    /// blocks each), fewer where `n` needs fewer.
    pub fn stride(n: usize, threads: u32, sms: u32) -> Grid {
        let want = n.div_ceil(threads as usize).max(1);
        Grid::x(want.min(sms as usize * 16) as u32, threads)
    }
    /// One thread per item (the kernel returns past `n`).
    pub fn per_item(n: usize, threads: u32) -> Grid {
        Grid::x(n.div_ceil(threads as usize) as u32, threads)
    }
    /// One warp per item, 8 warps a block.
    pub fn per_warp(n: usize) -> Grid {
        Grid::x((n * 32).div_ceil(256) as u32, 256)
    }
    pub fn is_empty(&self) -> bool {
        self.blocks.0 == 0 || self.blocks.1 == 0 || self.blocks.2 == 0
    }
}

/// A kernel source file (kernels/NAME.cu), compiled with `common.cu` and its argument structs
/// prepended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Module {
    Init,
    RouterFused,
    RouterUnfused,
    Moe,
    Reference,
    Fp8,
}

impl Module {
    pub const ALL: &'static [Module] = &[
        Module::Init,
        Module::RouterFused,
        Module::RouterUnfused,
        Module::Moe,
        Module::Reference,
        Module::Fp8,
    ];

    /// The file name without `.cu`.
    pub fn name(self) -> &'static str {
        match self {
            Module::Init => "init",
            Module::RouterFused => "router_fused",
            Module::RouterUnfused => "router_unfused",
            Module::Moe => "moe",
            Module::Reference => "reference",
            Module::Fp8 => "fp8",
        }
    }

    pub fn source(self) -> &'static str {
        match self {
            Module::Init => include_str!("../../../../kernels/init.cu"),
            Module::RouterFused => include_str!("../../../../kernels/router_fused.cu"),
            Module::RouterUnfused => include_str!("../../../../kernels/router_unfused.cu"),
            Module::Moe => include_str!("../../../../kernels/moe.cu"),
            Module::Reference => include_str!("../../../../kernels/reference.cu"),
            Module::Fp8 => include_str!("../../../../kernels/fp8.cu"),
        }
    }

    /// Shared device code compiled ahead of this module: the grouped GEMM's tile loop for the
    /// two modules whose kernels instantiate it.
    pub fn prelude(self) -> &'static str {
        match self {
            Module::Moe | Module::Fp8 => include_str!("../../../../kernels/grouped_gemm.cuh"),
            _ => "",
        }
    }

    /// The C structs of this module's kernels, as `kernels!` declares them, each with the
    /// assertions of its Rust layout.
    pub fn arg_structs(self) -> String {
        ARGS.iter()
            .filter(|a| a.module == self)
            .map(|a| format!("{}\n{}", a.c_struct(), a.c_layout_asserts()))
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// The registered kernel functions of this module.
    pub fn kernels(self) -> impl Iterator<Item = &'static KernelInfo> {
        KERNELS.iter().filter(move |k| k.args.module == self)
    }
}

/// One field of an argument struct: name, C type, and its layout in the Rust struct.
#[derive(Clone, Copy, Debug)]
pub struct Field {
    pub name: &'static str,
    pub c_type: &'static str,
    pub offset: usize,
    pub size: usize,
    pub align: usize,
}

/// What the registry knows of one argument struct.
#[derive(Clone, Copy, Debug)]
pub struct ArgsInfo {
    /// The struct's name (the same in Rust and C).
    pub name: &'static str,
    pub module: Module,
    pub fields: &'static [Field],
    pub size: usize,
    pub align: usize,
}

impl ArgsInfo {
    /// `struct NameArgs { float* h; u64 rows; };`
    pub fn c_struct(&self) -> String {
        let fields: Vec<String> = self
            .fields
            .iter()
            .map(|f| format!("    {} {};", f.c_type, f.name))
            .collect();
        format!("struct {} {{\n{}\n}};", self.name, fields.join("\n"))
    }

    /// `static_assert`s that the C compiler lays the struct out as Rust did: the size and
    /// alignment of the struct and of every field. NVRTC has no `offsetof`; equal field sizes and
    /// alignments give equal offsets, since `#[repr(C)]` is the C layout rule (the offsets are in
    /// the messages, for the reader).
    pub fn c_layout_asserts(&self) -> String {
        let n = self.name;
        let mut lines = vec![
            format!(
                "static_assert(sizeof({n}) == {}, \"{n}: size differs from the Rust struct\");",
                self.size
            ),
            format!(
                "static_assert(alignof({n}) == {}, \"{n}: alignment differs from the Rust struct\");",
                self.align
            ),
        ];
        for f in self.fields {
            let (name, off) = (f.name, f.offset);
            lines.push(format!(
                "static_assert(sizeof({n}::{name}) == {} && alignof(decltype({n}::{name})) == {}, \"{n}.{name} (at byte {off}): size or alignment differs from the Rust struct\");",
                f.size, f.align
            ));
        }
        lines.join("\n")
    }
}

/// What the registry knows of one kernel function.
#[derive(Clone, Copy, Debug)]
pub struct KernelInfo {
    pub id: KernelId,
    /// The `extern "C"` function name.
    pub function: &'static str,
    pub args: ArgsInfo,
}

/// A kernel argument struct: its layout, the functions that take it, its launch geometry.
pub trait Kernel: DeviceRepr + Copy {
    const ARGS: ArgsInfo;
    /// The functions taking this struct; `Gpu::launch` runs the first.
    const FUNCTIONS: &'static [KernelId];
    /// Blocks and threads for these arguments on a device of `sms` multiprocessors.
    fn grid(&self, sms: u32) -> Grid;
}

/// Declares argument structs and their kernels:
/// `Module::ArgsName { field: Type, .. } grid(a, sms) { expr } fn Id = function, ..;` each.
macro_rules! kernels {
    ($( $(#[$doc:meta])* $module:ident :: $args:ident {
        $( $(#[$fdoc:meta])* $field:ident : $ty:ty ),* $(,)?
    } grid($a:ident, $sms:ident) $grid:block
      fn $( $id:ident = $function:ident ),+ ; )*) => {
        /// Every registered kernel function.
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
        pub enum KernelId { $( $( $id, )+ )* }

        $(
            $(#[$doc])*
            #[repr(C)]
            #[derive(Clone, Copy, Debug)]
            pub struct $args { $( $(#[$fdoc])* pub $field: $ty, )* }

            // SAFETY: #[repr(C)] of plain integers, floats, bools and device addresses; the
            // kernel declares the identical struct (generated from this one, its layout asserted).
            unsafe impl cudarc::driver::DeviceRepr for $args {}

            impl Kernel for $args {
                const ARGS: ArgsInfo = ArgsInfo {
                    name: stringify!($args),
                    module: Module::$module,
                    fields: &[$( Field {
                        name: stringify!($field),
                        c_type: <$ty as CType>::C,
                        offset: std::mem::offset_of!($args, $field),
                        size: std::mem::size_of::<$ty>(),
                        align: std::mem::align_of::<$ty>(),
                    } ),*],
                    size: std::mem::size_of::<$args>(),
                    align: std::mem::align_of::<$args>(),
                };
                const FUNCTIONS: &'static [KernelId] = &[ $( KernelId::$id ),+ ];
                #[allow(unused_variables)]
                fn grid(&self, $sms: u32) -> Grid {
                    let $a = self;
                    $grid
                }
            }
        )*

        /// Every argument struct, in declaration order.
        pub const ARGS: &[ArgsInfo] = &[ $( <$args as Kernel>::ARGS ),* ];

        /// Every kernel function, in declaration order (`KernelId as usize` indexes it).
        pub const KERNELS: &[KernelInfo] = &[ $( $( KernelInfo {
            id: KernelId::$id,
            function: stringify!($function),
            args: <$args as Kernel>::ARGS,
        }, )+ )* ];
    };
}
// After the macro: `registry` invokes it.
mod registry;
pub use registry::*;

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
            let src = k.args.module.source();
            let want = format!("{}(const {} a)", k.function, k.args.name);
            assert!(
                src.contains(&want),
                "kernels/{}.cu lacks `{want}`",
                k.args.module.name()
            );
        }
    }

    #[test]
    fn every_kernel_in_a_module_is_registered() {
        // An `extern "C" __global__` function nobody registered could only be launched untyped.
        for &m in Module::ALL {
            for decl in m.source().split("extern \"C\" __global__").skip(1) {
                let decl = decl.trim_start().trim_start_matches("void").trim_start();
                // `__launch_bounds__(..)` comes before the name.
                let decl = match decl.strip_prefix("__launch_bounds__") {
                    Some(rest) => rest.split_once(')').map(|(_, r)| r).unwrap_or_default(),
                    None => decl,
                };
                let head = decl.split('(').next().unwrap_or_default();
                let name = head.split_whitespace().last().unwrap_or_default();
                assert!(
                    m.kernels().any(|k| k.function == name),
                    "kernels/{}.cu: {name} is not in the registry",
                    m.name()
                );
            }
        }
    }

    #[test]
    fn c_structs_list_every_field_in_order() {
        let s = <FillArgs as Kernel>::ARGS.c_struct();
        assert_eq!(
            s,
            "struct FillArgs {\n    u32* out;\n    u64 n;\n    u32 value;\n};"
        );
        assert_eq!(std::mem::size_of::<FillArgs>(), 24);
        let asserts = <FillArgs as Kernel>::ARGS.c_layout_asserts();
        assert!(asserts.contains("sizeof(FillArgs) == 24"), "{asserts}");
        assert!(
            asserts.contains(
                "sizeof(FillArgs::value) == 4 && alignof(decltype(FillArgs::value)) == 4"
            ),
            "{asserts}"
        );
    }

    #[test]
    fn geometry_fits_the_work() {
        let g = Grid::stride(10, 256, 132);
        assert_eq!(g.blocks, (1, 1, 1));
        assert_eq!(Grid::stride(1 << 30, 256, 132).blocks.0, 132 * 16);
        assert_eq!(Grid::per_warp(9).blocks.0, 2);
        assert_eq!(Grid::per_item(257, 256).blocks.0, 2);
    }
}

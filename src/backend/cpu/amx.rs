//! Intel AMX (Advanced Matrix Extensions) for the integer products of the 8-bit
//! assignment pass: `tdpbsud` multiplies a tile of row codes (signed bytes) by a tile
//! of centroid codes (unsigned, code + 128) into 8 × 16 exact i32 sums on the matrix
//! unit, so the AVX-512 ports are left to the bound's epilogue. The sums are the VNNI
//! kernel's integers exactly, so every label, distance and model is the same bit for
//! bit. Written with `asm!`: Rust's AMX intrinsics are not stable.
//!
//! Linux hands out the tile registers only on request (`arch_prctl(ARCH_REQ_XCOMP_PERM,
//! XFEATURE_XTILEDATA)`, once per process); without that permission, or on another OS,
//! the kernel is not offered.

use std::arch::asm;

/// Rows per A tile: the 8-bit pass's tile (`quant::TR`).
pub const ROWS: usize = 8;
/// Widest codes one A tile holds (64 bytes per tile row).
pub const MAX_CODE_BYTES: usize = 64;

/// Whether this CPU has AMX-TILE and AMX-INT8 and the OS lets this process use them
/// (asked once).
pub fn available() -> bool {
    static OK: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *OK.get_or_init(|| {
        // SAFETY: cpuid leaf 7 exists on every x86-64 CPU with AVX-512 (checked first).
        let has = crate::similarity::int8::Isa::Avx512Vnni.supported() && {
            let c = std::arch::x86_64::__cpuid_count(7, 0);
            (c.edx >> 24) & 1 == 1 && (c.edx >> 25) & 1 == 1
        };
        has && request_permission()
    })
}

#[cfg(target_os = "linux")]
fn request_permission() -> bool {
    const SYS_ARCH_PRCTL: i64 = 158;
    const ARCH_REQ_XCOMP_PERM: i64 = 0x1023;
    const XFEATURE_XTILEDATA: i64 = 18;
    let ret: i64;
    // SAFETY: arch_prctl only reads its two integer arguments; the syscall clobbers
    // rcx and r11.
    unsafe {
        asm!("syscall", inlateout("rax") SYS_ARCH_PRCTL => ret, in("rdi") ARCH_REQ_XCOMP_PERM,
             in("rsi") XFEATURE_XTILEDATA, lateout("rcx") _, lateout("r11") _, options(nostack));
    }
    ret == 0
}

#[cfg(not(target_os = "linux"))]
fn request_permission() -> bool {
    false
}

/// The tile configuration for codes of `code_bytes` bytes per row, loaded while it
/// lives (`ldtilecfg` costs about 60 ns, so once per block of rows, not per tile) and
/// released when dropped. tmm0: the rows' codes (8 × code_bytes); tmm1, tmm2: a
/// panel's two halves of centroid codes (code_bytes / 4 rows of 16 centroids × 4
/// bytes); tmm4 to tmm7: two sets of their 8 × 16 sums, one filling while the other
/// is read.
pub struct Tiles {
    _not_send: std::marker::PhantomData<*const ()>,
}

#[repr(C, align(64))]
struct Config([u8; 64]);

impl Tiles {
    /// # Safety
    /// `available()` must be true; 4 ≤ code_bytes ≤ 64, a multiple of 4.
    pub unsafe fn configure(code_bytes: usize) -> Tiles {
        debug_assert!(code_bytes.is_multiple_of(4) && (4..=MAX_CODE_BYTES).contains(&code_bytes));
        let mut cfg = Config([0; 64]);
        cfg.0[0] = 1; // palette 1
        let mut set = |t: usize, rows: usize, colsb: usize| {
            cfg.0[16 + 2 * t..18 + 2 * t].copy_from_slice(&(colsb as u16).to_le_bytes());
            cfg.0[48 + t] = rows as u8;
        };
        set(0, ROWS, code_bytes);
        set(1, code_bytes / 4, 64);
        set(2, code_bytes / 4, 64);
        for t in 4..8 {
            set(t, ROWS, 64);
        }
        // SAFETY: a valid palette-1 configuration; the caller checked AMX and permission.
        unsafe { asm!("ldtilecfg [{}]", in(reg) cfg.0.as_ptr(), options(nostack, readonly)) };
        Tiles { _not_send: std::marker::PhantomData }
    }

    /// Load 8 rows' codes (a stride of the configuration's `code_bytes`) into tmm0,
    /// for the `panel` calls that follow.
    ///
    /// # Safety
    /// `codes` holds 8 rows of `code_bytes` bytes at that stride.
    #[inline(always)]
    pub unsafe fn rows(&self, codes: *const i8, code_bytes: usize) {
        // SAFETY: the caller's; the tile fits the configuration.
        unsafe {
            asm!("tileloadd tmm0, [{a} + {sa}*1]", a = in(reg) codes, sa = in(reg) code_bytes, options(nostack, readonly))
        };
    }

    /// Start the sums Σ c_x·(c_j + 128) of the 8 rows `rows` loaded with the two halves
    /// of one panel of 32 centroids in tile set `set` (0: tmm4 and tmm5, 1: tmm6 and
    /// tmm7), from zero (a `tilezero` costs less than loading the rows' corrections,
    /// which the caller adds). `store` writes them out; in between the matrix unit
    /// works alone.
    ///
    /// # Safety
    /// `rows` was called since `configure`; `panel` is the panel's first group (groups
    /// of 128 bytes: 32 centroids × 4 bytes, `code_bytes / 4` of them).
    #[inline(always)]
    pub unsafe fn compute(&self, set: usize, panel: *const u8) {
        macro_rules! go {
            ($c0:literal, $c1:literal) => {
                // SAFETY: the caller's; every tile fits the configuration.
                unsafe {
                    asm!(
                        concat!("tilezero ", $c0),
                        concat!("tilezero ", $c1),
                        "tileloadd tmm1, [{b} + {sb}*1]",
                        "tileloadd tmm2, [{b1} + {sb}*1]",
                        concat!("tdpbsud ", $c0, ", tmm0, tmm1"),
                        concat!("tdpbsud ", $c1, ", tmm0, tmm2"),
                        b = in(reg) panel,
                        b1 = in(reg) panel.add(64),
                        sb = in(reg) 128usize,
                        options(nostack, readonly),
                    )
                }
            };
        }
        if set == 0 { go!("tmm4", "tmm5") } else { go!("tmm6", "tmm7") }
    }

    /// Write tile set `set`'s sums (`compute`) to `out`: 8 rows × 32 i32 at a stride of
    /// `out_stride` bytes.
    ///
    /// # Safety
    /// `compute` ran on this set since `configure`; `out` has room for 8 rows × 128
    /// bytes at its stride.
    #[inline(always)]
    pub unsafe fn store(&self, set: usize, out: *mut i32, out_stride: usize) {
        macro_rules! go {
            ($c0:literal, $c1:literal) => {
                // SAFETY: the caller's.
                unsafe {
                    asm!(
                        concat!("tilestored [{o} + {so}*1], ", $c0),
                        concat!("tilestored [{o1} + {so}*1], ", $c1),
                        o = in(reg) out,
                        o1 = in(reg) out.add(16),
                        so = in(reg) out_stride,
                        options(nostack),
                    )
                }
            };
        }
        if set == 0 { go!("tmm4", "tmm5") } else { go!("tmm6", "tmm7") }
    }
}

impl Drop for Tiles {
    fn drop(&mut self) {
        // SAFETY: the tiles were configured by `configure`.
        unsafe { asm!("tilerelease", options(nostack, nomem)) };
    }
}

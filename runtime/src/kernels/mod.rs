//! Kernels. They know nothing about graphs or files: plain slices and dimensions in, slices out.
//! Every kernel checks that its slices have exactly the lengths its dimensions imply and returns an
//! error otherwise, so no input can make it index out of bounds.
//!
//! `reference` and [`gemm::reference_tile`] are the specification (scalar); the product engine
//! (`gemm`, over activations staged by `stage`) runs the SIMD tiles of `neon` and `x86`, which must
//! match it bit for bit, as `check` verifies on random shapes.
#[cfg(feature = "std")]
pub mod check;
pub mod eltwise;
pub mod gemm;
#[cfg(target_arch = "aarch64")]
pub mod neon;
#[cfg(target_arch = "aarch64")]
pub mod neon_i16;
#[cfg(target_arch = "aarch64")]
pub mod neon_ops;
pub mod reference;
pub mod stage;
pub mod tile;
#[cfg(target_arch = "x86_64")]
pub mod x86;
#[cfg(target_arch = "x86_64")]
pub mod x86_avx2_ops;
#[cfg(target_arch = "x86_64")]
pub mod x86_avx512;
#[cfg(target_arch = "x86_64")]
pub mod x86_avx512_epi;
#[cfg(target_arch = "x86_64")]
pub mod x86_avx512_ops;
#[cfg(target_arch = "x86_64")]
mod x86_epi;
#[cfg(target_arch = "x86_64")]
pub mod x86_vnni;

/// The widest x86 SIMD the non-GEMM ops (GroupNorm, tables, softmax, element-wise) use: what the
/// CPU has, at most what [`cap_ops_isa`] allows. The GEMM-class ops follow the session's tier.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum OpsIsa {
    Scalar,
    Avx2,
    Avx512,
}

#[cfg(all(target_arch = "x86_64", feature = "std"))]
static OPS_CAP: core::sync::atomic::AtomicU8 =
    core::sync::atomic::AtomicU8::new(OpsIsa::Avx512 as u8);

/// Caps the non-GEMM ops' x86 SIMD at `tier`'s instruction set for this process (`Scalar`: none,
/// `Avx2` and `AvxVnni`: AVX2, `Avx512Vnni`: AVX-512), so that `dmq-board bench --tier avx2` on an
/// AVX-512 CPU times what an AVX2-only CPU runs. Every level computes the same integers.
#[cfg(all(target_arch = "x86_64", feature = "std"))]
pub fn cap_ops_isa(tier: Tier) {
    let cap = match tier {
        Tier::Avx512Vnni => OpsIsa::Avx512,
        Tier::Avx2 | Tier::AvxVnni => OpsIsa::Avx2,
        _ => OpsIsa::Scalar,
    };
    OPS_CAP.store(cap as u8, core::sync::atomic::Ordering::Relaxed);
}

/// The non-GEMM ops' x86 SIMD level on this CPU under the cap: AVX-512 needs F and BW (`Scalar`
/// on other targets and without std).
#[cfg(not(all(target_arch = "x86_64", feature = "std")))]
pub fn ops_isa() -> OpsIsa {
    OpsIsa::Scalar
}

/// The non-GEMM ops' x86 SIMD level on this CPU under the cap: AVX-512 needs F and BW.
#[cfg(all(target_arch = "x86_64", feature = "std"))]
pub fn ops_isa() -> OpsIsa {
    let cap = OPS_CAP.load(core::sync::atomic::Ordering::Relaxed);
    if cap >= OpsIsa::Avx512 as u8
        && std::arch::is_x86_feature_detected!("avx512f")
        && std::arch::is_x86_feature_detected!("avx512bw")
    {
        OpsIsa::Avx512
    } else if cap >= OpsIsa::Avx2 as u8 && std::arch::is_x86_feature_detected!("avx2") {
        OpsIsa::Avx2
    } else {
        OpsIsa::Scalar
    }
}

/// Whether `T` is the int8 code type (the AVX-512 paths of the non-GEMM ops take int8 only).
#[cfg(all(target_arch = "x86_64", feature = "std"))]
pub(crate) fn is_i8<T: reference::Code>() -> bool {
    core::mem::size_of::<T>() == 1 && T::MIN == -128 && T::MAX == 127
}

/// Whether `T` is the int16 code type (for the SIMD paths that take either width).
#[cfg(any(target_arch = "aarch64", all(target_arch = "x86_64", feature = "std")))]
#[inline(always)]
pub(crate) fn is_i16<T: reference::Code>() -> bool {
    core::mem::size_of::<T>() == 2 && T::MIN == -32768 && T::MAX == 32767
}

/// Highest tensor rank the kernels' stride arrays carry.
pub const MAX_RANK: usize = 6;

/// Which kernels run. Chosen once per session from the CPU's features; every tier computes exactly
/// what the scalar reference computes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tier {
    Scalar,
    /// Armv8.0 NEON (Cortex-A72: Raspberry Pi 4)
    Neon,
    /// NEON + dot product instructions (Cortex-A76/A78: Raspberry Pi 5, Jetson Orin)
    NeonDot,
    /// x86-64 AVX2 (the host `dmqc` measures on; detected with std only)
    Avx2,
    /// x86-64 AVX2 + AVX-VNNI (Intel Alder Lake, Sapphire Rapids and later; AMD Zen 5): int8
    /// products with `VPDPBUSD`, int16 ones as on `Avx2`
    AvxVnni,
    /// `AvxVnni` plus AVX-512 BW and VNNI (Intel Sapphire Rapids and later, AMD Zen 5): int8
    /// products with `VPDPBUSD` on 512-bit registers
    Avx512Vnni,
}

impl Tier {
    /// Every SIMD tier (a CPU supports some of them: [`Tier::supported`]).
    pub const SIMD: [Tier; 5] = [
        Tier::Neon,
        Tier::NeonDot,
        Tier::Avx2,
        Tier::AvxVnni,
        Tier::Avx512Vnni,
    ];

    /// The best tier this CPU supports (Linux: HWCAP via std; bare metal: the ID_AA64ISAR0_EL1
    /// register). A CPU without dotprod never gets `NeonDot`.
    pub fn detect() -> Tier {
        #[cfg(all(target_arch = "aarch64", feature = "std"))]
        {
            if std::arch::is_aarch64_feature_detected!("dotprod") {
                Tier::NeonDot
            } else {
                Tier::Neon
            }
        }
        #[cfg(all(target_arch = "aarch64", not(feature = "std")))]
        {
            let isar0: u64;
            // SAFETY: reading an ID register has no side effects (EL1 and above; Linux emulates it at EL0).
            unsafe {
                core::arch::asm!("mrs {0}, ID_AA64ISAR0_EL1", out(reg) isar0, options(nomem, nostack, preserves_flags))
            };
            if (isar0 >> 44) & 0xf >= 1 {
                Tier::NeonDot
            } else {
                Tier::Neon
            }
        }
        #[cfg(all(target_arch = "x86_64", feature = "std"))]
        {
            // AVX-512 VNNI does not imply AVX-VNNI (AMD Zen 4, Intel Cascade Lake and Ice Lake
            // servers have only the first): the `Avx512Vnni` tier needs only its own features
            // (its 256-bit tiles use the EVEX encodings, `x86::Madd`)
            if avx512_vnni() {
                Tier::Avx512Vnni
            } else if avx_vnni() {
                Tier::AvxVnni
            } else if std::arch::is_x86_feature_detected!("avx2") {
                Tier::Avx2
            } else {
                Tier::Scalar
            }
        }
        #[cfg(not(any(target_arch = "aarch64", all(target_arch = "x86_64", feature = "std"))))]
        {
            Tier::Scalar
        }
    }

    /// Whether this CPU can run `self` (forcing a tier it lacks falls back to detection).
    pub fn supported(self) -> bool {
        match self {
            Tier::Scalar => true,
            Tier::Neon => cfg!(target_arch = "aarch64"),
            Tier::NeonDot => Tier::detect() == Tier::NeonDot,
            Tier::Avx2 => matches!(
                Tier::detect(),
                Tier::Avx2 | Tier::AvxVnni | Tier::Avx512Vnni
            ),
            Tier::AvxVnni => {
                #[cfg(all(target_arch = "x86_64", feature = "std"))]
                {
                    avx_vnni()
                }
                #[cfg(not(all(target_arch = "x86_64", feature = "std")))]
                {
                    false
                }
            }
            Tier::Avx512Vnni => Tier::detect() == Tier::Avx512Vnni,
        }
    }
}

/// Whether this CPU has the `Avx512Vnni` tier's features: AVX2, AVX-512F, BW, VL and VNNI.
#[cfg(all(target_arch = "x86_64", feature = "std"))]
fn avx512_vnni() -> bool {
    std::arch::is_x86_feature_detected!("avx2")
        && std::arch::is_x86_feature_detected!("avx512f")
        && std::arch::is_x86_feature_detected!("avx512bw")
        && std::arch::is_x86_feature_detected!("avx512vl")
        && std::arch::is_x86_feature_detected!("avx512vnni")
}

/// Whether this CPU has the `AvxVnni` tier's features: AVX2 and AVX-VNNI (VEX).
#[cfg(all(target_arch = "x86_64", feature = "std"))]
fn avx_vnni() -> bool {
    std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("avxvnni")
}

/// Runs `f` compiled for `tier`'s instruction set where that differs from the build's baseline
/// (AVX2 on x86-64): the element-wise kernels are written as plain loops and marked
/// `#[inline(always)]`, so the compiler vectorizes them for the wider registers inside this call.
/// Integer code computes the same values either way (and float code too: no contraction).
#[inline(always)]
pub fn on_tier<R>(tier: Tier, f: impl FnOnce() -> R) -> R {
    match tier {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: the x86 tiers are only chosen after detecting AVX2 (`Tier::supported`)
        Tier::Avx2 | Tier::AvxVnni | Tier::Avx512Vnni => unsafe { with_avx2(f) },
        _ => f(),
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn with_avx2<R>(f: impl FnOnce() -> R) -> R {
    f()
}

/// How the kernels of one session run: the SIMD tier and the worker threads (std builds only; the
/// no_std runtime always runs on the calling core).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Exec {
    pub tier: Tier,
    pub threads: usize,
}

/// Multiply-accumulates below which an op stays on one thread (spawning would cost more).
pub const PAR_MIN_MACS: usize = 1 << 18;

/// The most parts [`Exec::par_rows`] splits an op into (more threads share them).
#[cfg(feature = "std")]
const MAX_PARTS: usize = 64;

impl Exec {
    /// Runs `f(first_row, rows_in_part, part)` over `rows` rows of `row_stride` elements of `out`,
    /// split into at most `threads` contiguous parts (whole 4-row register tiles) that run on a pool
    /// of `threads` worker threads. One part, on the calling thread, when `threads <= 1`, when
    /// `macs < PAR_MIN_MACS` or without std. Each row is computed exactly as in a single call, so the
    /// output is the same for every thread count.
    pub fn par_rows<U: Send>(
        self,
        rows: usize,
        row_stride: usize,
        macs: usize,
        out: &mut [U],
        f: impl Fn(usize, usize, &mut [U]) -> Result<()> + Sync,
    ) -> Result<()> {
        #[cfg(feature = "std")]
        if self.threads > 1 && macs >= PAR_MIN_MACS && rows >= 8 {
            // fixed arrays on the stack, not vectors: a parallel op allocates nothing
            let per = rows
                .div_ceil(self.threads.min(MAX_PARTS))
                .next_multiple_of(4);
            // (first row, rows, output part): each taken once, by the thread that runs it
            type Part<'o, U> = std::sync::Mutex<Option<(usize, usize, &'o mut [U])>>;
            let mut parts: [Part<'_, U>; MAX_PARTS] =
                core::array::from_fn(|_| std::sync::Mutex::new(None));
            let (mut rest, mut r0, mut n) = (out, 0, 0);
            while r0 < rows {
                let r1 = (r0 + per).min(rows);
                let take = if r1 == rows {
                    rest.len()
                } else {
                    (r1 - r0) * row_stride
                };
                if take > rest.len() {
                    return Err(Error::BufferLength {
                        expected: take,
                        got: rest.len(),
                    });
                }
                let (part, tail) = rest.split_at_mut(take);
                // at most MAX_PARTS parts of `per >= rows / MAX_PARTS` rows
                let slot = parts.get_mut(n).ok_or(Error::WorkerPanicked)?;
                *slot.get_mut().map_err(|_| Error::WorkerPanicked)? = Some((r0, r1 - r0, part));
                rest = tail;
                r0 = r1;
                n += 1;
            }
            let results: [std::sync::Mutex<Result<()>>; MAX_PARTS] =
                core::array::from_fn(|_| std::sync::Mutex::new(Ok(())));
            let job = |i: usize| {
                let part = parts[i].lock().ok().and_then(|mut g| g.take());
                let r = match part {
                    Some((a, rows, p)) => f(a, rows, p),
                    None => Err(Error::WorkerPanicked),
                };
                if let Ok(mut g) = results[i].lock() {
                    *g = r;
                }
            };
            if !pool(self.threads - 1)?.run(n, &job) {
                return Err(Error::WorkerPanicked);
            }
            return results
                .into_iter()
                .take(n)
                .try_for_each(|m| m.into_inner().unwrap_or(Err(Error::WorkerPanicked)));
        }
        let _ = (macs, row_stride);
        f(0, rows, out)
    }
}

/// The pool of `workers` threads, started on first use and kept for the process (one per distinct
/// count), so an op pays a hand-off, not a thread start.
#[cfg(feature = "std")]
fn pool(workers: usize) -> Result<&'static crate::pool::Pool> {
    extern crate std;
    use std::boxed::Box;
    use std::sync::Mutex;
    use std::vec::Vec;
    static POOLS: Mutex<Vec<(usize, &'static crate::pool::Pool)>> = Mutex::new(Vec::new());
    let mut pools = POOLS
        .lock()
        .map_err(|_| Error::Unsupported("the worker pool lock is poisoned"))?;
    if let Some((_, p)) = pools.iter().find(|(n, _)| *n == workers) {
        return Ok(p);
    }
    let p = crate::pool::Pool::start(workers)
        .ok_or(Error::Unsupported("could not start the worker threads"))?;
    let p: &'static crate::pool::Pool = Box::leak(Box::new(p));
    pools.push((workers, p));
    Ok(p)
}

use crate::{Error, Result};

/// The one rounding rule of dmq: `(v + 2^(shift-1)) >> shift` (round half up), `1 <= shift <= 62`.
#[inline(always)]
pub fn round_shift(v: i64, shift: u8) -> i64 {
    (v + (1i64 << (shift - 1))) >> shift
}

/// Requantizes an accumulator: `clamp(round_shift(acc * mult, shift) + zero, -128, 127)`.
#[inline(always)]
pub fn requant(acc: i64, mult: i32, shift: u8, zero: i32) -> i8 {
    let v = round_shift(acc * mult as i64, shift) + zero as i64;
    v.clamp(-128, 127) as i8
}

/// Reads the `i`-th little-endian (mult i32, shift i32) pair of a per-channel requantization table.
#[inline(always)]
pub fn requant_entry(table: &[u8], i: usize) -> (i32, u8) {
    let e = &table[i * 8..i * 8 + 8];
    let m = i32::from_le_bytes([e[0], e[1], e[2], e[3]]);
    let s = i32::from_le_bytes([e[4], e[5], e[6], e[7]]);
    (m, s as u8)
}

#[inline(always)]
pub fn le_i32(b: &[u8], i: usize) -> i32 {
    i32::from_le_bytes([b[i * 4], b[i * 4 + 1], b[i * 4 + 2], b[i * 4 + 3]])
}

#[inline(always)]
pub fn le_f32(b: &[u8], i: usize) -> f32 {
    f32::from_le_bytes([b[i * 4], b[i * 4 + 1], b[i * 4 + 2], b[i * 4 + 3]])
}

/// Checks `slice_len == expected` for kernel entry.
#[inline]
pub fn check_len(expected: usize, got: usize) -> Result<()> {
    if expected == got {
        Ok(())
    } else {
        Err(Error::BufferLength { expected, got })
    }
}

/// Element strides of a contiguous row-major tensor.
pub fn contiguous_strides(shape: &[usize]) -> [usize; MAX_RANK] {
    let mut s = [0usize; MAX_RANK];
    let mut acc = 1usize;
    for i in (0..shape.len().min(MAX_RANK)).rev() {
        s[i] = acc;
        acc = acc.saturating_mul(shape[i]);
    }
    s
}

/// Strides that read a tensor of shape `inp` broadcast to `out` (same rank; dims 1 or equal).
pub fn broadcast_strides(inp: &[usize], out: &[usize]) -> Result<[usize; MAX_RANK]> {
    if inp.len() != out.len() || inp.len() > MAX_RANK {
        return Err(Error::Unsupported("broadcast rank mismatch"));
    }
    let mut s = contiguous_strides(inp);
    for i in 0..inp.len() {
        if inp[i] == 1 && out[i] != 1 {
            s[i] = 0;
        } else if inp[i] != out[i] {
            return Err(Error::Unsupported("broadcast dims mismatch"));
        }
    }
    Ok(s)
}

/// Visits every index of `shape` in row-major order, passing the element offsets of `K` operands
/// with the given strides. The caller guarantees (and checks) that every offset is in bounds.
pub fn walk<const K: usize>(
    shape: &[usize],
    strides: [&[usize; MAX_RANK]; K],
    base: [usize; K],
    mut f: impl FnMut([usize; K]),
) {
    let rank = shape.len();
    if shape.iter().any(|&d| d == 0) {
        return;
    }
    if rank == 0 {
        f(base);
        return;
    }
    let mut idx = [0usize; MAX_RANK];
    let mut offs = base;
    let last = rank - 1;
    loop {
        let mut o = offs;
        for _ in 0..shape[last] {
            f(o);
            for k in 0..K {
                o[k] += strides[k][last];
            }
        }
        // odometer over the outer axes
        let mut ax = last;
        loop {
            if ax == 0 {
                return;
            }
            ax -= 1;
            idx[ax] += 1;
            for k in 0..K {
                offs[k] += strides[k][ax];
            }
            if idx[ax] < shape[ax] {
                break;
            }
            for k in 0..K {
                offs[k] -= strides[k][ax] * shape[ax];
            }
            idx[ax] = 0;
        }
    }
}

/// The rows of a strided walk over `shape`: adjacent axes every operand steps through as one are
/// merged first, then [`Rows::next`] yields `(offsets, len, inner_strides)` per row of the innermost
/// (merged) axis, in row-major order — the same elements as [`walk`]. An iterator rather than a
/// callback so that the caller's loop body is compiled inline (and vectorized) where it stands.
pub struct Rows<const K: usize> {
    dims: [usize; MAX_RANK],
    st: [[usize; MAX_RANK]; K],
    rank: usize,
    idx: [usize; MAX_RANK],
    offs: [usize; K],
    done: bool,
}

impl<const K: usize> Rows<K> {
    #[inline(always)]
    pub fn new(shape: &[usize], strides: [&[usize; MAX_RANK]; K], base: [usize; K]) -> Self {
        let (mut dims, mut st) = ([1usize; MAX_RANK], [[0usize; MAX_RANK]; K]);
        let mut rank = 0;
        for ax in 0..shape.len().min(MAX_RANK) {
            let d = shape[ax];
            if d == 1 {
                continue;
            }
            dims[rank] = d;
            for k in 0..K {
                st[k][rank] = strides[k][ax];
            }
            // merge with the previous axis when every operand steps through both as one
            if rank > 0 && (0..K).all(|k| st[k][rank - 1] == st[k][rank].wrapping_mul(d)) {
                dims[rank - 1] *= d;
                for s in st.iter_mut() {
                    s[rank - 1] = s[rank];
                }
            } else {
                rank += 1;
            }
        }
        let done = shape.contains(&0);
        Rows {
            dims,
            st,
            rank,
            idx: [0; MAX_RANK],
            offs: base,
            done,
        }
    }

    /// The next row: its operands' offsets, its length and the operands' strides along it.
    #[inline(always)]
    #[allow(clippy::should_implement_trait)]
    pub fn next(&mut self) -> Option<([usize; K], usize, [usize; K])> {
        if self.done {
            return None;
        }
        if self.rank == 0 {
            self.done = true;
            return Some((self.offs, 1, [0; K]));
        }
        let last = self.rank - 1;
        let row = (
            self.offs,
            self.dims[last],
            core::array::from_fn(|k| self.st[k][last]),
        );
        // odometer over the outer axes
        let mut ax = last;
        loop {
            if ax == 0 {
                self.done = true;
                break;
            }
            ax -= 1;
            self.idx[ax] += 1;
            for k in 0..K {
                self.offs[k] += self.st[k][ax];
            }
            if self.idx[ax] < self.dims[ax] {
                break;
            }
            for k in 0..K {
                self.offs[k] -= self.st[k][ax] * self.dims[ax];
            }
            self.idx[ax] = 0;
        }
        Some(row)
    }
}

/// Largest offset reachable by [`walk`] over `shape` with `strides` plus one (0 for an empty shape).
pub fn extent(shape: &[usize], strides: &[usize; MAX_RANK], base: usize) -> usize {
    if shape.iter().any(|&d| d == 0) {
        return 0;
    }
    let mut e = base;
    for (i, &d) in shape.iter().enumerate() {
        e = e.saturating_add((d - 1).saturating_mul(strides[i]));
    }
    e.saturating_add(1)
}

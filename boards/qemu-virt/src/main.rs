//! dmq on bare metal: an image for `qemu-system-aarch64 -M virt` (Cortex-A, EL1, no std, no allocator).
//!
//! It embeds a `.dmq` with `include_bytes!` (path in `DMQ_MODEL` at build time), samples from a fixed
//! seed with the no_std runtime and prints over the PL011 UART, through the board-independent harness
//! (`dmq-harness`): the PMU cycle count of every denoising step and the same `checksum:` line as
//! `dmq-board sample --checksum`. A PL061 GPIO line is the harness's `embedded-hal` marker pin. Then it
//! powers the machine off through PSCI. Build and run: `boards/qemu-virt/run.sh MODEL.dmq`.
#![no_std]
#![no_main]

use core::fmt::Write;
use core::panic::PanicInfo;
use dmq_harness::{Clock, Config};
use dmq_runtime::{Prepared, SamplerKind};
use embedded_hal::digital::{ErrorType, OutputPin};

// Boot: core 0 only; stack; FP/SIMD on; .bss zeroed; an identity map with 1 GiB blocks (device memory
// below 1 GiB for the UART and GPIO, write-back cacheable RAM above) so the caches run and unaligned
// loads are legal; then `dmq_main`.
core::arch::global_asm!(
    r#"
    .section .text.boot, "ax"
    .global _start
_start:
    mrs     x0, mpidr_el1
    and     x0, x0, #0xff
    cbnz    x0, 9f
    ldr     x0, =__stack_top
    mov     sp, x0
    mov     x0, #(3 << 20)
    msr     cpacr_el1, x0
    isb
    ldr     x0, =__bss_start
    ldr     x1, =__bss_end
1:  cmp     x0, x1
    b.hs    2f
    stp     xzr, xzr, [x0], #16
    b       1b
2:  ldr     x0, =0xff00
    msr     mair_el1, x0
    ldr     x0, =0x803520
    msr     tcr_el1, x0
    ldr     x0, =dmq_l1_table
    msr     ttbr0_el1, x0
    dsb     ish
    tlbi    vmalle1
    dsb     ish
    isb
    mrs     x0, sctlr_el1
    orr     x0, x0, #1
    orr     x0, x0, #(1 << 2)
    orr     x0, x0, #(1 << 12)
    bic     x0, x0, #(1 << 1)
    msr     sctlr_el1, x0
    isb
    bl      dmq_main
9:  wfe
    b       9b

    .section .data.pagetable, "aw"
    .balign 4096
dmq_l1_table:
    .quad   0x0060000000000401
    .quad   0x0000000040000705
    .fill   510, 8, 0
"#
);

/// PL011 UART of qemu virt.
struct Uart;
const UART: usize = 0x0900_0000;

impl Write for Uart {
    fn write_str(&mut self, s: &str) -> core::fmt::Result {
        for b in s.bytes() {
            // SAFETY: qemu virt's PL011 registers (DR at +0, FR at +0x18), identity-mapped device memory.
            unsafe {
                while core::ptr::read_volatile((UART + 0x18) as *const u32) & (1 << 5) != 0 {}
                core::ptr::write_volatile(UART as *mut u32, b as u32);
            }
        }
        Ok(())
    }
}

/// One output line of qemu virt's PL061 GPIO controller: the harness's step marker.
struct Pl061Pin(u8);
const GPIO: usize = 0x0903_0000;

impl Pl061Pin {
    fn output(pin: u8) -> Self {
        // SAFETY: PL061 GPIODIR at +0x400; setting the bit makes the line an output.
        unsafe {
            let dir = (GPIO + 0x400) as *mut u32;
            core::ptr::write_volatile(dir, core::ptr::read_volatile(dir) | 1 << pin);
        }
        Pl061Pin(pin)
    }
    fn write(&mut self, high: bool) {
        // SAFETY: PL061 GPIODATA is masked by address bits [9:2]: this write changes only our line.
        unsafe {
            core::ptr::write_volatile(
                (GPIO + ((1usize << self.0) << 2)) as *mut u32,
                if high { 0xff } else { 0 },
            )
        }
    }
}
impl ErrorType for Pl061Pin {
    type Error = core::convert::Infallible;
}
impl OutputPin for Pl061Pin {
    fn set_low(&mut self) -> Result<(), Self::Error> {
        self.write(false);
        Ok(())
    }
    fn set_high(&mut self) -> Result<(), Self::Error> {
        self.write(true);
        Ok(())
    }
}

/// The PMU cycle counter (PMCCNTR_EL0). Its rate is the core clock, which the CPU does not report.
struct Cycles;
impl Cycles {
    fn start() -> Self {
        // SAFETY: enables and resets the cycle counter (PMCR_EL0.E|C, PMCNTENSET_EL0 bit 31); EL1.
        unsafe {
            core::arch::asm!(
                "mrs {t}, pmcr_el0",
                "orr {t}, {t}, #1",
                "orr {t}, {t}, #4",
                "msr pmcr_el0, {t}",
                "mov {t}, #(1 << 31)",
                "msr pmcntenset_el0, {t}",
                "isb",
                t = out(reg) _,
                options(nostack)
            );
        }
        Cycles
    }
}
impl Clock for Cycles {
    fn now(&mut self) -> u64 {
        let c: u64;
        // SAFETY: reads the cycle counter.
        unsafe { core::arch::asm!("isb", "mrs {0}, pmccntr_el0", out(reg) c, options(nostack)) };
        c
    }
    fn hz(&self) -> u64 {
        0
    }
    fn unit(&self) -> &'static str {
        "cycles"
    }
}

/// The generic timer: wall time for the whole run (its frequency is in CNTFRQ_EL0).
fn timer() -> (u64, u64) {
    let (c, f): (u64, u64);
    // SAFETY: reads CNTVCT_EL0 and CNTFRQ_EL0.
    unsafe {
        core::arch::asm!("isb", "mrs {0}, cntvct_el0", "mrs {1}, cntfrq_el0", out(reg) c, out(reg) f, options(nostack))
    };
    (c, f)
}

#[repr(C, align(16))]
struct Aligned<T: ?Sized>(T);

static MODEL: &Aligned<[u8]> = &Aligned(*include_bytes!(env!("DMQ_MODEL")));

/// The arena and the latent buffer live in .bss (zeroed at boot).
const ARENA_BYTES: usize = 48 << 20;
const MAX_LATENT: usize = 1 << 18;
static mut ARENA: Aligned<[u8; ARENA_BYTES]> = Aligned([0; ARENA_BYTES]);
static mut LATENT: [f32; MAX_LATENT] = [0.0; MAX_LATENT];
/// Slots for the prepared ops of one op stream (`Model::plan_len`).
const MAX_OPS: usize = 4096;
static mut PLAN: [Prepared<'static>; MAX_OPS] = [Prepared::IDLE; MAX_OPS];

fn env_u64(v: Option<&str>, default: u64) -> u64 {
    v.and_then(|s| s.trim().parse().ok()).unwrap_or(default)
}

fn power_off() -> ! {
    // SAFETY: PSCI SYSTEM_OFF through HVC, the conduit qemu virt offers at EL1 without firmware.
    unsafe { core::arch::asm!("hvc #0", in("x0") 0x8400_0008u64, options(nostack)) };
    loop {
        // SAFETY: waits for an event; nothing else runs.
        unsafe { core::arch::asm!("wfe", options(nomem, nostack)) };
    }
}

#[no_mangle]
extern "C" fn dmq_main() -> ! {
    let mut uart = Uart;
    let _ = writeln!(uart, "dmq bare-metal image (qemu virt, EL1, no std, no allocator)");
    let sampler = match option_env!("DMQ_SAMPLER") {
        Some("ddim") => Some(SamplerKind::Ddim),
        Some("ddpm") => Some(SamplerKind::Ddpm),
        Some("euler") => Some(SamplerKind::Euler),
        Some("consistency") => Some(SamplerKind::Consistency),
        _ => None,
    };
    let cfg = Config {
        seed: env_u64(option_env!("DMQ_SEED"), 0),
        steps: option_env!("DMQ_STEPS").map(|s| env_u64(Some(s), 0) as u32),
        sampler,
        inputs: &[],
    };
    // SAFETY: the only references ever made to these statics, on the only running core.
    let (arena, latent, plan) = unsafe {
        (
            &mut (&mut *core::ptr::addr_of_mut!(ARENA)).0[..],
            &mut (&mut *core::ptr::addr_of_mut!(LATENT))[..],
            &mut (&mut *core::ptr::addr_of_mut!(PLAN))[..],
        )
    };
    let (t0, freq) = timer();
    let r = dmq_harness::run(
        &MODEL.0,
        arena,
        plan,
        latent,
        &cfg,
        &mut Cycles::start(),
        &mut Pl061Pin::output(0),
        &mut uart,
    );
    let (t1, _) = timer();
    match r {
        Ok(_) => {
            let ms = (t1 - t0) * 1000 / freq.max(1);
            let _ = writeln!(uart, "dmq: done in {ms} ms of emulated time (generic timer at {freq} Hz)");
        }
        Err(dmq_harness::Failure::Runtime(e)) => {
            let _ = writeln!(uart, "dmq: error: {e}");
        }
        Err(e) => {
            let _ = writeln!(uart, "dmq: error: {e:?}");
        }
    }
    power_off()
}

#[panic_handler]
fn panic(info: &PanicInfo) -> ! {
    let _ = writeln!(Uart, "dmq: panic: {info}");
    power_off()
}

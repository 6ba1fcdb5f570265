//! Worker threads for `Session::with_threads` (std builds only).
//!
//! The ops of one denoising step each take tens to hundreds of microseconds, so a worker that sleeps
//! between ops (and must be woken by the kernel) loses what splitting gains. These workers spin for
//! about a millisecond after each job before they park, and each has its own job slot: the caller hands part `i` to
//! worker `i - 1`, computes part 0 itself and waits until every worker it used has finished, so the
//! borrowed job outlives every use of it.
extern crate std;

use core::sync::atomic::{AtomicBool, AtomicPtr, AtomicUsize, Ordering::*};
use std::boxed::Box;
use std::sync::{Condvar, Mutex};
use std::vec::Vec;

/// One part of a job: called with the part index.
pub type Job<'a> = &'a (dyn Fn(usize) + Sync);

/// Busy-wait iterations before an idle worker parks (on the order of a millisecond). Waiting spins
/// rather than yields: the pool never has more threads than cores (see `Session::with_threads`), and a
/// yield or a wake-up through the kernel costs as much as a small op.
const SPIN: u32 = 200_000;

struct Slot {
    /// Epoch of the last job handed to this worker.
    go: AtomicUsize,
    /// Epoch of the last job this worker finished.
    done: AtomicUsize,
    /// The job: a `*const Job<'_>` on the caller's stack, valid until `done == go`.
    job: AtomicPtr<()>,
    part: AtomicUsize,
    panicked: AtomicBool,
    sleeping: AtomicBool,
    lock: Mutex<()>,
    wake: Condvar,
}

pub struct Pool {
    slots: Vec<&'static Slot>,
    epoch: AtomicUsize,
    /// One caller at a time; another caller runs its parts itself.
    busy: Mutex<()>,
}

impl Pool {
    /// Starts `workers` threads; `None` if the OS refuses a thread.
    pub fn start(workers: usize) -> Option<Pool> {
        let mut slots = Vec::new();
        for i in 0..workers {
            let slot: &'static Slot = Box::leak(Box::new(Slot {
                go: AtomicUsize::new(0),
                done: AtomicUsize::new(0),
                job: AtomicPtr::new(core::ptr::null_mut()),
                part: AtomicUsize::new(0),
                panicked: AtomicBool::new(false),
                sleeping: AtomicBool::new(false),
                lock: Mutex::new(()),
                wake: Condvar::new(),
            }));
            std::thread::Builder::new()
                .name(std::format!("dmq-worker-{i}"))
                .spawn(move || work(slot))
                .ok()?;
            slots.push(slot);
        }
        Some(Pool {
            slots,
            epoch: AtomicUsize::new(0),
            busy: Mutex::new(()),
        })
    }

    /// Runs `job(0..parts)`: part 0 on the calling thread, the others on the workers (or all on the
    /// calling thread when the pool is in use by another caller or too small). False if a part panicked.
    pub fn run(&self, parts: usize, job: Job<'_>) -> bool {
        let guard = self.busy.try_lock();
        if guard.is_err() || parts > self.slots.len() + 1 {
            let mut ok = true;
            for i in 0..parts {
                ok &= std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| job(i))).is_ok();
            }
            return ok;
        }
        let epoch = self.epoch.fetch_add(1, Relaxed) + 1;
        let handle: *const Job<'_> = &job;
        let used = &self.slots[..parts.saturating_sub(1)];
        for (i, slot) in used.iter().enumerate() {
            slot.job.store(handle as *mut (), Relaxed);
            slot.part.store(i + 1, Relaxed);
            slot.go.store(epoch, SeqCst);
            if slot.sleeping.load(SeqCst) {
                let _l = slot.lock.lock();
                slot.wake.notify_one();
            }
        }
        let mut ok =
            parts == 0 || std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| job(0))).is_ok();
        for slot in used {
            while slot.done.load(Acquire) != epoch {
                core::hint::spin_loop();
            }
            ok &= !slot.panicked.swap(false, Relaxed);
        }
        ok
    }
}

fn work(slot: &'static Slot) {
    let mut seen = 0usize;
    loop {
        let mut spins = 0u32;
        let epoch = loop {
            let e = slot.go.load(Acquire);
            if e != seen {
                break e;
            }
            if spins < SPIN {
                spins += 1;
                core::hint::spin_loop();
                continue;
            }
            // park: announce it, then re-check under the lock the caller takes to notify
            let Ok(mut l) = slot.lock.lock() else { return };
            slot.sleeping.store(true, SeqCst);
            while slot.go.load(SeqCst) == seen {
                l = match slot.wake.wait(l) {
                    Ok(l) => l,
                    Err(_) => return,
                };
            }
            slot.sleeping.store(false, SeqCst);
            spins = 0;
        };
        seen = epoch;
        let handle = slot.job.load(Relaxed) as *const Job<'_>;
        let part = slot.part.load(Relaxed);
        // SAFETY: the caller stored a pointer to a `Job` on its stack before publishing `go` (Release
        // via SeqCst; read after the Acquire above) and does not return before `done == epoch`.
        let job: Job<'_> = unsafe { *handle };
        let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| job(part)));
        slot.panicked.store(r.is_err(), Relaxed);
        slot.done.store(epoch, Release);
    }
}

//! `run` and `sample` allocate nothing, with worker threads too: a counting global allocator around
//! the system's, one parallel `Exec::par_rows` at the threshold, and whole generations of the two
//! fixtures with two threads. (One test in this binary: nothing else allocates while it counts.)
use dmq_runtime::kernels::{Exec, Tier, PAR_MIN_MACS};
use dmq_runtime::sampler::Rng;
use dmq_runtime::{Model, SamplerKind, Session};
use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};

struct Counting;
static ALLOCS: AtomicUsize = AtomicUsize::new(0);

// SAFETY: every call is the system allocator's, counted
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        ALLOCS.fetch_add(1, Relaxed);
        unsafe { System.alloc(l) }
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        unsafe { System.dealloc(p, l) }
    }
    unsafe fn realloc(&self, p: *mut u8, l: Layout, size: usize) -> *mut u8 {
        ALLOCS.fetch_add(1, Relaxed);
        unsafe { System.realloc(p, l, size) }
    }
}

#[global_allocator]
static COUNTING: Counting = Counting;

/// Allocations made by `f`.
fn allocs(f: impl FnOnce()) -> usize {
    let before = ALLOCS.load(Relaxed);
    f();
    ALLOCS.load(Relaxed) - before
}

#[test]
fn parallel_ops_and_generations_allocate_nothing() {
    // one op split over two threads (the pool starts on the first call, which may allocate)
    let ex = Exec {
        tier: Tier::Scalar,
        threads: 2,
    };
    let parts = AtomicUsize::new(0);
    let mut out = vec![0i32; 64 * 16];
    let f = |r0: usize, _rows: usize, part: &mut [i32]| {
        parts.fetch_add(1, Relaxed);
        for (i, v) in part.iter_mut().enumerate() {
            *v = (r0 * 16 + i) as i32;
        }
        Ok(())
    };
    ex.par_rows(64, 16, PAR_MIN_MACS, &mut out, f).unwrap();
    let n = allocs(|| {
        for _ in 0..10 {
            ex.par_rows(64, 16, PAR_MIN_MACS, &mut out, f).unwrap();
        }
    });
    assert_eq!(n, 0, "par_rows allocated {n} times in 10 calls");
    assert_eq!(parts.load(Relaxed), 22, "each call runs two parts");
    assert!(out.iter().enumerate().all(|(i, &v)| v == i as i32));

    // whole generations (every op stream, so its preparation too), one and two threads
    let label = [3.0f32];
    for (bytes, extra) in [
        (&include_bytes!("data/tiny.dmq")[..], None),
        (
            &include_bytes!("data/class_fold.dmq")[..],
            Some(("class_labels", &label[..])),
        ),
    ] {
        let model = Model::load(bytes).unwrap();
        let mut arena = vec![0u128; model.arena_bytes().div_ceil(16)];
        let mut x = vec![0f32; model.latent_len()];
        for threads in [1, 2] {
            let mut sess = Session::new(&model, bytemuck::cast_slice_mut(&mut arena))
                .unwrap()
                .with_threads(threads);
            if let Some((name, v)) = extra {
                sess.set_input(name, v).unwrap();
            }
            let kind: SamplerKind = model.meta().sampler.default_sampler.into();
            let steps = model.meta().sampler.default_steps;
            let mut rng = Rng::new(7);
            rng.fill_gaussian(&mut x);
            sess.sample(kind, steps, &mut x, &mut rng).unwrap();
            let n = allocs(|| {
                for _ in 0..3 {
                    rng.fill_gaussian(&mut x);
                    sess.sample(kind, steps, &mut x, &mut rng).unwrap();
                }
            });
            assert_eq!(n, 0, "{threads} thread(s): sampling allocated {n} times");
        }
    }
}

//! The board latency harness (`boards/harness`) on the host, with a fake clock and a recording pin:
//! it samples exactly what `Session::sample` samples, prints the checksum line of `dmq-board sample
//! --checksum`, and marks every step boundary on the pin.
mod common;

use dmq_harness::{Clock, Config, Failure};
use dmq_runtime::sampler::sample_checksum;
use dmq_runtime::sampler::Rng;
use dmq_runtime::{Model, Prepared, Session};
use embedded_hal::digital::{ErrorKind, ErrorType, OutputPin};

/// Advances by 10 on every read.
struct Ticks(u64);
impl Clock for Ticks {
    fn now(&mut self) -> u64 {
        self.0 += 10;
        self.0
    }
    fn hz(&self) -> u64 {
        1000
    }
    fn unit(&self) -> &'static str {
        "ticks"
    }
}

/// Records every level it is set to; fails after `fail_after` writes if set.
struct Recorder {
    levels: Vec<bool>,
    fail_after: Option<usize>,
}
impl ErrorType for Recorder {
    type Error = ErrorKind;
}
impl OutputPin for Recorder {
    fn set_low(&mut self) -> Result<(), ErrorKind> {
        self.set(false)
    }
    fn set_high(&mut self) -> Result<(), ErrorKind> {
        self.set(true)
    }
}
impl Recorder {
    fn set(&mut self, v: bool) -> Result<(), ErrorKind> {
        if self.fail_after == Some(self.levels.len()) {
            return Err(ErrorKind::Other);
        }
        self.levels.push(v);
        Ok(())
    }
}

fn arena_for(model: &[u8]) -> Vec<u128> {
    let m = Model::load(model).unwrap();
    vec![0u128; m.arena_bytes().div_ceil(16)]
}

fn bytes_mut(a: &mut [u128]) -> &mut [u8] {
    let n = a.len() * 16;
    // SAFETY: u128 storage viewed as bytes, same allocation and length in bytes.
    unsafe { std::slice::from_raw_parts_mut(a.as_mut_ptr() as *mut u8, n) }
}

#[test]
fn harness_samples_what_the_session_samples_and_marks_each_step() {
    let dmq = common::tiny_dmq();
    let steps = 4;
    // reference: the runtime's own sampler
    let model = Model::load(dmq).unwrap();
    let mut ar = arena_for(dmq);
    let mut sess = Session::new(&model, bytes_mut(&mut ar)).unwrap();
    let mut x = vec![0f32; model.latent_len()];
    let mut rng = Rng::new(7);
    rng.fill_gaussian(&mut x);
    let kind = model.meta().sampler.default_sampler.into();
    sess.sample(kind, steps, &mut x, &mut rng).unwrap();
    let want = sample_checksum(&x);

    let mut ar = arena_for(dmq);
    let mut latent = vec![0f32; model.latent_len() + 5]; // larger buffers are fine
    let mut pin = Recorder {
        levels: vec![],
        fail_after: None,
    };
    let mut out = String::new();
    let cfg = Config {
        seed: 7,
        steps: Some(steps),
        sampler: None,
        inputs: &[],
    };
    let mut plan = vec![Prepared::IDLE; 4096];
    let r = dmq_harness::run(
        dmq,
        bytes_mut(&mut ar),
        &mut plan,
        &mut latent,
        &cfg,
        &mut Ticks(0),
        &mut pin,
        &mut out,
    )
    .unwrap();
    assert_eq!(r.checksum, want);
    assert!(out.contains(&format!("checksum: {want:016x}\n")), "{out}");
    // one level per step boundary: high, low, high, low, then low at the end
    assert_eq!(pin.levels, vec![true, false, true, false, false]);
    // each step spans exactly one clock read (the read after the previous line was written)
    assert_eq!((r.min, r.median, r.max, r.total), (10, 10, 10, 40));
    for i in 0..steps {
        assert!(out.contains(&format!("step {i}: 10 ticks\n")), "{out}");
    }
    assert!(out.contains("kernel tier"), "{out}");
}

#[test]
fn harness_reports_errors_instead_of_panicking() {
    let dmq = common::tiny_dmq();
    let model = Model::load(dmq).unwrap();
    let cfg = Config {
        seed: 1,
        steps: Some(2),
        sampler: None,
        inputs: &[],
    };
    let pin = || Recorder {
        levels: vec![],
        fail_after: None,
    };
    // a latent buffer one value short
    let mut ar = arena_for(dmq);
    let mut plan = vec![Prepared::IDLE; 4096];
    let mut small = vec![0f32; model.latent_len() - 1];
    let e = dmq_harness::run(
        dmq,
        bytes_mut(&mut ar),
        &mut plan,
        &mut small,
        &cfg,
        &mut Ticks(0),
        &mut pin(),
        &mut String::new(),
    );
    assert_eq!(
        e,
        Err(Failure::LatentBuffer {
            needed: model.latent_len(),
            got: model.latent_len() - 1
        })
    );
    // a truncated model, a too-small arena, a failing pin
    let mut latent = vec![0f32; model.latent_len()];
    let e = dmq_harness::run(
        &dmq[..dmq.len() / 2],
        bytes_mut(&mut ar),
        &mut plan,
        &mut latent,
        &cfg,
        &mut Ticks(0),
        &mut pin(),
        &mut String::new(),
    );
    assert!(matches!(e, Err(Failure::Runtime(_))), "{e:?}");
    let mut tiny = vec![0u128; 4];
    let e = dmq_harness::run(
        dmq,
        bytes_mut(&mut tiny),
        &mut plan,
        &mut latent,
        &cfg,
        &mut Ticks(0),
        &mut pin(),
        &mut String::new(),
    );
    assert!(
        matches!(e, Err(Failure::Runtime(dmq_runtime::Error::Arena { .. }))),
        "{e:?}"
    );
    let mut bad = Recorder {
        levels: vec![],
        fail_after: Some(1),
    };
    let e = dmq_harness::run(
        dmq,
        bytes_mut(&mut ar),
        &mut plan,
        &mut latent,
        &cfg,
        &mut Ticks(0),
        &mut bad,
        &mut String::new(),
    );
    assert_eq!(e, Err(Failure::Pin));
    // too few plan slots for one stream's ops
    let e = dmq_harness::run(
        dmq,
        bytes_mut(&mut ar),
        &mut plan[..model.plan_len() - 1],
        &mut latent,
        &cfg,
        &mut Ticks(0),
        &mut pin(),
        &mut String::new(),
    );
    assert!(
        matches!(
            e,
            Err(Failure::Runtime(dmq_runtime::Error::PlanLength { .. }))
        ),
        "{e:?}"
    );
}

//! A truncated, corrupted or hostile `.dmq` gives an error — never a panic, an out-of-bounds read or
//! a hang.
mod common;
use dmq_runtime::sampler::Rng;
use dmq_runtime::{Error, Model, SamplerKind, Session};

fn arena(n: usize) -> Vec<u128> {
    vec![0u128; n.div_ceil(16)]
}

fn bytes_of(a: &mut [u128]) -> &mut [u8] {
    let n = a.len() * 16;
    unsafe { std::slice::from_raw_parts_mut(a.as_mut_ptr() as *mut u8, n) }
}

/// Loads and, if that succeeds, runs one evaluation and two sampler steps.
fn exercise(bytes: &[u8]) -> Result<(), Error> {
    let model = Model::load(bytes)?;
    if model.arena_bytes() > 4 << 20 {
        return Err(Error::Arena {
            needed: model.arena_bytes(),
            got: 0,
        });
    }
    let mut a = arena(model.arena_bytes());
    let mut sess = Session::new(&model, bytes_of(&mut a))?;
    let n = model.latent_len();
    let x = vec![0.5f32; n];
    let mut out = vec![0f32; n];
    sess.run(&x, 500.0, &mut out)?;
    let mut xs = x.clone();
    sess.sample(SamplerKind::Ddpm, 2, &mut xs, &mut Rng::new(1))
}

#[test]
fn valid_model_loads_and_runs() {
    exercise(common::tiny_dmq()).expect("the valid model runs");
}

#[test]
fn wrong_magic_is_rejected() {
    let mut b = common::tiny_dmq().to_vec();
    b[0] = b'X';
    assert_eq!(Model::load(&b).unwrap_err(), Error::BadMagic);
    assert_eq!(Model::load(b"hello").unwrap_err(), Error::BadMagic);
    assert!(Model::load(&[]).is_err());
}

#[test]
fn other_major_version_is_rejected() {
    let mut b = common::tiny_dmq().to_vec();
    b[8] = 9;
    assert!(matches!(
        Model::load(&b).unwrap_err(),
        Error::UnsupportedVersion { major: 9, .. }
    ));
}

#[test]
fn every_truncation_is_an_error() {
    let b = common::tiny_dmq();
    let step = (b.len() / 2000).max(1);
    let mut n = 0;
    while n < b.len() {
        assert!(
            Model::load(&b[..n]).is_err(),
            "truncated to {n} bytes loaded"
        );
        n += if n < 512 { 1 } else { step };
    }
}

#[test]
fn bit_flips_are_detected_by_checksums() {
    let b = common::tiny_dmq();
    let mut rng = Rng::new(11);
    for _ in 0..300 {
        let mut m = b.to_vec();
        let at = 64 + (rng.next_u64() as usize) % (m.len() - 64);
        m[at] ^= 1 << (rng.next_u64() % 8);
        let r = Model::load(&m);
        if at < 64 + common_meta_end(b) || at >= blob_start(b) {
            assert!(r.is_err(), "flip at {at} not detected");
        }
    }
}

fn common_meta_end(b: &[u8]) -> usize {
    let h = dmq_runtime::format::Header::parse(b).unwrap();
    (h.meta.1 + h.ops.1) as usize
}

fn blob_start(b: &[u8]) -> usize {
    dmq_runtime::format::Header::parse(b).unwrap().blob.0 as usize
}

#[test]
fn hostile_files_with_valid_checksums_never_panic() {
    // Mutate the metadata and op records (then fix the checksums, as an attacker would) and run whatever
    // still validates: the runtime must return Ok or Err, never panic or read out of bounds.
    let b = common::tiny_dmq();
    let h = dmq_runtime::format::Header::parse(b).unwrap();
    let (start, len) = (h.meta.0 as usize, (h.meta.1 + h.ops.1) as usize);
    let mut rng = Rng::new(12);
    let (mut loaded, mut errors) = (0, 0);
    for i in 0..3000 {
        let mut m = b.to_vec();
        let flips = 1 + i % 4;
        for _ in 0..flips {
            let at = start + (rng.next_u64() as usize) % len;
            match rng.next_u64() % 3 {
                0 => m[at] ^= 1 << (rng.next_u64() % 8),
                1 => m[at] = rng.next_u64() as u8,
                _ => m[at] = [0, 1, 0x7f, 0x80, 0xff][(rng.next_u64() % 5) as usize],
            }
        }
        common::fix_checksums(&mut m);
        match exercise(&m) {
            Ok(()) => loaded += 1,
            Err(_) => errors += 1,
        }
    }
    assert!(errors > 0, "mutations were never rejected");
    println!("hostile mutations: {loaded} still ran, {errors} rejected");
}

#[test]
fn hostile_invariant_prefixes_never_panic() {
    // A file may claim that any number of leading ops depend only on the extra inputs and that any
    // arena range holds their outputs: out-of-range claims are refused at load, the others run (the
    // runtime then skips those ops on later evaluations — wrong numbers from a lying file, but only
    // arena bytes are ever read).
    let b = common::tiny_dmq();
    let m = Model::load(b).unwrap();
    let (ops, state) = (m.meta().ops_per_stream, m.meta().sampler_state);
    for k in [0, 1, 3, ops, ops + 1] {
        for bytes in [0, 16, state, state + 1] {
            let edited = dmq_compiler::emit::with_meta(b, |meta, _| {
                meta.invariant_ops = k;
                meta.invariant_bytes = bytes;
                Ok(())
            })
            .unwrap();
            let refused = k > ops || bytes > state || (k == 0 && bytes > 0);
            match Model::load(&edited) {
                Err(_) => assert!(refused, "k={k} bytes={bytes} refused"),
                Ok(model) => {
                    assert!(!refused, "k={k} bytes={bytes} loaded");
                    assert_eq!(model.invariant_shared(), k > 0 && model.streams() == 1);
                    exercise(&edited).unwrap();
                }
            }
        }
    }
}

#[test]
fn arena_too_small_or_misaligned_is_an_error() {
    let model = Model::load(common::tiny_dmq()).unwrap();
    let mut a = arena(model.arena_bytes());
    let buf = bytes_of(&mut a);
    let need = model.arena_bytes();
    assert!(matches!(
        Session::new(&model, &mut buf[..need - 1]),
        Err(Error::Arena { .. })
    ));
    assert!(matches!(
        Session::new(&model, &mut buf[1..]),
        Err(Error::Arena { .. })
    ));
}

#[test]
fn wrong_buffer_lengths_are_errors() {
    let model = Model::load(common::tiny_dmq()).unwrap();
    let mut a = arena(model.arena_bytes());
    let mut sess = Session::new(&model, bytes_of(&mut a)).unwrap();
    let n = model.latent_len();
    let mut out = vec![0f32; n];
    assert!(sess.run(&vec![0.0; n + 1], 1.0, &mut out).is_err());
    assert!(sess
        .sample(SamplerKind::Ddim, 0, &mut vec![0.0; n], &mut Rng::new(0))
        .is_err());
}

#[test]
fn simd_kernels_equal_the_scalar_kernels_on_random_shapes() {
    // convs, linears (token- and channel-major), attention operands, int8 and int16 activations, 8-
    // and 4-bit weights, tile writes, GroupNorm sums and affine, int8 lookups: the same property
    // check `dmq-board selftest` runs on the boards
    use dmq_runtime::kernels::Tier;
    let tiers: Vec<Tier> = Tier::SIMD.into_iter().filter(|t| t.supported()).collect();
    let checked = dmq_runtime::kernels::check::tiers_match_scalar(&tiers, 200, 99).unwrap();
    println!("{checked} cases on {tiers:?}");
    assert_eq!(checked == 0, tiers.is_empty());
}

#[test]
fn every_kernel_tier_of_this_cpu_gives_the_scalar_bits() {
    // Whole-model check of the SIMD tiers (staged inputs, packed weights, register tiles, fused
    // epilogue) against the scalar reference: AVX2 on an x86 host (the aarch64 tiers are checked by
    // `dmq-board selftest` and the sampling checksums of scripts/test-aarch64.sh).
    use dmq_runtime::kernels::Tier;
    let bytes = common::tiny_dmq();
    let model = Model::load(bytes).unwrap();
    let n = model.latent_len();
    let mut x = vec![0f32; n];
    Rng::new(3).fill_gaussian(&mut x);
    let run = |tier: Tier, t: f32| {
        let mut a = arena(model.arena_bytes());
        let mut sess = Session::new(&model, bytes_of(&mut a))
            .unwrap()
            .with_tier(tier);
        let mut y = vec![0f32; n];
        sess.run(&x, t, &mut y).unwrap();
        (sess.tier(), y)
    };
    for t in [1.0, 500.0, 999.0] {
        let (_, reference) = run(Tier::Scalar, t);
        for tier in Tier::SIMD {
            let (used, y) = run(tier, t);
            if used == tier {
                assert_eq!(
                    y.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
                    reference.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
                    "{tier:?} at t={t}"
                );
            }
        }
    }
}

//! Weights that stay in their source (`Model::load_paged`, `Session::with_pager`): the same bits as
//! the model loaded whole, with any cache from the model's stated minimum up; bad sources and
//! hostile files are errors, as they are for the whole file.
mod common;
use dmq_compiler::eval::arena_bytes;
use dmq_runtime::blob::{BlobSource, FileSource};
use dmq_runtime::format::Header;
use dmq_runtime::sampler::Rng;
use dmq_runtime::{Error, Limits, Model, SamplerKind, Session};

fn buf(n: usize) -> Vec<u128> {
    vec![0u128; n.div_ceil(16).max(1)]
}

/// [`drive`] on the file loaded whole.
fn whole(bytes: &[u8], threads: usize) -> Result<Vec<f32>, Error> {
    let model = Model::load(bytes)?;
    if model.arena_bytes() > 4 << 20 {
        return Err(Error::Unsupported("arena too large for this test"));
    }
    let mut a = buf(model.arena_bytes());
    let mut sess = Session::new(&model, arena_bytes(&mut a))?.with_threads(threads);
    drive(&mut sess, model.latent_len(), table_t(bytes))
}

/// The same with the blob read from `src` through a cache of `cache` bytes; also the cache's
/// statistics after the run.
fn paged(
    bytes: &[u8],
    src: &mut dyn BlobSource,
    cache: usize,
    threads: usize,
) -> Result<(Vec<f32>, dmq_runtime::blob::PagerStats, usize), Error> {
    let mut c = buf(cache);
    let cache_bytes = &mut arena_bytes(&mut c)[..cache];
    let h = Header::parse_head(bytes)?;
    let head = &bytes[..h.blob.0 as usize];
    let model = Model::load_paged(head, src, cache_bytes, Limits::default())?;
    if model.arena_bytes() > 4 << 20 {
        return Err(Error::Unsupported("arena too large for this test"));
    }
    let mut a = buf(model.arena_bytes());
    let min = model.min_cache_bytes();
    let sess = Session::with_pager(&model, arena_bytes(&mut a), src, cache_bytes)?;
    let mut sess = sess.with_threads(threads);
    let n = model.latent_len();
    let out = drive(&mut sess, n, table_t(bytes))?;
    Ok((out, sess.pager_stats().unwrap(), min))
}

/// The first timestep of the file's folded time path (its outputs come from the blob's table).
fn table_t(bytes: &[u8]) -> Option<f32> {
    let m = Model::load(bytes).ok()?;
    let tt = m.meta().time_table.as_ref()?;
    let b = m.blob().get(tt.timesteps.offset as usize..)?.get(..4)?;
    Some(f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
}

/// One evaluation at t = 500 and one at the time table's first timestep, then a 3-step DDIM
/// sample from seed 5.
fn drive(sess: &mut Session<'_, '_, '_>, n: usize, table: Option<f32>) -> Result<Vec<f32>, Error> {
    let x = vec![0.5f32; n];
    let mut out = vec![0f32; n];
    sess.run(&x, 500.0, &mut out)?;
    if let Some(t) = table.filter(|t| t.is_finite()) {
        let mut o = vec![0f32; n];
        sess.run(&x, t, &mut o)?;
        out.extend(o);
    }
    let mut xs = vec![0f32; n];
    let mut rng = Rng::new(5);
    rng.fill_gaussian(&mut xs);
    sess.sample(SamplerKind::Ddim, 3, &mut xs, &mut rng)?;
    out.extend(xs);
    Ok(out)
}

/// The tiny fixture with its time path folded into a table in the blob (`--fold-time-path`),
/// which a paged session reads from the source too.
fn tiny_folded() -> &'static [u8] {
    static BYTES: std::sync::OnceLock<Vec<u8>> = std::sync::OnceLock::new();
    BYTES.get_or_init(|| {
        let opts = dmq_compiler::CompileOptions {
            steps: 5,
            calib_samples: 2,
            eval_samples: 1,
            progress: false,
            calib_source: dmq_compiler::CalibSource::Forward,
            fold_time_path: true,
            ..Default::default()
        };
        dmq_compiler::compile(&common::fixture("tiny_unet.onnx"), &opts)
            .expect("tiny fixture compiles")
            .bytes
    })
}

fn blob_of(bytes: &[u8]) -> &[u8] {
    let h = Header::parse(bytes).unwrap();
    &bytes[h.blob.0 as usize..]
}

fn bits(v: &[f32]) -> Vec<u32> {
    v.iter().map(|x| x.to_bits()).collect()
}

#[test]
fn streamed_weights_give_the_bits_of_the_whole_file_with_any_cache_from_the_minimum() {
    let b = tiny_folded();
    let blob = blob_of(b);
    assert!(table_t(b).is_some(), "the fixture has a folded time path");
    let want = bits(&whole(b, 1).unwrap());
    // a cache that holds every array with its 16-byte record: each array is read once, however
    // many evaluations run
    let (out, all, min) = paged(b, &mut { blob }, 2 * blob.len(), 1).unwrap();
    assert_eq!(bits(&out), want, "paged with a whole-blob cache");
    assert!(
        min > 0 && min < blob.len(),
        "minimum cache {min} of {}",
        blob.len()
    );
    assert!(all.bytes_read <= blob.len() as u64, "{all:?}");
    // the stated minimum: the same bits, arrays read again as the cache starts over
    let (out, small, _) = paged(b, &mut { blob }, min, 1).unwrap();
    assert_eq!(bits(&out), want, "paged with the minimum cache");
    assert!(
        small.bytes_read > all.bytes_read,
        "{small:?} against {all:?}"
    );
    // from a file, with two threads
    let path = std::env::temp_dir().join(format!("dmq-paged-{}.dmq", std::process::id()));
    std::fs::write(&path, b).unwrap();
    let h = Header::parse(b).unwrap();
    let mut file = FileSource::new(std::fs::File::open(&path).unwrap(), h.blob.0 as u64);
    let (out, _, _) = paged(b, &mut file, min + 4096, 2).unwrap();
    std::fs::remove_file(&path).ok();
    assert_eq!(
        bits(&out),
        bits(&whole(b, 2).unwrap()),
        "from a file, 2 threads"
    );
    println!(
        "blob {} bytes; minimum cache {min} bytes; 5 evaluations read {} bytes in {} reads with it, \
         {} bytes in {} reads with a whole-blob cache",
        blob.len(),
        small.bytes_read,
        small.reads,
        all.bytes_read,
        all.reads
    );
}

#[test]
fn a_cache_below_the_minimum_is_an_error_that_states_the_size() {
    let b = common::tiny_dmq();
    let blob = blob_of(b);
    let (_, _, min) = paged(b, &mut { blob }, blob.len(), 1).unwrap();
    let err = paged(b, &mut { blob }, min - 16, 1).unwrap_err();
    assert_eq!(
        err,
        Error::Cache {
            needed: min,
            got: min - 16
        }
    );
    // loading through a cache smaller than one op's arrays
    assert!(matches!(
        paged(b, &mut { blob }, 16, 1).unwrap_err(),
        Error::Cache { got: 16, .. }
    ));
    // a paged model runs only with a pager, a whole one only without
    let h = Header::parse(b).unwrap();
    let mut c = buf(blob.len());
    let model = Model::load_paged(
        &b[..h.blob.0 as usize],
        &mut { blob },
        arena_bytes(&mut c),
        Limits::default(),
    )
    .unwrap();
    let mut a = buf(model.arena_bytes());
    assert!(matches!(
        Session::new(&model, arena_bytes(&mut a)).err(),
        Some(Error::Unsupported(_))
    ));
    let whole_model = Model::load(b).unwrap();
    let (mut c, mut a) = (buf(blob.len()), buf(model.arena_bytes()));
    let mut src = blob;
    assert!(matches!(
        Session::with_pager(
            &whole_model,
            arena_bytes(&mut a),
            &mut src,
            arena_bytes(&mut c)
        )
        .err(),
        Some(Error::Unsupported(_))
    ));
}

#[test]
fn short_or_corrupted_sources_are_errors() {
    let b = common::tiny_dmq();
    let blob = blob_of(b);
    for cut in [0, 1, blob.len() / 2, blob.len() - 1] {
        let err = paged(b, &mut { &blob[..cut] }, blob.len(), 1).unwrap_err();
        assert_eq!(err, Error::Truncated, "blob cut to {cut} bytes");
    }
    let mut rng = Rng::new(3);
    for _ in 0..50 {
        let mut m = blob.to_vec();
        let at = rng.next_u64() as usize % m.len();
        m[at] ^= 1 << (rng.next_u64() % 8);
        let err = paged(b, &mut { &m[..] }, 4096, 1).unwrap_err();
        assert_eq!(
            err,
            Error::ChecksumMismatch { section: "blob" },
            "flip at {at}"
        );
    }
    // a head cut before the blob
    let h = Header::parse(b).unwrap();
    let mut c = buf(4096);
    assert!(Model::load_paged(
        &b[..h.blob.0 as usize - 1],
        &mut { blob },
        arena_bytes(&mut c),
        Limits::default()
    )
    .is_err());
}

#[test]
fn hostile_files_run_paged_exactly_as_whole() {
    // Mutated metadata and op records (checksums fixed, as an attacker would): whatever loads whole
    // loads paged and computes the same bits; whatever is refused whole is refused paged.
    let b = tiny_folded();
    let h = Header::parse(b).unwrap();
    let (start, len) = (h.meta.0 as usize, (h.meta.1 + h.ops.1) as usize);
    let mut rng = Rng::new(21);
    let (mut ran, mut refused) = (0, 0);
    for i in 0..600 {
        let mut m = b.to_vec();
        for _ in 0..1 + i % 3 {
            let at = start + (rng.next_u64() as usize) % len;
            m[at] = match rng.next_u64() % 2 {
                0 => m[at] ^ (1 << (rng.next_u64() % 8)),
                _ => rng.next_u64() as u8,
            };
        }
        common::fix_checksums(&mut m);
        let w = whole(&m, 1);
        let blob = blob_of(&m);
        let p = paged(&m, &mut { blob }, blob.len(), 1);
        match (w, p) {
            (Ok(w), Ok((p, _, _))) => {
                assert_eq!(bits(&w), bits(&p), "mutation {i}: paged bits differ");
                ran += 1;
            }
            (Err(_), Err(_)) => refused += 1,
            (w, p) => panic!("mutation {i}: whole {:?}, paged {:?}", w.err(), p.err()),
        }
    }
    assert!(ran > 0 && refused > 0, "{ran} ran, {refused} refused");
    println!("hostile mutations: {ran} ran the same bits paged and whole, {refused} refused both");
}

//! `dmq-board`: runs `.dmq` models on a Linux board (Raspberry Pi 4/5, Jetson) with dmq-runtime.
//! No ONNX, no Python, no float model on the device. Dependencies: the runtime only (std), so it
//! cross-builds with nothing but a linker.
//!
//! ```text
//! dmq-board run MODEL.dmq --input NAME=FILE.npy ... -o DIR
//! dmq-board sample MODEL.dmq [--seed S] [--steps N] [--sampler ddim|ddpm] -o OUT.npy|OUT.pgm [--checksum]
//! dmq-board bench MODEL.dmq [--runs N] [--threads T] [--input NAME=FILE.npy] [--profile-t T] [--top N]
//!     sample and bench take --stream-weights BYTES: the weights stay in the file and are read
//!     through a cache of BYTES (k/M suffixes), for boards with less RAM than the model, and
//!     --tier NAME: another kernel tier this CPU has (on x86 the non-GEMM ops are capped at it too)
//! dmq-board selftest [--cases N]     every SIMD tier this CPU has against the scalar kernels
//! dmq-board info
//! ```
use dmq_runtime::blob::FileSource;
use dmq_runtime::format::{DType, Header, ModelMeta, Op, TRef, HEADER_LEN};
use dmq_runtime::kernels::Tier;
use dmq_runtime::sampler::Rng;
use dmq_runtime::sampler::{sample_checksum, schedule_value};
use dmq_runtime::{Model, SamplerKind, Session};
use std::path::{Path, PathBuf};
use std::time::Instant;

mod npy;
mod tiers;
use tiers::{ops_note, with_tier_arg};

type Res<T> = Result<T, String>;

fn usage() -> String {
    "usage:\n  dmq-board run MODEL.dmq --input NAME=FILE.npy ... -o DIR\n  dmq-board sample MODEL.dmq [--seed S] [--steps N] [--sampler ddim|ddpm|euler|consistency] [--input NAME=FILE.npy] [-o OUT.npy|OUT.pgm] [--checksum] [--threads T] [--guidance S --uncond NAME=FILE.npy] [--stream-weights BYTES] [--tier NAME]\n  dmq-board bench MODEL.dmq [--runs N] [--threads T] [--input NAME=FILE.npy] [--profile-t T] [--top N] [--stream-weights BYTES] [--tier scalar|neon|neon-dot|avx2|avx-vnni|avx512-vnni]\n  dmq-board selftest [--cases N]\n  dmq-board info".into()
}

fn main() {
    // end quietly when stdout is closed early (`dmq-board bench m.dmq | head`)
    let default_hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        if info.to_string().contains("Broken pipe") {
            std::process::exit(0);
        }
        default_hook(info)
    }));
    let args: Vec<String> = std::env::args().skip(1).collect();
    let res = match args.first().map(|s| s.as_str()) {
        Some("run") => cmd_run(&args[1..]),
        Some("sample") => cmd_sample(&args[1..]),
        Some("bench") => cmd_bench(&args[1..]),
        Some("selftest") => cmd_selftest(&args[1..]),
        Some("info") => {
            println!("kernel tier: {:?}{}", Tier::detect(), ops_note());
            Ok(())
        }
        _ => Err(usage()),
    };
    // exit codes: 2 for a usage error (unknown command, missing argument, a flag that is not a
    // number), 1 for any other error
    if let Err(e) = res {
        if e.starts_with("usage") {
            eprintln!("{e}");
            std::process::exit(2);
        }
        eprintln!("error: {e}");
        std::process::exit(1);
    }
}

/// Flag values: `--name value` pairs and positional arguments.
struct Args {
    pos: Vec<String>,
    flags: Vec<(String, Option<String>)>,
}

fn parse(args: &[String], switches: &[&str]) -> Args {
    let mut a = Args {
        pos: vec![],
        flags: vec![],
    };
    let mut i = 0;
    while i < args.len() {
        let s = &args[i];
        if let Some(name) = s
            .strip_prefix("--")
            .or_else(|| s.strip_prefix('-').filter(|n| n.len() == 1))
        {
            if switches.contains(&name) {
                a.flags.push((name.to_string(), None));
            } else {
                a.flags.push((name.to_string(), args.get(i + 1).cloned()));
                i += 1;
            }
        } else {
            a.pos.push(s.clone());
        }
        i += 1;
    }
    a
}

impl Args {
    fn get(&self, name: &str) -> Option<&str> {
        self.flags
            .iter()
            .rev()
            .find(|(n, _)| n == name)
            .and_then(|(_, v)| v.as_deref())
    }
    fn all(&self, name: &str) -> Vec<&str> {
        self.flags
            .iter()
            .filter(|(n, _)| n == name)
            .filter_map(|(_, v)| v.as_deref())
            .collect()
    }
    fn has(&self, name: &str) -> bool {
        self.flags.iter().any(|(n, _)| n == name)
    }
    fn num<T: std::str::FromStr>(&self, name: &str, default: T) -> Res<T> {
        match self.get(name) {
            None => Ok(default),
            Some(v) => v
                .parse()
                .map_err(|_| format!("usage: --{name}: not a number: {v}")),
        }
    }
}

fn load(path: &str) -> Res<Vec<u8>> {
    std::fs::read(path).map_err(|e| format!("reading {path}: {e}"))
}

/// A model file in memory, or (`--stream-weights BYTES`) its head in memory and its blob read on
/// demand through a cache of BYTES.
enum Store {
    Whole(Vec<u8>),
    Paged {
        head: Vec<u8>,
        src: FileSource,
        cache: Vec<u128>,
        len: usize,
    },
}

impl Store {
    fn open(path: &str, a: &Args) -> Res<Store> {
        let Some(v) = a.get("stream-weights") else {
            return Ok(Store::Whole(load(path)?));
        };
        let (num, mult) = match v.strip_suffix(['k', 'K']) {
            Some(n) => (n, 1 << 10),
            None => match v.strip_suffix('M') {
                Some(n) => (n, 1 << 20),
                None => (v, 1),
            },
        };
        let len = num.parse::<usize>().map_err(|_| {
            format!("usage: --stream-weights expects bytes (k/M suffixes), got {v}")
        })? * mult;
        let io = |e: std::io::Error| format!("reading {path}: {e}");
        let mut file = std::fs::File::open(path).map_err(io)?;
        let mut first = [0u8; HEADER_LEN];
        std::io::Read::read_exact(&mut file, &mut first).map_err(io)?;
        // the head reaches the blob; its checksum and records are checked at load
        let header = Header::parse_fields(&first).map_err(|e| format!("{path}: {e}"))?;
        let blob_at = header.blob.0 as usize;
        let mut head = vec![0u8; blob_at];
        std::io::Seek::seek(&mut file, std::io::SeekFrom::Start(0)).map_err(io)?;
        std::io::Read::read_exact(&mut file, &mut head).map_err(io)?;
        Ok(Store::Paged {
            head,
            src: FileSource::new(file, blob_at as u64),
            cache: vec![0u128; len.div_ceil(16)],
            len,
        })
    }

    /// Bytes of the model in memory: the file, or the head and the cache.
    fn resident(&self) -> usize {
        match self {
            Store::Whole(b) => b.len(),
            Store::Paged { head, len, .. } => head.len() + len,
        }
    }

    /// The validated model, and for a paged one its blob source and cache.
    fn model(&mut self) -> Res<(Model<'_>, Paging<'_>)> {
        let err = |e: dmq_runtime::Error| e.to_string();
        match self {
            Store::Whole(b) => Ok((Model::load(b).map_err(err)?, None)),
            Store::Paged {
                head,
                src,
                cache,
                len,
            } => {
                let cache = &mut bytes_mut(cache)[..*len];
                let model = Model::load_paged(head, src, cache, Default::default()).map_err(err)?;
                eprintln!(
                    "weights streamed from the file: blob {} bytes, cache {} bytes (this model needs \
                     at least {}), head {} bytes in memory",
                    model.blob_len(),
                    cache.len(),
                    model.min_cache_bytes(),
                    head.len()
                );
                Ok((model, Some((src, cache))))
            }
        }
    }
}

/// A paged model's blob source and weight cache.
type Paging<'s> = Option<(&'s mut FileSource, &'s mut [u8])>;

/// A session over `arena`: for a paged model, through its source and cache.
fn session<'m, 'a, 'r>(
    model: &'m Model<'a>,
    arena: &'r mut [u8],
    paging: Paging<'r>,
) -> Res<Session<'m, 'a, 'r>> {
    match paging {
        None => Session::new(model, arena),
        Some((src, cache)) => Session::with_pager(model, arena, src, cache),
    }
    .map_err(|e| e.to_string())
}

/// What a paged session's cache read, for the summary lines.
fn pager_line(sess: &Session<'_, '_, '_>, what: &str) -> Option<String> {
    sess.pager_stats().map(|st| {
        format!(
            "weight cache: {} reads, {} bytes read from the file over {what}, {} lookups served from the cache",
            st.reads, st.bytes_read, st.hits
        )
    })
}

/// An arena with the 16-byte alignment the runtime requires.
fn arena(model: &Model) -> Vec<u128> {
    vec![0u128; model.arena_bytes().div_ceil(16)]
}

fn bytes_mut(a: &mut [u128]) -> &mut [u8] {
    let n = a.len() * 16;
    // SAFETY: u128 storage viewed as bytes; same allocation, length in bytes.
    unsafe { std::slice::from_raw_parts_mut(a.as_mut_ptr() as *mut u8, n) }
}

/// The checksum line `dmq-board sample --checksum` and the bare-metal image print: FNV-1a 64 of the
/// sample's f32 little-endian bytes.
pub fn checksum(x: &[f32]) -> String {
    format!("{:016x}", sample_checksum(x))
}

fn write_npy(path: &Path, shape: &[usize], data: &[f32]) -> Res<()> {
    npy::write(path, shape, data)
}

/// An npy input for a model tensor of shape `want` (leading 1s aside), values finite.
fn read_input(file: &str, label: &str, want: &[usize]) -> Res<Vec<f32>> {
    let (shape, data) = npy::read(file, &load(file)?)?;
    if !npy::same_shape(&shape, want) {
        return Err(format!(
            "{label}: {file} has shape {shape:?}, the model takes {want:?}"
        ));
    }
    Ok(data)
}

fn shape(t: &TRef) -> Vec<usize> {
    t.shape.iter().map(|&d| d as usize).collect()
}

/// Values of the model's extra inputs (conditions, embeddings) from `--input NAME=FILE.npy`.
fn extra_inputs(a: &Args, meta: &ModelMeta) -> Res<Vec<Vec<f32>>> {
    let mut out = vec![];
    for e in &meta.extra_inputs {
        let file = a
            .all("input")
            .into_iter()
            .find_map(|s| s.split_once('=').filter(|(n, _)| *n == e.name.as_str()))
            .map(|(_, f)| f)
            .ok_or(format!("missing --input {}=FILE.npy", e.name))?;
        out.push(read_input(
            file,
            &format!("--input {}", e.name),
            &shape(&e.tensor),
        )?);
    }
    Ok(out)
}

fn set_extras<'r>(sess: &mut Session<'_, '_, 'r>, meta: &ModelMeta, v: &'r [Vec<f32>]) -> Res<()> {
    for (e, vals) in meta.extra_inputs.iter().zip(v) {
        sess.set_input(e.name.as_str(), vals)
            .map_err(|err| format!("input {}: {err}", e.name))?;
    }
    Ok(())
}

fn cmd_run(args: &[String]) -> Res<()> {
    let a = parse(args, &[]);
    let path = a.pos.first().ok_or_else(usage)?;
    let bytes = load(path)?;
    let model = Model::load(&bytes).map_err(|e| e.to_string())?;
    let meta: ModelMeta = model.meta().clone();
    let (mut latent, mut t) = (None, vec![0.0f32]);
    for spec in a.all("input") {
        let (name, file) = spec
            .split_once('=')
            .ok_or(format!("--input expects NAME=FILE.npy, got {spec}"))?;
        if name == meta.latent_name.as_str() {
            let (sh, v) = npy::read(file, &load(file)?)?;
            let want = shape(&meta.latent);
            let batched = sh.len() == want.len() && sh.len() > 1 && sh[1..] == want[1..];
            if !(npy::same_shape(&sh, &want) || batched) {
                return Err(format!("--input {name}: {file} has shape {sh:?}, the model's latent is {want:?} (a batch may replace the first dimension)"));
            }
            latent = Some(v);
        } else if name == meta.timestep_name.as_str() && meta.timestep.is_some() {
            let (sh, v) = npy::read(file, &load(file)?)?;
            if sh.len() > 1 {
                return Err(format!("--input {name}: {file} has shape {sh:?}; a timestep is a scalar or one per latent"));
            }
            t = v;
        } else if !meta.extra_inputs.iter().any(|e| e.name.as_str() == name) {
            return Err(format!("the model has no input named {name:?}"));
        }
    }
    let extras = extra_inputs(&a, &meta)?;
    let x = latent.ok_or(format!("missing --input {}=FILE.npy", meta.latent_name))?;
    let per = model.latent_len();
    if x.is_empty() || x.len() % per != 0 {
        return Err(format!(
            "latent has {} values, not a multiple of {per}",
            x.len()
        ));
    }
    let mut ar = arena(&model);
    let mut sess = Session::new(&model, bytes_mut(&mut ar)).map_err(|e| e.to_string())?;
    set_extras(&mut sess, &meta, &extras)?;
    let mut out = vec![0f32; x.len()];
    for b in 0..x.len() / per {
        let tv = if t.len() == 1 {
            t[0]
        } else {
            *t.get(b).ok_or("fewer timesteps than batch entries")?
        };
        sess.run(
            &x[b * per..(b + 1) * per],
            tv,
            &mut out[b * per..(b + 1) * per],
        )
        .map_err(|e| e.to_string())?;
    }
    let dir = PathBuf::from(
        a.get("o")
            .or(a.get("output"))
            .ok_or("usage: dmq-board run needs -o DIR")?,
    );
    std::fs::create_dir_all(&dir).map_err(|e| format!("creating {}: {e}", dir.display()))?;
    let name: String = meta
        .output_name
        .chars()
        .map(|c| {
            if c.is_alphanumeric() || "_-.".contains(c) {
                c
            } else {
                '_'
            }
        })
        .collect();
    let mut sh = shape(&meta.latent);
    sh[0] *= x.len() / per;
    let file = dir.join(format!("{name}.npy"));
    write_npy(&file, &sh, &out)?;
    println!("wrote {}", file.display());
    Ok(())
}

fn sampler_of(a: &Args, model: &Model) -> Res<SamplerKind> {
    Ok(match a.get("sampler") {
        Some("ddim") => SamplerKind::Ddim,
        Some("ddpm") => SamplerKind::Ddpm,
        Some("euler") => SamplerKind::Euler,
        Some("consistency") => SamplerKind::Consistency,
        Some(s) => {
            return Err(format!(
                "--sampler {s}: use ddim, ddpm, euler or consistency"
            ))
        }
        None => model.meta().sampler.default_sampler.into(),
    })
}

fn cmd_sample(args: &[String]) -> Res<()> {
    let a = parse(args, &["checksum"]);
    let path = a.pos.first().ok_or_else(usage)?;
    let mut store = Store::open(path, &a)?;
    let (model, paging) = store.model()?;
    let seed: u64 = a.num("seed", 0)?;
    let steps: u32 = a.num("steps", model.meta().sampler.default_steps)?;
    let kind = sampler_of(&a, &model)?;
    let meta = model.meta().clone();
    let extras = extra_inputs(&a, &meta)?;
    let mut ar = arena(&model);
    // classifier-free guidance: --guidance S with --uncond NAME=FILE.npy
    let uncond: Vec<(String, Vec<f32>)> = a
        .all("uncond")
        .into_iter()
        .map(|s| {
            let (name, file) = s
                .split_once('=')
                .ok_or(format!("--uncond expects NAME=FILE.npy, got {s:?}"))?;
            let e = meta
                .extra_inputs
                .iter()
                .find(|e| e.name.as_str() == name)
                .ok_or(format!(
                    "--uncond {name}: the model has no extra input of that name"
                ))?;
            Ok((
                name.to_string(),
                read_input(file, &format!("--uncond {name}"), &shape(&e.tensor))?,
            ))
        })
        .collect::<Res<_>>()?;
    let guidance: Option<f32> = match a.get("guidance") {
        Some(g) => Some(
            g.parse()
                .map_err(|_| format!("--guidance: not a number: {g}"))?,
        ),
        None => None,
    };
    if guidance.is_some() != !uncond.is_empty() {
        return Err("--guidance S and --uncond NAME=FILE.npy go together".into());
    }
    let mut scratch = vec![0f32; model.guidance_scratch_len()];
    let sess = session(&model, bytes_mut(&mut ar), paging)?;
    let mut sess = with_tier_arg(&a, sess)?.with_threads(a.num("threads", 1)?);
    set_extras(&mut sess, &meta, &extras)?;
    for (name, v) in &uncond {
        sess.set_uncond_input(name, v)
            .map_err(|e| format!("--uncond {name}: {e}"))?;
    }
    if let Some(g) = guidance {
        sess.set_guidance(g, &mut scratch)
            .map_err(|e| format!("--guidance: {e}"))?;
    }
    let mut x = vec![0f32; model.latent_len()];
    let mut rng = Rng::new(seed);
    rng.fill_gaussian(&mut x);
    let t0 = Instant::now();
    sess.sample(kind, steps, &mut x, &mut rng)
        .map_err(|e| e.to_string())?;
    let secs = t0.elapsed().as_secs_f64();
    eprintln!(
        "sampled {steps} steps in {:.3} s ({:.2} ms/step, kernel tier {:?}, {} thread(s))",
        secs,
        1e3 * secs / steps as f64,
        sess.tier(),
        sess.threads()
    );
    if let Some(line) = pager_line(&sess, &format!("{steps} steps")) {
        eprintln!("{line}");
    }
    if let Some(out) = a.get("o").or(a.get("output")) {
        let meta = model.meta();
        if out.ends_with(".npy") {
            write_npy(Path::new(out), &shape(&meta.latent), &x)?;
        } else if out.ends_with(".pgm") || out.ends_with(".png") {
            // PGM: the board keeps to std; convert with any image tool
            let s = shape(&meta.latent);
            let (h, w) = (s[s.len() - 2], s[s.len() - 1]);
            let mut b = format!("P5\n{w} {h}\n255\n").into_bytes();
            b.extend(
                x[..h * w]
                    .iter()
                    .map(|v| ((v.clamp(-1.0, 1.0) + 1.0) * 127.5).round() as u8),
            );
            let out = if out.ends_with(".png") {
                out.trim_end_matches(".png").to_string() + ".pgm"
            } else {
                out.to_string()
            };
            std::fs::write(&out, b).map_err(|e| format!("writing {out}: {e}"))?;
            println!("wrote {out}");
        } else {
            return Err("-o must end in .npy or .pgm".into());
        }
    }
    if a.has("checksum") {
        println!("checksum: {}", checksum(&x));
    }
    Ok(())
}

/// Property test on the device: random conv shapes and values, every tier this CPU supports against
/// the scalar reference, bit for bit.
fn cmd_selftest(args: &[String]) -> Res<()> {
    let a = parse(args, &[]);
    let cases: usize = a.num("cases", 300)?;
    let best = Tier::detect();
    let tiers: Vec<Tier> = Tier::SIMD.into_iter().filter(|t| t.supported()).collect();
    let checked = dmq_runtime::kernels::check::tiers_match_scalar(&tiers, cases, 2024)
        .map_err(|e| format!("selftest: {e}"))?;
    println!("selftest: {checked} random kernel cases (convolutions, linears, attention operands; sums, requantized codes, tile writes; GroupNorm sums and affine, int8 lookups, int16 table interpolation, 4-bit unpacks) bit-identical to the scalar kernels on tiers {tiers:?} (detected {best:?})");
    Ok(())
}

fn cmd_bench(args: &[String]) -> Res<()> {
    let a = parse(args, &[]);
    let path = a.pos.first().ok_or_else(usage)?;
    let runs: usize = a.num("runs", 20)?;
    let threads: usize = a.num("threads", 1)?;
    let mut store = Store::open(path, &a)?;
    let resident = store.resident();
    let (model, paging) = store.model()?;
    let meta: ModelMeta = model.meta().clone();
    let extras = extra_inputs(&a, &meta)?;
    let n = model.latent_len();
    let mut x = vec![0f32; n];
    Rng::new(1).fill_gaussian(&mut x);
    // the warm-up and the profile at the middle of the calibrated range
    let t_at = |f: f32| meta.t_min + (meta.t_max - meta.t_min) * f;
    let t_mid = t_at(0.5);
    // `--profile-t T`: the per-op profile at another timestep (another stream's ops)
    let t_prof: f32 = a.num("profile-t", t_mid)?;
    let mut ar = arena(&model);
    let mut sess = session(&model, bytes_mut(&mut ar), paging)?;
    sess = with_tier_arg(&a, sess)?;
    set_extras(&mut sess, &meta, &extras)?;
    // the one-thread output, to check that T threads compute the same bits
    let mut one = vec![0f32; n];
    if threads > 1 {
        sess.run(&x, t_mid, &mut one).map_err(|e| e.to_string())?;
    }
    let mut sess = sess.with_threads(threads);
    let mut out = vec![0f32; n];
    sess.run(&x, t_mid, &mut out).map_err(|e| e.to_string())?; // warm-up
    if threads > 1
        && out
            .iter()
            .zip(&one)
            .any(|(a, b)| a.to_bits() != b.to_bits())
    {
        return Err(format!(
            "bench: {threads} threads computed other bits than 1 thread"
        ));
    }
    // the sampler's own timesteps in sampling order, each for `runs / steps` consecutive runs (or
    // every `steps / runs`-th): the op streams switch (and prepare their ops) where a generation
    // switches them, and the mean is a generation's mean step
    let kind = sampler_of(&a, &model)?;
    let steps = meta.sampler.default_steps.max(1);
    let mut times = vec![];
    for i in 0..runs.max(1) {
        let j = (i as u64 * steps as u64 / runs.max(1) as u64) as u32;
        let t = schedule_value(&meta.sampler, kind, steps, j) as f32;
        let t0 = Instant::now();
        sess.run(&x, t, &mut out).map_err(|e| e.to_string())?;
        times.push(t0.elapsed().as_secs_f64() * 1e3);
    }
    let mean = times.iter().sum::<f64>() / times.len() as f64;
    times.sort_by(|a, b| a.partial_cmp(b).unwrap());
    println!(
        "model {path}: {} bytes, arena {} bytes, {} ops x {} timestep bucket(s)",
        model.header().total_len,
        model.arena_bytes(),
        model.meta().ops_per_stream,
        model.streams()
    );
    println!(
        "kernel tier {:?}{}, {} thread(s){}{}",
        sess.tier(),
        ops_note(),
        sess.threads(),
        if sess.threads() < threads {
            format!(" ({threads} requested: at most one per core)")
        } else {
            String::new()
        },
        if threads > 1 {
            " (output bit-identical to 1 thread)"
        } else {
            ""
        }
    );
    println!(
        "latency per denoising step over {} runs ({:?} {steps} steps in sampling order): mean {mean:.3} ms, median {:.3} ms, min {:.3} ms, max {:.3} ms",
        times.len(),
        kind,
        times[times.len() / 2],
        times[0],
        times[times.len() - 1]
    );
    stream_latencies(&model, &mut sess, &x, &mut out, runs)?;
    op_profile(&mut sess, &x, t_prof, runs, a.num("top", 8)?)?;
    let int16 = model
        .ops()
        .filter_map(|o| o.ok())
        .filter(|o| matches!(o, Op::Conv2d(c) if c.input.dtype == DType::I16))
        .count();
    if let Some(line) = pager_line(&sess, "the bench's evaluations") {
        println!("{line}");
    }
    let kind = if model.paged() {
        "model head + weight cache"
    } else {
        "model"
    };
    println!("int16-input convs: {int16}; peak memory = arena {} bytes + {kind} bytes {resident} (no heap use in run)", model.arena_bytes());
    Ok(())
}

/// Latency per op stream (timestep bucket), at the middle timestep of each.
fn stream_latencies(
    model: &Model,
    sess: &mut Session<'_, '_, '_>,
    x: &[f32],
    out: &mut [f32],
    runs: usize,
) -> Res<()> {
    // latency per op stream (timestep bucket), at the middle timestep of each
    let (uppers, meta) = (&model.meta().bucket_upper, model.meta());
    for k in 0..model.streams() {
        let lo = if k == 0 {
            meta.t_min
        } else {
            uppers[k - 1].max(meta.t_min)
        };
        let hi = uppers.get(k).copied().unwrap_or(meta.t_max).min(meta.t_max);
        let t = (lo + hi) / 2.0;
        let mut ts: Vec<f64> = (0..runs.clamp(3, 100))
            .map(|_| {
                let t0 = Instant::now();
                sess.run(x, t, out)
                    .map(|_| t0.elapsed().as_secs_f64() * 1e3)
            })
            .collect::<std::result::Result<_, _>>()
            .map_err(|e| e.to_string())?;
        ts.sort_by(|a, b| a.partial_cmp(b).unwrap());
        let int16 = model
            .stream_ops(k)
            .filter_map(|o| o.ok())
            .filter(|o| o.output().dtype == DType::I16)
            .count();
        println!(
            "  stream {k} (t in [{lo}, {hi}], {int16} int16 outputs of {} ops): median {:.3} ms, min {:.3} ms",
            model.meta().ops_per_stream,
            ts[ts.len() / 2],
            ts[0]
        );
    }
    Ok(())
}

/// Per-op-kind profile of the stream of `t`, averaged over up to 100 evaluations, then its `top`
/// slowest ops with their output shapes.
fn op_profile(
    sess: &mut Session<'_, '_, '_>,
    x: &[f32],
    t: f32,
    runs: usize,
    top: usize,
) -> Res<()> {
    let evals = runs.clamp(1, 100);
    let mut ops = sess.profile_ops(x, t, evals).map_err(|e| e.to_string())?;
    let total: f64 = ops.iter().map(|r| r.ms).sum();
    let pct = |ms: f64| 100.0 * ms / total.max(1e-12);
    let mut kinds: Vec<(&str, usize, f64)> = Vec::new();
    for op in &ops {
        match kinds.iter_mut().find(|r| r.0 == op.name) {
            Some(r) => (r.1, r.2) = (r.1 + 1, r.2 + op.ms),
            None => kinds.push((op.name, 1, op.ms)),
        }
    }
    kinds.sort_by(|a, b| b.2.total_cmp(&a.2));
    println!("per-op profile (t = {t}, mean of {evals} evaluations):");
    for (name, count, ms) in kinds {
        println!("  {name:<15} x{count:<4} {ms:8.3} ms  {:5.1}%", pct(ms));
    }
    if top > 0 {
        ops.sort_by(|a, b| b.ms.total_cmp(&a.ms));
        println!("slowest {} ops (--top N):", top.min(ops.len()));
        for op in ops.iter().take(top) {
            let out = match &op.output {
                Some((dt, dims)) => format!("{dt:?} {dims:?}"),
                None => "-".into(),
            };
            println!(
                "  op {:<5} {:<15} {out:<24} {:8.3} ms  {:5.1}%",
                op.index,
                op.name,
                op.ms,
                pct(op.ms)
            );
        }
    }
    Ok(())
}

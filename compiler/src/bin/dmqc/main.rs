//! `dmqc`: compile ONNX diffusion UNets to integer `.dmq` models and run them with dmq-runtime.
mod bench;
mod compile;
mod demo;
mod eval;
mod inspect;
mod run;
mod sample;

/// `writeln!` into a String (cannot fail).
macro_rules! outln {
    ($buf:expr, $($arg:tt)*) => {{
        use std::fmt::Write as _;
        let _ = writeln!($buf, $($arg)*);
    }};
}
pub(crate) use outln;

/// jemalloc, keeping the pages it frees: tract allocates every intermediate tensor of a float
/// evaluation anew, and glibc hands the large ones back to the kernel on free, so each evaluation
/// faulted in and cleared them again (`clear_page_erms` was 20% of a `perf` profile of tract on an
/// SD-1.5-sized UNet). With the pages kept, one float evaluation of that UNet took 15.7-18.0 s
/// against 20.8-24.8 s (`dmqc bench`, alternating). dmqc is a batch tool whose peak RSS is the
/// largest evaluation's either way. x86-64 only: a jemalloc built for 4 KiB pages fails on the
/// 16 and 64 KiB pages of some aarch64 kernels (the Pi 5's default among them).
#[cfg(all(target_os = "linux", target_arch = "x86_64"))]
#[global_allocator]
static ALLOC: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// jemalloc's options (read at its first allocation): never purge freed pages.
#[cfg(all(target_os = "linux", target_arch = "x86_64"))]
#[allow(non_upper_case_globals)]
#[export_name = "_rjem_malloc_conf"]
pub static malloc_conf: &[u8] = b"dirty_decay_ms:-1,muzzy_decay_ms:-1\0";

use anyhow::{anyhow, Context, Result};
use clap::{Parser, Subcommand, ValueEnum};
use dmq_runtime::{Model, SamplerKind};
use std::path::{Path, PathBuf};

#[derive(Parser)]
#[command(
    name = "dmqc",
    version,
    about = "Compile diffusion UNets (ONNX) to integer .dmq models for small ARM boards, and run them on the host with the same runtime the board uses.",
    after_help = "Exit status: 0 on success, 1 when a command fails (the message names the file or input), 2 for a usage error."
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Clone, Copy, ValueEnum)]
pub enum SamplerArg {
    Ddim,
    Ddpm,
    Euler,
    Consistency,
}

#[derive(Subcommand)]
enum Cmd {
    /// Compile an ONNX UNet to .dmq: calibrate on the sampler's own trajectories, quantize to int8,
    /// plan the arena, and measure the quality by running the runtime against the float model.
    Compile(compile::Args),
    /// One evaluation of a .dmq model through the runtime; writes DIR/<output name>.npy as float32.
    Run(run::Args),
    /// Run the on-device sampler on the host and write the sample as PNG or npy.
    Sample(sample::Args),
    /// Measure .dmq models against the float ONNX model through the runtime: SQNR of the output at
    /// every scheduled timestep (median over float-trajectory inputs), as a table and optionally a plot.
    Eval(eval::Args),
    /// Print the graph, quantization parameters, sizes and arena of a .dmq model.
    Inspect {
        model: PathBuf,
        /// also print multiply-accumulates per step and an estimated latency on a board
        #[arg(long, value_enum)]
        target: Option<inspect::Board>,
    },
    /// Time the float ONNX model (tract, f32) and the compiled .dmq (dmq-runtime) on the same
    /// inputs, alternating: ms per evaluation, GMAC/s, the ratio and the runtime's per-op profile.
    /// (`scripts/bench-vs-onnxruntime.py` adds ONNX Runtime.)
    Bench(bench::Args),
    /// Compile the bundled model, draw samples with float and int8 from the same seeds, and write a
    /// side-by-side PNG, the .dmq and a report.
    Demo {
        #[arg(short = 'o', long, default_value = "dmq-demo")]
        output: PathBuf,
        /// Number of seeds to draw and compare
        #[arg(long, default_value_t = 16)]
        seeds: u64,
    },
}

fn main() {
    let cli = Cli::parse();
    let res = match cli.cmd {
        Cmd::Compile(args) => compile::run(args),
        Cmd::Run(args) => run::run(args),
        Cmd::Sample(args) => sample::run(args),
        Cmd::Inspect { model, target } => inspect::run(&model, target),
        Cmd::Eval(args) => eval::run(args),
        Cmd::Bench(args) => bench::run(args),
        Cmd::Demo { output, seeds } => demo::run(&output, seeds),
    };
    if let Err(e) = res {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}

pub(crate) fn sampler_kind(s: SamplerArg) -> Result<SamplerKind> {
    match s {
        SamplerArg::Ddim => Ok(SamplerKind::Ddim),
        SamplerArg::Ddpm => Ok(SamplerKind::Ddpm),
        SamplerArg::Euler => Ok(SamplerKind::Euler),
        SamplerArg::Consistency => Ok(SamplerKind::Consistency),
    }
}

pub(crate) fn load(path: &Path) -> Result<Vec<u8>> {
    std::fs::read(path).with_context(|| format!("reading {}", path.display()))
}

pub(crate) fn open_model(bytes: &[u8]) -> Result<Model<'_>> {
    Model::load(bytes).map_err(|e| anyhow!("{e}"))
}

/// Prints to stdout, ending quietly when the reader has gone (`dmqc inspect m.dmq | head`).
pub(crate) fn emit_stdout(text: &str) -> Result<()> {
    use std::io::Write;
    match std::io::stdout().lock().write_all(text.as_bytes()) {
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        r => Ok(r?),
    }
}

//! `dmqc inspect`: the graph, quantization parameters, sizes and arena of a .dmq model, and a
//! labelled latency estimate for a board.
use super::outln;
use super::{emit_stdout, load, open_model};
use anyhow::{anyhow, Result};
use clap::ValueEnum;
use dmq_runtime::format::{self as wire, BetaSchedule, Op, TRef};
use std::path::Path;

#[derive(Clone, Copy, ValueEnum)]
pub enum Board {
    /// Raspberry Pi 4: Cortex-A72, 1.5 GHz, NEON (no dotprod)
    Pi4,
    /// Raspberry Pi 5: Cortex-A76, 2.4 GHz, NEON + dotprod
    Pi5,
    /// Jetson Orin: Cortex-A78AE, 2.2 GHz, NEON + dotprod
    Orin,
}

fn tref_str(t: &TRef) -> String {
    let shape: Vec<String> = t.shape.iter().map(|d| d.to_string()).collect();
    match t.dtype {
        dmq_runtime::format::DType::I8 | dmq_runtime::format::DType::I16 => format!(
            "{}[{}]@{} s={:.3e} z={}",
            if t.dtype == dmq_runtime::format::DType::I8 {
                "i8"
            } else {
                "i16"
            },
            shape.join("x"),
            t.offset,
            t.scale,
            t.zero
        ),
        dmq_runtime::format::DType::F32 => format!("f32[{}]@{}", shape.join("x"), t.offset),
    }
}

pub fn run(path: &Path, target: Option<Board>) -> Result<()> {
    let mut text = inspect_text(path)?;
    if let Some(b) = target {
        text += &estimate_text(path, b)?;
    }
    emit_stdout(&text)
}

fn estimate_text(path: &Path, board: Board) -> Result<String> {
    let bytes = load(path)?;
    let model = open_model(&bytes)?;
    let (conv, lin, mm) = dmq_compiler::macs_by_kind(&model);
    let total = conv + lin + mm;
    // (name, core, GHz, executed instructions per MAC of one evaluation, IPC of the hot loop): the
    // instruction counts measured by scripts/arm-evidence.sh on the bundled model (qemu, one
    // evaluation alone: 14.72 M instructions on cortex-a72, 8.04 M on cortex-a76 for 33.34 M MACs),
    // the IPC by llvm-mca on the product engine's hot loop (tile_neon on cortex-a72, tile_sdot on
    // cortex-a76 and cortex-a78); Orin runs the same dotprod binary as the Pi 5
    let (name, core, ghz, ipm, ipc) = match board {
        Board::Pi4 => (
            "Raspberry Pi 4",
            "Cortex-A72, NEON tier",
            1.5,
            14.72 / 33.34,
            1.81,
        ),
        Board::Pi5 => (
            "Raspberry Pi 5",
            "Cortex-A76, dotprod tier",
            2.4,
            8.04 / 33.34,
            2.25,
        ),
        Board::Orin => (
            "Jetson Orin",
            "Cortex-A78AE, dotprod tier",
            2.2,
            8.04 / 33.34,
            2.25,
        ),
    };
    let mut o = String::new();
    outln!(o, "  per denoising step: {:.2} M multiply-accumulates ({total} exactly; convs {:.2} M, linears {:.2} M, attention {:.2} M)", total as f64 / 1e6, conv as f64 / 1e6, lin as f64 / 1e6, mm as f64 / 1e6);
    outln!(o, "  ESTIMATE for {name} ({core}, {ghz} GHz, one core) — not a measurement: {:.3} executed instructions per MAC", ipm);
    outln!(o, "  (measured under qemu on the bundled model, scripts/arm-evidence.sh), at the product loop's llvm-mca IPC of {ipc} or at IPC 1:");
    for (what, i) in [("at the loop's IPC", ipc), ("at IPC 1", 1.0)] {
        let secs = total as f64 * ipm / (i * ghz * 1e9);
        outln!(
            o,
            "    {what:<18} {:.2} ms per step, {:.0} ms for 50 steps",
            secs * 1e3,
            secs * 50e3
        );
    }
    outln!(
        o,
        "  measure on the board with: dmq-board bench {}",
        path.display()
    );
    Ok(o)
}

fn inspect_text(path: &Path) -> Result<String> {
    let mut o = String::new();
    let bytes = load(path)?;
    let model = open_model(&bytes)?;
    let h = model.header();
    let m = model.meta();
    outln!(
        o,
        "{}: dmq format {}.{}, {} bytes",
        path.display(),
        h.major,
        h.minor,
        bytes.len()
    );
    outln!(
        o,
        "  metadata {} B, op records {} B ({} ops), blob {} B",
        h.meta.1,
        h.ops.1,
        h.n_ops,
        h.blob.1
    );
    outln!(
        o,
        "  arena {} bytes (sampler state at {})",
        m.arena_bytes,
        m.sampler_state
    );
    if m.invariant_ops > 0 {
        outln!(
            o,
            "  the first {} ops of every stream depend only on the extra inputs: run once per generation{}",
            m.invariant_ops,
            if model.invariant_shared() || model.streams() == 1 {
                ""
            } else {
                " and timestep bucket (their quantization differs between buckets)"
            }
        );
        outln!(
            o,
            "  their outputs read later: arena[..{}]; guidance keeps the unconditional set in a \
             {}-element scratch (Model::guidance_scratch_len)",
            m.invariant_bytes,
            model.guidance_scratch_len()
        );
    }
    outln!(
        o,
        "  latent  {:?} {}",
        m.latent_name.as_str(),
        tref_str(&m.latent)
    );
    if let Some(t) = &m.timestep {
        outln!(
            o,
            "  timestep {:?} {}  calibrated for t in [{}, {}]",
            m.timestep_name.as_str(),
            tref_str(t),
            m.t_min,
            m.t_max
        );
    }
    outln!(
        o,
        "  output  {:?} {}",
        m.output_name.as_str(),
        tref_str(&m.output)
    );
    outln!(
        o,
        "  sampler {:?}, {} steps, {:?} prediction, {} training steps, {}",
        m.sampler.default_sampler,
        m.sampler.default_steps,
        m.sampler.prediction,
        m.sampler.num_train_timesteps,
        match m.sampler.beta_schedule {
            BetaSchedule::Linear | BetaSchedule::ScaledLinear => format!(
                "{:?} betas {}..{}",
                m.sampler.beta_schedule, m.sampler.beta_start, m.sampler.beta_end
            ),
            other => format!("{other:?} betas"),
        }
    );
    o += &streams_text(&model);
    o += &ops_text(&model)?;
    Ok(o)
}

/// One line per op stream: the timesteps it serves and what it computes at 16 bits.
fn streams_text(model: &dmq_runtime::Model) -> String {
    let mut o = String::new();
    let upper = &model.meta().bucket_upper;
    outln!(
        o,
        "  op streams (timestep buckets): {}; int16 share of each stream's integer activation bytes \
         and of its multiply-accumulates",
        model.streams()
    );
    for k in 0..model.streams() {
        let s = dmq_compiler::int16_share(model, k);
        let lo = k
            .checked_sub(1)
            .and_then(|j| upper.get(j))
            .map(|u| format!("{u} <"))
            .unwrap_or_default();
        let hi = upper.get(k).map(|u| format!("<= {u}")).unwrap_or_default();
        outln!(
            o,
            "    stream {k}: {lo:>8} t {hi:<9} int16 {:5.1}% of {} activation bytes, {:5.1}% of {} MACs",
            100.0 * s.bytes_frac(),
            s.act_bytes,
            100.0 * s.macs_frac(),
            s.macs
        );
    }
    o
}

/// One line per op of the first stream: name, input and output tensors, the op's parameters.
fn ops_text(model: &dmq_runtime::Model) -> Result<String> {
    let mut o = String::new();
    outln!(o, "  ops:");
    for (i, op) in model.ops().enumerate() {
        let op = op.map_err(|e| anyhow!("{e}"))?;
        let ins: Vec<String> = op.inputs().iter().map(tref_str).collect();
        let out = tref_str(op.output());
        let extra = match &op {
            Op::Conv2d(wire::Conv2d {
                kernel,
                stride,
                pad,
                weights,
                ..
            }) => format!(
                " k={}x{} s={} pad={:?} weights={}B",
                kernel[0], kernel[1], stride[0], pad, weights.len
            ),
            Op::Linear(wire::Linear { geom, weights, .. }) => format!(
                " m={} n={} k={} weights={}B",
                geom.m, geom.n, geom.k, weights.len
            ),
            Op::FLinear(wire::FLinear { geom, .. }) => {
                format!(" m={} n={} k={}", geom.m, geom.n, geom.k)
            }
            Op::MatMul(wire::MatMul { geom, .. }) => format!(
                " batch={:?} m={} n={} k={}",
                geom.batch, geom.m, geom.n, geom.k
            ),
            Op::GroupNorm(wire::GroupNorm { groups, eps, .. }) => {
                format!(" groups={groups} eps={eps}")
            }
            Op::Binary(wire::Binary { kind, .. }) => format!(" {kind:?}"),
            Op::FUnary(wire::FUnary { func, .. }) => format!(" {func:?}"),
            Op::FBinary(wire::FBinary { func, .. }) => format!(" {func:?}"),
            _ => String::new(),
        };
        outln!(
            o,
            "  {i:4} {:<16} {} -> {}{}",
            op.name(),
            ins.join(", "),
            out,
            extra
        );
    }
    Ok(o)
}

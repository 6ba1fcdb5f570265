//! `--tier NAME`: another kernel tier this CPU supports, and on x86 the non-GEMM ops' level with it.
use crate::{usage, Args, Res};
use dmq_runtime::kernels::Tier;
use dmq_runtime::Session;

/// `--tier`: another tier this CPU supports (to compare tiers on one machine); on x86 the non-GEMM
/// ops are capped at its instruction set too, as on a CPU whose best tier it is.
pub(crate) fn with_tier_arg<'m, 'a, 'r>(
    a: &Args,
    sess: Session<'m, 'a, 'r>,
) -> Res<Session<'m, 'a, 'r>> {
    let Some(name) = a.get("tier") else {
        return Ok(sess);
    };
    let tier = [Tier::Scalar]
        .into_iter()
        .chain(Tier::SIMD)
        .find(|t| tier_name(*t) == name)
        .ok_or_else(|| format!("--tier {name}: not a tier\n{}", usage()))?;
    if !tier.supported() {
        return Err(format!("--tier {name}: this CPU cannot run it"));
    }
    #[cfg(target_arch = "x86_64")]
    dmq_runtime::kernels::cap_ops_isa(tier);
    Ok(sess.with_tier(tier))
}

/// On x86, the non-GEMM ops' SIMD level (`kernels::ops_isa`); aarch64 always runs their NEON paths.
pub(crate) fn ops_note() -> String {
    if cfg!(target_arch = "x86_64") {
        format!(" (non-GEMM ops: {:?})", dmq_runtime::kernels::ops_isa())
    } else {
        String::new()
    }
}

/// The name `--tier` takes for a tier.
fn tier_name(t: Tier) -> &'static str {
    match t {
        Tier::Scalar => "scalar",
        Tier::Neon => "neon",
        Tier::NeonDot => "neon-dot",
        Tier::Avx2 => "avx2",
        Tier::AvxVnni => "avx-vnni",
        Tier::Avx512Vnni => "avx512-vnni",
    }
}

//! dmqc: compiles an ONNX diffusion UNet into an integer `.dmq` model for dmq-runtime.
//!
//! Pipeline ([`pipeline`]): [`import`] (tract-onnx, decluttered) -> [`lower`] (dmq IR, one module per
//! op family with its runtime record) -> [`calib`] (the float model inside the deployed sampler) ->
//! [`quant`] (integer parameters, blob) -> [`memplan`] (arena) -> [`emit`] (`.dmq` bytes) ->
//! [`eval`] (quality measured by running dmq-runtime on the host).
pub mod calib;
pub mod cli_io;
pub mod deconv;
pub mod emit;
pub mod eval;
pub mod import;
pub mod ir;
pub mod lower;
pub mod memplan;
pub mod options;
pub mod pipeline;
pub mod plot;
pub mod protect;
pub mod quant;
pub mod rewrite;
pub mod shapes;
pub mod split_weights;

pub use import::float_output;
pub use options::*;
pub use pipeline::fold_time::fold_time_path;
pub use pipeline::report::*;
pub use pipeline::{compile, compile_bytes, sampler_config, Compiled};

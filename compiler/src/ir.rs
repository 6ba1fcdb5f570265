//! dmq's compiler IR: ops over typed tensor ids, still holding float weights. Quantization turns it
//! into runtime op records (`quant.rs`); the memory planner places its tensors (`memplan.rs`).
use dmq_runtime::format::{BinaryKind, DType, LinearGeom, MatMulGeom, Op, UnaryFn};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TensorId(pub u32);

/// A scalar function applied element-wise; chains of these become one 256-entry LUT.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum ScalarFn {
    Unary(UnaryFn),
    AddC(f32),
    MulC(f32),
    /// c - x
    RSubC(f32),
    /// x / c is MulC(1/c); c / x:
    RDivC(f32),
    MaxC(f32),
    MinC(f32),
    PowC(f32),
}

impl ScalarFn {
    pub fn apply(&self, x: f32) -> f32 {
        match *self {
            ScalarFn::Unary(f) => dmq_runtime::ops::funary::apply(f, x),
            ScalarFn::AddC(c) => x + c,
            ScalarFn::MulC(c) => x * c,
            ScalarFn::RSubC(c) => c - x,
            ScalarFn::RDivC(c) => c / x,
            ScalarFn::MaxC(c) => x.max(c),
            ScalarFn::MinC(c) => x.min(c),
            ScalarFn::PowC(c) => x.powf(c),
        }
    }
}

#[derive(Debug, Clone)]
pub struct TensorInfo {
    pub name: String,
    pub shape: Vec<usize>,
    pub dtype: DType,
    /// tract node whose observed output range sets this tensor's quantization
    pub stat: Option<usize>,
    /// shares the quantization of another tensor (reshape, slice, transpose, upsample...)
    pub alias: Option<TensorId>,
    /// fixed quantization (constants; a softmax's probabilities before calibration)
    pub fixed: Option<(f32, i32)>,
    /// a softmax's probabilities: zero point at the code range's bottom and a step `1/r` (whole
    /// `r`) chosen from the observed peak ([`crate::quant::activations::probs_params`])
    pub probs: bool,
    /// for an alias made by data movement: the tract node whose output is its float value (where
    /// `stat` is `None`), for the products' input statistics (`quant::gptq`)
    pub value: Option<usize>,
    /// the residual branch of a product split for 16-bit weights ([`crate::split_weights`]): its
    /// range is `±f` times the largest magnitude of the input tensor's code range (`f` the
    /// largest L1 norm of the residual weights' rows, so no value can leave it)
    pub bound_by: Option<(TensorId, f32)>,
}

impl TensorInfo {
    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }
    pub fn bytes(&self) -> usize {
        self.numel() * self.dtype.size()
    }
}

/// A product's f32 weights, shared between the copies of a program the pipeline makes (protected,
/// floor, folded): an SD-sized UNet has 3.4 GB of them.
pub type Weights = std::sync::Arc<Vec<f32>>;

#[derive(Debug, Clone)]
pub enum IrOp {
    Quantize {
        input: TensorId,
        output: TensorId,
    },
    Dequantize {
        input: TensorId,
        output: TensorId,
    },
    /// weights `[co][ci][kh][kw]`
    Conv {
        input: TensorId,
        output: TensorId,
        w: Weights,
        bias: Vec<f32>,
        time_bias: Option<TensorId>,
        kernel: [usize; 2],
        stride: [usize; 2],
        pad: [usize; 4],
        node: String,
    },
    /// weights `[n][k]`; `float` = timestep path (FLinear)
    Linear {
        input: TensorId,
        output: TensorId,
        geom: LinearGeom,
        w: Weights,
        bias: Vec<f32>,
        float: bool,
        node: String,
    },
    MatMul {
        a: TensorId,
        b: TensorId,
        output: TensorId,
        geom: MatMulGeom,
        post_scale: f32,
    },
    Binary {
        kind: BinaryKind,
        a: TensorId,
        b: TensorId,
        output: TensorId,
    },
    Lut {
        input: TensorId,
        output: TensorId,
        chain: Vec<ScalarFn>,
    },
    /// GroupNorm over NC..., or (`rms`) an RMS norm over the channels at every position
    GroupNorm {
        input: TensorId,
        output: TensorId,
        groups: usize,
        rms: bool,
        eps: f32,
        gamma: Vec<f32>,
        beta: Vec<f32>,
    },
    Softmax {
        input: TensorId,
        output: TensorId,
        axis: usize,
    },
    Concat {
        inputs: Vec<TensorId>,
        output: TensorId,
        axis: usize,
    },
    Const {
        output: TensorId,
        values: Vec<f32>,
    },
    /// f32 embedding lookup on the timestep path (class labels): rows of `table` (`rows x cols`)
    Gather {
        index: TensorId,
        output: TensorId,
        table: Vec<f32>,
        rows: usize,
        cols: usize,
    },
    /// Ops that need no quantization decision (data movement, float timestep path).
    Plain(Op<TensorId>),
}

impl IrOp {
    pub fn inputs(&self) -> Vec<TensorId> {
        match self {
            IrOp::Quantize { input, .. }
            | IrOp::Dequantize { input, .. }
            | IrOp::Linear { input, .. }
            | IrOp::Lut { input, .. }
            | IrOp::GroupNorm { input, .. }
            | IrOp::Softmax { input, .. } => vec![*input],
            IrOp::Conv {
                input, time_bias, ..
            } => std::iter::once(*input)
                .chain(time_bias.iter().copied())
                .collect(),
            IrOp::MatMul { a, b, .. } | IrOp::Binary { a, b, .. } => vec![*a, *b],
            IrOp::Concat { inputs, .. } => inputs.clone(),
            IrOp::Gather { index, .. } => vec![*index],
            IrOp::Const { .. } => vec![],
            IrOp::Plain(op) => op.inputs(),
        }
    }
    pub fn output(&self) -> TensorId {
        match self {
            IrOp::Quantize { output, .. }
            | IrOp::Dequantize { output, .. }
            | IrOp::Conv { output, .. }
            | IrOp::Linear { output, .. }
            | IrOp::MatMul { output, .. }
            | IrOp::Binary { output, .. }
            | IrOp::Lut { output, .. }
            | IrOp::GroupNorm { output, .. }
            | IrOp::Softmax { output, .. }
            | IrOp::Concat { output, .. }
            | IrOp::Gather { output, .. }
            | IrOp::Const { output, .. } => *output,
            IrOp::Plain(op) => *op.output(),
        }
    }
    pub fn kind(&self) -> &'static str {
        match self {
            IrOp::Quantize { .. } => "Quantize",
            IrOp::Dequantize { .. } => "Dequantize",
            IrOp::Conv { .. } => "Conv2dInt8",
            IrOp::Linear { float: false, .. } => "LinearInt8",
            IrOp::Linear { float: true, .. } => "TimeLinearF32",
            IrOp::MatMul { .. } => "MatMulInt8",
            IrOp::Binary { .. } => "BinaryInt8",
            IrOp::Lut { .. } => "LutInt8",
            IrOp::GroupNorm { rms: false, .. } => "GroupNormInt8",
            IrOp::GroupNorm { rms: true, .. } => "RmsNormInt8",
            IrOp::Softmax { .. } => "SoftmaxInt8",
            IrOp::Concat { .. } => "ConcatInt8",
            IrOp::Const { .. } => "Const",
            IrOp::Gather { .. } => "TimeGatherF32",
            IrOp::Plain(op) => op.name(),
        }
    }
}

/// The lowered program.
#[derive(Debug, Clone, Default)]
pub struct Program {
    pub tensors: Vec<TensorInfo>,
    pub ops: Vec<IrOp>,
    pub latent: Option<TensorId>,
    pub timestep: Option<TensorId>,
    /// f32 extra inputs (ONNX name, tensor) in the order of the import
    pub extras: Vec<(String, TensorId)>,
    pub output: Option<TensorId>,
    /// every int16 tensor's range is `I16_HEADROOM` times its calibrated one (set where every
    /// tensor that can be int16 is: the floor's streams, `--act-bits 16`)
    pub i16_headroom: bool,
}

impl Program {
    pub fn add_tensor(&mut self, t: TensorInfo) -> TensorId {
        self.tensors.push(t);
        TensorId(self.tensors.len() as u32 - 1)
    }
    pub fn t(&self, id: TensorId) -> &TensorInfo {
        &self.tensors[id.0 as usize]
    }
    pub fn t_mut(&mut self, id: TensorId) -> &mut TensorInfo {
        &mut self.tensors[id.0 as usize]
    }
    /// Index of the op producing `id`.
    pub fn producer(&self, id: TensorId) -> Option<usize> {
        self.ops.iter().rposition(|op| op.output() == id)
    }
    pub fn consumers(&self, id: TensorId) -> usize {
        let mut n = self
            .ops
            .iter()
            .filter(|op| op.inputs().contains(&id))
            .count();
        if self.output == Some(id) {
            n += 1;
        }
        n
    }
    /// Quantization roots of the tensors that depend only on the extra inputs (with constants): a
    /// text embedding, its keys and values. Their values are the same at every timestep.
    pub fn extra_only_roots(&self) -> std::collections::HashSet<TensorId> {
        use std::collections::HashSet;
        let mut inv: HashSet<TensorId> = self.extras.iter().map(|e| e.1).collect();
        // tensors computed from constants alone
        let mut fixed: HashSet<TensorId> = HashSet::new();
        for op in &self.ops {
            let ins = op.inputs();
            if ins.iter().all(|t| fixed.contains(t)) {
                fixed.insert(op.output());
            } else if ins.iter().all(|t| inv.contains(t) || fixed.contains(t)) {
                inv.insert(op.output());
            }
        }
        inv.iter().map(|&t| self.quant_root(t)).collect()
    }
    /// Follows aliases to the tensor that owns the quantization parameters.
    pub fn quant_root(&self, mut id: TensorId) -> TensorId {
        while let Some(a) = self.t(id).alias {
            id = a;
        }
        id
    }
}

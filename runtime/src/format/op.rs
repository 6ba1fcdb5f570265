//! Op records: the one list of ops.
//!
//! [`op_list!`](crate::op_list) holds every op once, in wire order: its record's fields (tensor
//! fields marked `In`, `Opt`, `List` or `Out`; everything else `Data(type)`), its runtime module and
//! its display name. The macro hands the list to a callback, so each exhaustive use is generated
//! from it: here the record structs, the [`Op`] enum and its `output`/`for_each_input`/`map`/`name`;
//! in `crate::ops` the prepared form and the dispatch to each op's module. Adding an op is one entry
//! here plus its module in `crate::ops` (and its kernel).
//!
//! Postcard writes an enum as its variant index followed by the fields in order, so a record is the
//! same bytes whether a variant holds its fields directly or in a struct.
use super::MAX_CONCAT;
use heapless::Vec as HVec;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum BinaryKind {
    Add,
    Sub,
    Mul,
}

/// Float functions of the timestep path (evaluated once per step in f32).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum UnaryFn {
    Sin,
    Cos,
    Exp,
    Ln,
    Sqrt,
    Rsqrt,
    Recip,
    Neg,
    Abs,
    Square,
    Silu,
    Sigmoid,
    Tanh,
    Erf,
    Gelu,
    Identity,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum BinaryFn {
    Add,
    Sub,
    Mul,
    Div,
    Max,
    Min,
    Pow,
}

/// `out[m, n] = sum_k A[m, k] * B[k, n]` with element strides, over up to two batch axes.
/// Used for activation x activation products (attention) with per-tensor requantization.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MatMulGeom {
    pub batch: [u32; 2],
    pub m: u32,
    pub n: u32,
    pub k: u32,
    /// strides of A: batch0, batch1, m, k
    pub a_strides: [u32; 4],
    /// strides of B: batch0, batch1, k, n
    pub b_strides: [u32; 4],
    /// strides of the output: batch0, batch1, m, n
    pub o_strides: [u32; 4],
}

/// Geometry of a product with constant weights `W[n, k]` (a 1x1 conv or a linear layer):
/// `out[m, n] = sum_k A[m, k] * W[n, k] + bias[n]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LinearGeom {
    pub m: u32,
    pub n: u32,
    pub k: u32,
    /// strides of A: m, k
    pub a_strides: [u32; 2],
    /// strides of the output: m, n
    pub o_strides: [u32; 2],
}

/// What an op does, for tools (profiles, the time-path fold).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OpClass {
    /// f32 <-> integer codes at the graph's edges
    Convert,
    /// integer compute (convolutions, products, element-wise, norms, softmax, concat)
    Int,
    /// data movement of any element type (reshape, transpose, slice, broadcast, upsample)
    Move,
    /// a constant from the blob
    Const,
    /// f32 arithmetic of the timestep path
    Time,
}

/// The list of ops (see the module documentation). Each entry: `Name(module, "display name", class)
/// { field: Kind<type>, ... }` in wire order, where `Kind` is `In`, `Opt`, `List` or `Out` for tensor
/// fields (of the handle type `T`) and `Data` for everything else.
#[macro_export]
macro_rules! op_list {
    ($callback:ident) => {
        $callback! {
            /// f32 -> integer codes with the output's scale and zero point (round half to even).
            Quantize(quantize, "Quantize", Convert) { input: In<T>, output: Out<T> }
            /// Integer codes -> f32.
            Dequantize(dequantize, "Dequantize", Convert) { input: In<T>, output: Out<T> }
            /// NCHW convolution (batch looped). Weights packed for the product engine
            /// (`kernels::gemm`): output channels as rows, depth in (ky, kx, input channel) order
            /// with the channels of every tap padded to a multiple of 4, 8-bit or 4-bit. An int32
            /// bias per channel with the input zero point folded in, per-channel requantization.
            /// `time_bias` is an optional f32 `[co]` tensor from the timestep path, added to the int32
            /// bias as `rint(time_bias[c] * time_scale[c])`. `scratch` is arena space for the staged
            /// input, the unpacked 4-bit weights and the combined bias (`ops::conv2d::scratch_bytes`).
            Conv2d(conv2d, "Conv2dInt8", Int) {
                input: In<T>, output: Out<T>, weight_bits: Data<u8>, weights: Data<$crate::format::BlobRef>,
                bias: Data<$crate::format::BlobRef>, requant: Data<$crate::format::BlobRef>,
                time_bias: Opt<T>, time_scale: Data<$crate::format::BlobRef>, kernel: Data<[u16; 2]>,
                stride: Data<[u16; 2]>, pad: Data<[u16; 4]>, scratch: Data<u32>
            }
            /// Product with constant weights (`n` rows of depth `k`, packed for the product engine with
            /// the depth padded to a multiple of 4), int32 bias (zero point folded), per-n requant.
            /// `scratch`: the staged input and the unpacked 4-bit weights
            /// (`ops::linear::scratch_bytes`).
            Linear(linear, "LinearInt8", Int) {
                input: In<T>, output: Out<T>, geom: Data<$crate::format::LinearGeom>, weight_bits: Data<u8>,
                weights: Data<$crate::format::BlobRef>, bias: Data<$crate::format::BlobRef>,
                requant: Data<$crate::format::BlobRef>, scratch: Data<u32>
            }
            /// Product of two activations (int8 or int16 each, and the output), per-tensor
            /// requantization. `scratch`: the staged `A`, the packed `B` and their row sums
            /// (`ops::matmul::scratch_bytes`, larger when any of the three is int16).
            MatMul(matmul, "MatMulInt8", Int) {
                a: In<T>, b: In<T>, output: Out<T>, geom: Data<$crate::format::MatMulGeom>,
                requant: Data<$crate::format::Requant>, scratch: Data<u32>
            }
            /// Element-wise with broadcasting (equal ranks; input dims 1 or equal to the output's).
            /// Add/Sub: `out = z + ((ma*(a-za) ± mb*(b-zb)) >> shift)`; Mul: `out = z + ((ma*(a-za)*(b-zb)) >> shift)`.
            Binary(binary, "BinaryInt8", Int) {
                kind: Data<$crate::format::BinaryKind>, a: In<T>, b: In<T>, output: Out<T>, mult_a: Data<i32>,
                mult_b: Data<i32>, shift: Data<u8>
            }
            /// Any unary function as a table. int8 input: 256 entries, `out = table[in + 128]`, int8
            /// or little-endian i16 by the output type. int16 input: 257 i32 entries `T[k]` = 256 x
            /// output code at input `256k - 32768`, linearly interpolated.
            Lut(lut, "LutInt8", Int) { input: In<T>, output: Out<T>, table: Data<$crate::format::BlobRef> }
            /// GroupNorm over NC... (channel axis 1): exact integer statistics per group, then a
            /// per-channel affine in fixed point. `affine` holds gamma[C] then beta[C] as f32;
            /// `in_scales` the f32 scale of every input channel of a split concat.
            GroupNorm(group_norm, "GroupNormInt8", Int) {
                input: In<T>, output: Out<T>, groups: Data<u32>, eps: Data<f32>,
                affine: Data<$crate::format::BlobRef>, in_scales: Data<Option<$crate::format::BlobRef>>
            }
            /// Softmax along `axis`; `exp_table[d] = round(2^20 * exp(-d * scale_in))`, 256 u32 for
            /// an int8 input; an int16 input appends `round(2^20 * exp(-256 d * scale_in))`, 512 u32
            /// in all. Output codes (int8 or int16) count probability in steps of `1 / round(1 /
            /// scale_out)` from the output's zero point (int8: scale 1/255, zero point -128).
            Softmax(softmax, "SoftmaxInt8", Int) {
                input: In<T>, output: Out<T>, axis: Data<u8>, exp_table: Data<$crate::format::BlobRef>
            }
            /// Concat along `axis`, each input requantized to the output's parameters.
            Concat(concat, "ConcatInt8", Int) {
                inputs: List<T>, output: Out<T>, axis: Data<u8>,
                requant: Data<heapless::Vec<$crate::format::Requant, { $crate::format::MAX_CONCAT }>>
            }
            /// Same element count and order; the quantization is unchanged.
            Reshape(reshape, "Reshape", Move) { input: In<T>, output: Out<T> }
            /// Axis permutation: `out.shape[i] = in.shape[perm[i]]`.
            Transpose(transpose, "Transpose", Move) {
                input: In<T>, output: Out<T>, perm: Data<heapless::Vec<u8, { $crate::format::MAX_RANK }>>
            }
            /// Contiguous slice `[start, start + out_len)` along `axis`.
            Slice(slice, "Slice", Move) { input: In<T>, output: Out<T>, axis: Data<u8>, start: Data<u32> }
            /// Broadcast to the output shape (input dims 1 or equal).
            Broadcast(broadcast, "Broadcast", Move) { input: In<T>, output: Out<T> }
            /// Nearest-neighbour upsampling by integer factors.
            Upsample(upsample, "UpsampleNearest", Move) { input: In<T>, output: Out<T> }
            /// Copies a constant (integer codes or f32 values) from the blob into the arena.
            Const(constant, "Const", Const) { output: Out<T>, data: Data<$crate::format::BlobRef> }
            /// f32 unary function (timestep path).
            FUnary(funary, "TimeUnaryF32", Time) {
                input: In<T>, output: Out<T>, func: Data<$crate::format::UnaryFn>
            }
            /// f32 binary function with broadcasting (timestep path).
            FBinary(fbinary, "TimeBinaryF32", Time) {
                a: In<T>, b: In<T>, output: Out<T>, func: Data<$crate::format::BinaryFn>
            }
            /// f32 product with int8 per-n weights: `out = (sum_k a*wq[n,k]) * scale[n] + bias[n]`
            /// (timestep path); `scales` and `bias` are f32 arrays of length n.
            FLinear(flinear, "TimeLinearF32", Time) {
                input: In<T>, output: Out<T>, geom: Data<$crate::format::LinearGeom>,
                weights: Data<$crate::format::BlobRef>, scales: Data<$crate::format::BlobRef>,
                bias: Data<$crate::format::BlobRef>
            }
            /// f32 rows of a `rows x cols` table picked by an index tensor of whole numbers (a
            /// class-label embedding on the timestep path).
            FGather(fgather, "TimeGatherF32", Time) {
                index: In<T>, output: Out<T>, table: Data<$crate::format::BlobRef>, rows: Data<u32>,
                cols: Data<u32>
            }
            /// f32 concat along `axis` (timestep path).
            FConcat(fconcat, "TimeConcatF32", Time) { inputs: List<T>, output: Out<T>, axis: Data<u8> }
            /// 2-D max pooling of NCHW codes (any element type; the output keeps the input's
            /// quantization, so the integer max is exact): the largest value of each `kernel`
            /// window at `stride`, the `pad` (`[top, left, bottom, right]`) positions left out.
            /// Format 6.1.
            MaxPool(maxpool, "MaxPool", Move) {
                input: In<T>, output: Out<T>, kernel: Data<[u16; 2]>, stride: Data<[u16; 2]>,
                pad: Data<[u16; 4]>
            }
            /// RMS norm over the channel axis 1 of NC... at every position (F.normalize over the
            /// channels, RMSNorm): the exact integer sum of squares per position, then per element
            /// `x * gamma_c / sqrt(mean_c x^2 + eps) + beta_c` in f32 (`kernels::reference::norm::
            /// rms_norm`). `affine` holds gamma[C] then beta[C] as f32. Format 6.2.
            RmsNorm(rms_norm, "RmsNormInt8", Int) {
                input: In<T>, output: Out<T>, eps: Data<f32>, affine: Data<$crate::format::BlobRef>
            }
        }
    };
}

/// Field kinds of the op list: the record's field types.
pub type In<T> = T;
pub type Out<T> = T;
pub type Opt<T> = Option<T>;
pub type List<T> = HVec<T, MAX_CONCAT>;
pub type Data<X> = X;

/// Calls `$f` on the tensor(s) of an input field.
macro_rules! visit_input {
    (In, $x:expr, $f:ident) => {
        $f($x)
    };
    (Opt, $x:expr, $f:ident) => {
        if let Some(t) = $x {
            $f(t)
        }
    };
    (List, $x:expr, $f:ident) => {
        for t in $x.iter() {
            $f(t)
        }
    };
    ($other:ident, $x:expr, $f:ident) => {
        ()
    };
}

/// Maps a field to the record over other tensor handles.
#[cfg(feature = "std")]
macro_rules! map_field {
    (In, $x:expr, $f:ident) => {
        $f($x)
    };
    (Out, $x:expr, $f:ident) => {
        $f($x)
    };
    (Opt, $x:expr, $f:ident) => {
        $x.as_ref().map(|t| $f(t))
    };
    // same capacity on both sides: the collection cannot overflow
    (List, $x:expr, $f:ident) => {
        $x.iter().map(|t| $f(t)).collect()
    };
    (Data, $x:expr, $f:ident) => {
        $x.clone()
    };
}

macro_rules! bind_output {
    (Out, $o:ident, $x:expr) => {
        let $o = $x;
    };
    ($other:ident, $o:ident, $x:expr) => {};
}

macro_rules! define_ops {
    ( $( $(#[$doc:meta])* $Name:ident ($module:ident, $label:literal, $class:ident) {
            $( $field:ident : $kind:ident < $ty:ty > ),* $(,)?
        } )* ) => {
        $(
            $(#[$doc])*
            #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
            pub struct $Name<T> {
                $( pub $field: $kind<$ty>, )*
            }

            impl<T> $Name<T> {
                /// The tensor the op writes.
                pub fn output(&self) -> &T {
                    $( bind_output!($kind, out, &self.$field); )*
                    out
                }
                /// Calls `f` on every tensor the op reads, in field order.
                #[allow(unused_mut, unused_variables)]
                pub fn for_each_input<'s>(&'s self, mut f: impl FnMut(&'s T)) {
                    $( visit_input!($kind, &self.$field, f); )*
                }
                /// The same record over other tensor handles.
                #[cfg(feature = "std")]
                pub fn map<U>(&self, f: &mut impl FnMut(&T) -> U) -> $Name<U> {
                    $Name { $( $field: map_field!($kind, &self.$field, f), )* }
                }
            }
        )*

        /// One op record. Every stream of a model holds `ops_per_stream` of them in execution order.
        #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
        pub enum Op<T> {
            $( $(#[$doc])* $Name($Name<T>), )*
        }

        impl<T> Op<T> {
            /// The op's display name (profiles, reports).
            pub fn name(&self) -> &'static str {
                match self { $( Op::$Name(_) => $label, )* }
            }
            pub fn class(&self) -> OpClass {
                match self { $( Op::$Name(_) => OpClass::$class, )* }
            }
            /// The tensor the op writes.
            pub fn output(&self) -> &T {
                match self { $( Op::$Name(r) => r.output(), )* }
            }
            /// Calls `f` on every tensor the op reads.
            pub fn for_each_input<'s>(&'s self, f: impl FnMut(&'s T)) {
                match self { $( Op::$Name(r) => r.for_each_input(f), )* }
            }
            /// The same op over other tensor handles (the compiler maps tensor ids to arena
            /// references with it).
            #[cfg(feature = "std")]
            pub fn map<U>(&self, mut f: impl FnMut(&T) -> U) -> Op<U> {
                match self { $( Op::$Name(r) => Op::$Name(r.map(&mut f)), )* }
            }
        }

        /// Every op's display name, in wire order.
        pub const OP_NAMES: &[&str] = &[ $( $label, )* ];
    };
}

op_list!(define_ops);

/// The input tensors of an op, collected (std builds).
#[cfg(feature = "std")]
impl<T: Clone> Op<T> {
    pub fn inputs(&self) -> std::vec::Vec<T> {
        let mut v = std::vec::Vec::new();
        self.for_each_input(|t| v.push(t.clone()));
        v
    }
}

#[cfg(feature = "std")]
extern crate std;

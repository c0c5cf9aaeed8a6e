//! Our C++ kernels (`kernels/`): a quantized matmul over GGUF blocks read in place, exposed as
//! an MLX custom primitive (lazy, ordered on the CPU stream, composable with `compile`), plus
//! the raw entry points the tests use to check each path against the Rust scalar twin.

use crate::error::{Error, Result};
use crate::ggml_type::GgmlType;
use crate::mlx::handler::{install_error_handler, null_array};
use crate::mlx::handler::{try_array, try_arrays};
use crate::mlx::stream::current_stream;
use crate::mlx::{ops, Array};
use std::ffi::{c_char, c_int, c_void, CStr};

extern "C" {
    #[allow(clippy::too_many_arguments)]
    fn mlxk_gguf_qmatmul_add(
        res: *mut mlx_sys::mlx_array,
        x: mlx_sys::mlx_array,
        w: mlx_sys::mlx_array,
        residual: mlx_sys::mlx_array,
        ggml_type: c_int,
        n: i64,
        k: i64,
        s: mlx_sys::mlx_stream,
    ) -> c_int;
    #[allow(clippy::too_many_arguments)]
    fn mlxk_cached_attention(
        out: *mut mlx_sys::mlx_array,
        k_cache_out: *mut mlx_sys::mlx_array,
        v_cache_out: *mut mlx_sys::mlx_array,
        q: mlx_sys::mlx_array,
        k: mlx_sys::mlx_array,
        v: mlx_sys::mlx_array,
        k_cache: mlx_sys::mlx_array,
        v_cache: mlx_sys::mlx_array,
        n_heads: c_int,
        n_kv_heads: c_int,
        head_dim: c_int,
        pos: i64,
        scale: f32,
        rope_base: f32,
        rope_scale: f32,
        rope_traditional: c_int,
        window: i64,
        q_norm: mlx_sys::mlx_array,
        k_norm: mlx_sys::mlx_array,
        norm_eps: f32,
        s: mlx_sys::mlx_stream,
    ) -> c_int;
    fn mlxk_qmatmul_f32(
        w: *const c_void,
        ggml_type: c_int,
        n: i64,
        k: i64,
        x: *const f32,
        m: i64,
        x_row_stride: i64,
        y: *mut f32,
        y_row_stride: i64,
    ) -> c_int;
    fn mlxk_dequantize_rows(
        w: *const c_void,
        ggml_type: c_int,
        rows: i64,
        k: i64,
        out: *mut f32,
    ) -> c_int;
    fn mlxk_row_bytes(ggml_type: c_int, k: i64, out: *mut i64) -> c_int;
    fn mlxk_weight_array(
        res: *mut mlx_sys::mlx_array,
        src: *const c_void,
        ggml_type: c_int,
        n: i64,
        k: i64,
        out_type: *mut c_int,
    ) -> c_int;
    fn mlxk_weight_arena_bytes() -> i64;
    fn mlxk_repack_rows(
        src: *const c_void,
        ggml_type: c_int,
        n: i64,
        k: i64,
        dst: *mut c_void,
        out_type: *mut c_int,
    ) -> c_int;
    fn mlxk_block_size(ggml_type: c_int) -> c_int;
    fn mlxk_last_error() -> *const c_char;
    fn mlxk_kernel_path() -> c_int;
    fn mlxk_force_path(path: c_int);
    fn mlxk_set_num_threads(n: c_int);
    fn mlxk_get_num_threads() -> c_int;
}

/// The kernel's SIMD path.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KernelPath {
    /// Portable scalar code (always compiled, always tested).
    Scalar,
    /// AVX2 + FMA with int8 activations (x86-64, chosen at run time).
    Avx2,
    /// The AVX2 path with its int8 dot products on AVX-512 VNNI (`vpdpbusd`, 256-bit): the
    /// same results as [`KernelPath::Avx2`], bit for bit, in fewer instructions.
    Avx512Vnni,
}

fn last_error() -> String {
    // SAFETY: the kernels return a NUL-terminated per-thread string valid until the next call.
    unsafe { CStr::from_ptr(mlxk_last_error()) }
        .to_string_lossy()
        .into_owned()
}

fn status(code: c_int, what: &str) -> Result<()> {
    match code {
        0 => Ok(()),
        2 => Err(Error::Unsupported(format!("{what}: {}", last_error()))),
        3 => Err(Error::Shape {
            op: what.into(),
            expected: last_error(),
            found: vec![],
        }),
        _ => Err(Error::InvalidArgument(format!("{what}: {}", last_error()))),
    }
}

/// How the kernel reads a weight's blocks: the GGUF type, and whether the rows were rewritten
/// into the kernels' repacked layout (Q5_0 / Q8_0 groups of 8 blocks, read with whole vector
/// loads; same bytes per row; `kernels/repack.cpp`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BlockLayout {
    /// The GGUF type of the blocks.
    pub ty: GgmlType,
    /// Rows rewritten by [`load_blocks`] / [`repack_host`].
    pub repacked: bool,
}

/// The kernel's flag for a repacked layout (`MLXK_TYPE_REPACKED`).
const REPACKED_FLAG: c_int = 0x100;

impl BlockLayout {
    /// The kernel's type id.
    fn id(self) -> c_int {
        self.ty.id() as c_int | if self.repacked { REPACKED_FLAG } else { 0 }
    }
}

impl From<GgmlType> for BlockLayout {
    /// Blocks as stored in a GGUF file.
    fn from(ty: GgmlType) -> Self {
        BlockLayout {
            ty,
            repacked: false,
        }
    }
}

/// Copies `n` rows of `k` elements of `ty` (GGUF blocks in host memory, e.g. a memory-mapped
/// file) into a new uint8 MLX array `[n, row_bytes]`, rewriting them into the repacked layout
/// where the type has one. One copy, spread over the kernels' threads.
pub fn load_blocks(bytes: &[u8], ty: GgmlType, n: usize, k: usize) -> Result<(Array, BlockLayout)> {
    check_rows(bytes, ty, n, k, "load_blocks")?;
    let mut out_type: c_int = 0;
    // SAFETY: `bytes` holds exactly n rows of k elements (checked above) and outlives the call,
    // which copies them into a buffer the new array owns; the status reports any failure.
    let blocks = try_array(|res| unsafe {
        mlxk_weight_array(
            res,
            bytes.as_ptr() as *const c_void,
            ty.id() as c_int,
            n as i64,
            k as i64,
            &mut out_type,
        )
    })
    .map_err(|e| match e {
        Error::Mlx { message } if message.starts_with("mlx-c call failed") => Error::Mlx {
            message: last_error(),
        },
        other => other,
    })?;
    Ok((blocks, layout_of(ty, out_type)))
}

/// Bytes held now by the arrays of [`load_blocks`]: a weight arena of our own (2 MiB-aligned
/// mappings with transparent huge pages), outside MLX's allocator and its memory statistics.
pub fn weight_bytes() -> u64 {
    // SAFETY: a pure query.
    unsafe { mlxk_weight_arena_bytes() }.max(0) as u64
}

/// [`load_blocks`] into host memory: the rows of `bytes` in the layout the kernel prefers.
pub fn repack_host(
    bytes: &[u8],
    ty: GgmlType,
    n: usize,
    k: usize,
) -> Result<(Vec<u8>, BlockLayout)> {
    check_rows(bytes, ty, n, k, "repack_host")?;
    let mut out = vec![0u8; bytes.len()];
    let mut out_type: c_int = 0;
    // SAFETY: source and destination hold n rows each (checked above) and do not overlap.
    let code = unsafe {
        mlxk_repack_rows(
            bytes.as_ptr() as *const c_void,
            ty.id() as c_int,
            n as i64,
            k as i64,
            out.as_mut_ptr() as *mut c_void,
            &mut out_type,
        )
    };
    status(code, "repack")?;
    Ok((out, layout_of(ty, out_type)))
}

fn check_rows(bytes: &[u8], ty: GgmlType, n: usize, k: usize, what: &str) -> Result<()> {
    if bytes.len() != n * row_bytes(ty, k)? {
        return Err(Error::InvalidArgument(format!(
            "{what}: {} bytes for {n} rows of {k} {ty:?} elements",
            bytes.len()
        )));
    }
    Ok(())
}

fn layout_of(ty: GgmlType, out_type: c_int) -> BlockLayout {
    BlockLayout {
        ty,
        repacked: out_type & REPACKED_FLAG != 0,
    }
}

/// Whether the kernel handles GGUF type `ty`.
pub fn supports(ty: GgmlType) -> bool {
    // SAFETY: a pure query.
    unsafe { mlxk_block_size(ty.id() as c_int) > 0 }
}

/// x [.., M, K] · W[N, K]ᵀ for W held as GGUF blocks [N, row_bytes] (uint8): [.., M, N]
/// float32, as a lazy MLX op on the CPU stream.
pub fn gguf_matmul(
    x: &Array,
    blocks: &Array,
    layout: impl Into<BlockLayout>,
    n: usize,
    k: usize,
) -> Result<Array> {
    qmatmul_add(x, blocks, layout.into(), n, k, None)
}

/// [`gguf_matmul`] plus a residual of the output's shape [.., M, N] in the same op:
/// x · Wᵀ + residual (the transformer's skip connection, without an op of its own).
pub fn gguf_matmul_add(
    x: &Array,
    blocks: &Array,
    layout: impl Into<BlockLayout>,
    n: usize,
    k: usize,
    residual: &Array,
) -> Result<Array> {
    qmatmul_add(x, blocks, layout.into(), n, k, Some(residual))
}

fn qmatmul_add(
    x: &Array,
    blocks: &Array,
    layout: BlockLayout,
    n: usize,
    k: usize,
    residual: Option<&Array>,
) -> Result<Array> {
    let s = current_stream();
    let residual = residual.map_or_else(null_array, Array::raw);
    // SAFETY: valid handles (the residual may be the empty handle, meaning none) and stream;
    // the primitive validates shapes and types and reports failures through its status, with
    // the message in `mlxk_last_error`.
    let out = try_array(|res| unsafe {
        mlxk_gguf_qmatmul_add(
            res,
            x.raw(),
            blocks.raw(),
            residual,
            layout.id(),
            n as i64,
            k as i64,
            s,
        )
    });
    out.map_err(|e| match e {
        Error::Mlx { message } if message.starts_with("mlx-c call failed") => Error::Mlx {
            message: last_error(),
        },
        other => other,
    })
}

/// Shapes and RoPE constants of [`cached_attention`].
#[derive(Clone, Copy, Debug)]
pub struct AttentionParams {
    /// Query heads.
    pub n_heads: usize,
    /// Key/value heads (divides `n_heads`).
    pub n_kv_heads: usize,
    /// Elements per head (even).
    pub head_dim: usize,
    /// Softmax scale, usually 1/√head_dim.
    pub scale: f32,
    /// RoPE base θ.
    pub rope_base: f32,
    /// Position multiplier of the RoPE angle (1.0 = plain RoPE).
    pub rope_scale: f32,
    /// RoPE rotates adjacent pairs (2j, 2j+1) when true, halves (j, j+hd/2) when false.
    pub rope_traditional: bool,
    /// Sliding-window attention: a query sees only the last `window` keys, itself included.
    pub window: Option<usize>,
}

/// Gemma's Q/K norm, done inside [`cached_attention`]: every head of q and k RMS-normalised
/// over its `head_dim` features and scaled by `q` / `k` (float32 [head_dim]) before RoPE.
#[derive(Clone, Copy, Debug)]
pub struct QkNorm<'a> {
    /// Weights of the query heads' norm.
    pub q: &'a Array,
    /// Weights of the key heads' norm.
    pub k: &'a Array,
    /// RMSNorm epsilon.
    pub eps: f32,
}

/// Attention of one sequence over its KV cache, fused with RoPE and the cache write (our
/// `CachedAttention` primitive; CPU streams). q [.., L, Hq·hd], k and v [.., L, Hkv·hd] are the
/// new rows at positions `pos..pos+L` (RMS-normalised per head first with `norm`); `k_cache`,
/// `v_cache` [1, Hkv, capacity, hd]. Returns the
/// attention output [.., L, Hq·hd] and the updated caches. The caches are updated in place when
/// the caller holds no other reference to them: pass the only handles and keep the returned
/// ones, as [`crate::kv_cache::KvCache`] does.
#[allow(clippy::too_many_arguments)] // the primitive's inputs, one by one
pub fn cached_attention(
    q: &Array,
    k: &Array,
    v: &Array,
    k_cache: &Array,
    v_cache: &Array,
    pos: usize,
    p: &AttentionParams,
    norm: Option<QkNorm>,
) -> Result<(Array, Array, Array)> {
    let s = current_stream();
    let (q_norm, k_norm, eps) = match norm {
        Some(n) => (n.q.raw(), n.k.raw(), n.eps),
        None => (null_array(), null_array(), 0.0),
    };
    // SAFETY: valid handles and stream; the C entry validates shapes and dtypes and reports
    // failures through its status, with the message in `mlxk_last_error`.
    let out = try_arrays::<3>(|res| {
        let [out, kc, vc] = res;
        unsafe {
            mlxk_cached_attention(
                out,
                kc,
                vc,
                q.raw(),
                k.raw(),
                v.raw(),
                k_cache.raw(),
                v_cache.raw(),
                p.n_heads as c_int,
                p.n_kv_heads as c_int,
                p.head_dim as c_int,
                pos as i64,
                p.scale,
                p.rope_base,
                p.rope_scale,
                p.rope_traditional as c_int,
                p.window.unwrap_or(0) as i64,
                q_norm,
                k_norm,
                eps,
                s,
            )
        }
    });
    let [out, kc, vc] = out.map_err(kernel_error)?;
    Ok((out, kc, vc))
}

/// Replaces mlx-c's generic failure message by the kernel's own.
fn kernel_error(e: Error) -> Error {
    match e {
        Error::Mlx { message } if message.starts_with("mlx-c call failed") => Error::Mlx {
            message: last_error(),
        },
        other => other,
    }
}

extern "C" {
    fn mlxk_gguf_qmatmul_multi_norm(
        res: *mut mlx_sys::mlx_array,
        x: mlx_sys::mlx_array,
        norm_weight: mlx_sys::mlx_array,
        norm_eps: f32,
        ws: *const mlx_sys::mlx_array,
        types: *const c_int,
        ns: *const i64,
        biases: *const mlx_sys::mlx_array,
        count: c_int,
        k: i64,
        epilogue: c_int,
        s: mlx_sys::mlx_stream,
    ) -> c_int;
}

/// Most weights one fused call ([`gguf_matmul_multi`]) takes.
pub const MAX_FUSED_WEIGHTS: usize = 4;

/// `MLXK_EPILOGUE_NONE` of the kernel header (the gated ones are [`Gate::epilogue`]).
const EPILOGUE_NONE: c_int = 0;

/// The activation of a gated feed-forward product act(x·Gᵀ) ⊙ (x·Uᵀ).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Gate {
    /// SiLU: g / (1 + e^(−g)) (SwiGLU: Llama, Qwen).
    Silu,
    /// GELU, tanh approximation: g/2 · (1 + tanh(√(2/π)·(g + 0.044715·g³))) (GEGLU: Gemma).
    GeluTanh,
}

impl Gate {
    /// `MLXK_EPILOGUE_SWIGLU` / `MLXK_EPILOGUE_GEGLU` of the kernel header.
    fn epilogue(self) -> c_int {
        match self {
            Gate::Silu => 1,
            Gate::GeluTanh => 2,
        }
    }

    /// The activation with MLX ops (the path without GGUF kernels).
    pub fn apply(self, g: &Array) -> Result<Array> {
        match self {
            Gate::Silu => ops::silu(g),
            Gate::GeluTanh => ops::gelu_tanh(g),
        }
    }
}

/// One weight of a fused projection: `n` rows of GGUF blocks of type `ty` held in `blocks`
/// (uint8 `[n, row_bytes]`, as for [`gguf_matmul`]) and an optional bias of `n` elements
/// (float32, float16 or bfloat16; any shape with `n` elements).
#[derive(Clone, Copy, Debug)]
pub struct GgufWeightRef<'a> {
    /// The raw GGUF blocks.
    pub blocks: &'a Array,
    /// Their type and layout.
    pub layout: BlockLayout,
    /// Output rows (the weight's N).
    pub n: usize,
    /// Added to every output row, if present.
    pub bias: Option<&'a Array>,
}

impl<'a> GgufWeightRef<'a> {
    /// A weight without bias.
    pub fn new(blocks: &'a Array, layout: impl Into<BlockLayout>, n: usize) -> Self {
        GgufWeightRef {
            blocks,
            layout: layout.into(),
            n,
            bias: None,
        }
    }

    /// The same weight with `bias` added to its output.
    pub fn with_bias(self, bias: &'a Array) -> Self {
        GgufWeightRef {
            bias: Some(bias),
            ..self
        }
    }
}

/// An RMSNorm applied to x inside a fused projection ([`gguf_matmul_multi`],
/// [`gguf_swiglu`]): x · weight / √(mean(x²) + eps), row by row, as MLX's `rms_norm`.
#[derive(Clone, Copy, Debug)]
pub struct RmsNormRef<'a> {
    /// The norm's weight, K elements (float32, float16 or bfloat16).
    pub weight: &'a Array,
    /// Added to the mean square.
    pub eps: f32,
}

/// The fused primitive, returning the `outputs` arrays the epilogue produces.
fn qmatmul_multi(
    x: &Array,
    norm: Option<RmsNormRef>,
    weights: &[GgufWeightRef],
    k: usize,
    epilogue: c_int,
    outputs: usize,
) -> Result<Vec<Array>> {
    install_error_handler();
    let count = c_int::try_from(weights.len()).map_err(|_| {
        Error::InvalidArgument(format!("{} weights in one fused call", weights.len()))
    })?;
    let blocks: Vec<mlx_sys::mlx_array> = weights.iter().map(|w| w.blocks.raw()).collect();
    let types: Vec<c_int> = weights.iter().map(|w| w.layout.id()).collect();
    let ns: Vec<i64> = weights.iter().map(|w| w.n as i64).collect();
    let biases: Vec<mlx_sys::mlx_array> = weights
        .iter()
        .map(|w| w.bias.map_or_else(null_array, Array::raw))
        .collect();
    let biases_ptr = if weights.iter().any(|w| w.bias.is_some()) {
        biases.as_ptr()
    } else {
        std::ptr::null()
    };
    // Owned from the start, so every handle is freed on every path (freeing an empty handle
    // is a no-op).
    let mut out: Vec<Array> = (0..outputs)
        // SAFETY: `mlx_array_new` returns an empty handle that we own.
        .map(|_| unsafe { Array::from_raw(mlx_sys::mlx_array_new()) })
        .collect();
    let s = current_stream();
    // SAFETY: `Array` is a `repr(transparent)` wrapper of `mlx_array`, so `out` is `outputs`
    // consecutive handles, as many as the call fills (one per weight, or one for SWIGLU; none
    // on error); `blocks`, `types`, `ns` and `biases` hold `count` entries each and outlive
    // the call; all handles are valid. The C entry validates everything else and reports
    // failures through its status, with the message in `mlxk_last_error`.
    let code = unsafe {
        mlxk_gguf_qmatmul_multi_norm(
            out.as_mut_ptr() as *mut mlx_sys::mlx_array,
            x.raw(),
            norm.map_or_else(null_array, |n| n.weight.raw()),
            norm.map_or(0.0, |n| n.eps),
            blocks.as_ptr(),
            types.as_ptr(),
            ns.as_ptr(),
            biases_ptr,
            count,
            k as i64,
            epilogue,
            s,
        )
    };
    if code != 0 {
        return Err(Error::Mlx {
            message: last_error(),
        });
    }
    Ok(out)
}

/// Several projections of the same `x` [.., M, K] in one kernel call: for each weight,
/// x · Wᵀ (+ bias) as [.., M, N] float32, in the order of `weights` (1 to
/// [`MAX_FUSED_WEIGHTS`] of them, any mix of types). The activations are quantized once per
/// format and the rows of all weights are split over one parallel run; the results are
/// siblings of one lazy MLX op on the CPU stream (evaluating one computes all).
/// With `norm`, the projections are of RMSNorm(x), computed in the same op.
pub fn gguf_matmul_multi(
    x: &Array,
    norm: Option<RmsNormRef>,
    weights: &[GgufWeightRef],
    k: usize,
) -> Result<Vec<Array>> {
    qmatmul_multi(x, norm, weights, k, EPILOGUE_NONE, weights.len())
}

/// The SwiGLU feed-forward input in one kernel call: silu(x · Gateᵀ) ⊙ (x · Upᵀ) as
/// [.., M, N] float32, with silu(g) = g / (1 + e^(−g)). `gate` and `up` must have the same
/// `n` and no bias. With `norm`, of RMSNorm(x), computed in the same op.
pub fn gguf_swiglu(
    x: &Array,
    norm: Option<RmsNormRef>,
    gate: GgufWeightRef,
    up: GgufWeightRef,
    k: usize,
) -> Result<Array> {
    gguf_gated(x, norm, gate, up, k, Gate::Silu)
}

/// [`gguf_swiglu`] with the gate's activation chosen: act(x · Gateᵀ) ⊙ (x · Upᵀ).
pub fn gguf_gated(
    x: &Array,
    norm: Option<RmsNormRef>,
    gate: GgufWeightRef,
    up: GgufWeightRef,
    k: usize,
    act: Gate,
) -> Result<Array> {
    let mut out = qmatmul_multi(x, norm, &[gate, up], k, act.epilogue(), 1)?;
    Ok(out.remove(0))
}

/// Bytes of one row of `k` elements of `ty`, as the kernel computes it.
pub fn row_bytes(ty: GgmlType, k: usize) -> Result<usize> {
    let mut out = 0i64;
    // SAFETY: writes one i64.
    status(
        unsafe { mlxk_row_bytes(ty.id() as c_int, k as i64, &mut out) },
        "row_bytes",
    )?;
    Ok(out as usize)
}

/// The raw kernel on host memory: y [m, n] = x [m, k] · W[n, k]ᵀ, W as GGUF blocks.
pub fn qmatmul_host(
    w: &[u8],
    layout: impl Into<BlockLayout>,
    n: usize,
    k: usize,
    x: &[f32],
    m: usize,
) -> Result<Vec<f32>> {
    let layout = layout.into();
    if w.len() != n * row_bytes(layout.ty, k)? || x.len() != m * k {
        return Err(Error::InvalidArgument(format!(
            "qmatmul_host: {} weight bytes, {} activations for n={n}, k={k}, m={m}",
            w.len(),
            x.len()
        )));
    }
    let mut y = vec![0f32; m * n];
    // SAFETY: sizes checked above: w holds n rows, x holds m rows of k, y holds m rows of n.
    let code = unsafe {
        mlxk_qmatmul_f32(
            w.as_ptr() as *const c_void,
            layout.id(),
            n as i64,
            k as i64,
            x.as_ptr(),
            m as i64,
            k as i64,
            y.as_mut_ptr(),
            n as i64,
        )
    };
    status(code, "qmatmul")?;
    Ok(y)
}

/// The kernel's dequantization of `rows` rows of `k` elements.
pub fn dequantize_host(
    w: &[u8],
    layout: impl Into<BlockLayout>,
    rows: usize,
    k: usize,
) -> Result<Vec<f32>> {
    let layout = layout.into();
    if w.len() != rows * row_bytes(layout.ty, k)? {
        return Err(Error::InvalidArgument(format!(
            "dequantize_host: {} bytes for {rows} rows of {k}",
            w.len()
        )));
    }
    let mut out = vec![0f32; rows * k];
    // SAFETY: sizes checked above.
    let code = unsafe {
        mlxk_dequantize_rows(
            w.as_ptr() as *const c_void,
            layout.id(),
            rows as i64,
            k as i64,
            out.as_mut_ptr(),
        )
    };
    status(code, "dequantize")?;
    Ok(out)
}

/// The path in use.
pub fn path() -> KernelPath {
    // SAFETY: a pure query.
    match unsafe { mlxk_kernel_path() } {
        1 => KernelPath::Avx2,
        2 => KernelPath::Avx512Vnni,
        _ => KernelPath::Scalar,
    }
}

/// Forces a path process-wide (`None`: back to the default: `MLX_ENGINE_KERNEL`, else the
/// best the CPU supports); a path the CPU lacks falls back to the next best. For tests and
/// comparisons.
pub fn force_path(path: Option<KernelPath>) {
    let raw = match path {
        None => -1,
        Some(KernelPath::Scalar) => 0,
        Some(KernelPath::Avx2) => 1,
        Some(KernelPath::Avx512Vnni) => 2,
    };
    // SAFETY: sets a process-wide flag.
    unsafe { mlxk_force_path(raw) }
}

/// Sets the kernels' thread count (the calling thread included; 0: all cores).
pub fn set_num_threads(threads: usize) {
    let n = if threads == 0 {
        std::thread::available_parallelism().map_or(1, |n| n.get())
    } else {
        threads
    };
    // SAFETY: sets the pool size.
    unsafe { mlxk_set_num_threads(n.min(c_int::MAX as usize) as c_int) }
}

/// The kernels' thread count.
pub fn num_threads() -> usize {
    // SAFETY: a pure query.
    unsafe { mlxk_get_num_threads() }.max(1) as usize
}

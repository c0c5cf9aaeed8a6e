//! The quant formats against their references:
//! - `dequantize_row` vs `gguf.quants.dequantize` (Python, `tests/reference/dequantize.py`),
//!   bit for bit, on random blocks of every supported type and on the real model's tensors;
//! - `to_mlx_affine` → `dequantize_affine` vs `dequantize_row` (exact types: equal values;
//!   Q2_K/Q6_K: within `REQUANT_MAX_ERROR_FRACTION` of the group range);
//! - our MLX packing and `dequantize_affine` vs MLX's own `quantize`/`dequantize`.
//!
//! The Python reference needs `numpy` and `gguf` (`python3 -m pip install --user numpy gguf`);
//! set `MLX_ENGINE_SKIP_REFERENCE=1` to skip the Python comparisons where they are missing.

mod common;

use mlx_engine::ggml_type::GgmlType;
use mlx_engine::loader::GgufFile;
use mlx_engine::mlx::ops::{self, QuantSpec};
use mlx_engine::mlx::Array;
use mlx_engine::quant::affine::{is_exact, pack_codes, unpack_codes, REQUANT_MAX_ERROR_FRACTION};
use mlx_engine::quant::{dequantize_affine, dequantize_row, to_mlx_affine, AffineWeights};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Instant;

/// Every type `dequantize_row` supports.
const SUPPORTED: &[GgmlType] = &[
    GgmlType::F32,
    GgmlType::F16,
    GgmlType::BF16,
    GgmlType::Q4_0,
    GgmlType::Q4_1,
    GgmlType::Q5_0,
    GgmlType::Q5_1,
    GgmlType::Q8_0,
    GgmlType::Q2_K,
    GgmlType::Q3_K,
    GgmlType::Q4_K,
    GgmlType::Q5_K,
    GgmlType::Q6_K,
];

/// Every type `to_mlx_affine` supports.
const AFFINE: &[GgmlType] = &[
    GgmlType::Q4_0,
    GgmlType::Q4_1,
    GgmlType::Q5_0,
    GgmlType::Q5_1,
    GgmlType::Q8_0,
    GgmlType::Q2_K,
    GgmlType::Q3_K,
    GgmlType::Q4_K,
    GgmlType::Q5_K,
    GgmlType::Q6_K,
];

/// MLX is not driven from two test threads at once.
static MLX: Mutex<()> = Mutex::new(());

/// The real model (fetched if needed), unless reference tests are explicitly skipped.
fn model_path() -> Option<PathBuf> {
    (!common::skip_requested()).then(common::qwen_model)
}

/// A small deterministic PRNG (xorshift64*), so failures reproduce.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.next() as u8).collect()
    }

    /// Uniform in [-1, 1).
    fn unit(&mut self) -> f32 {
        (self.next() >> 40) as f32 / (1u64 << 23) as f32 - 1.0
    }
}

/// Byte offsets of the f16 scale fields inside one block of `ty`.
fn f16_fields(ty: GgmlType) -> &'static [usize] {
    use GgmlType::*;
    match ty {
        Q4_0 | Q5_0 | Q8_0 => &[0],
        Q4_1 | Q5_1 | Q4_K | Q5_K => &[0, 2],
        Q2_K => &[80, 82],
        Q3_K => &[108],
        Q6_K => &[208],
        _ => &[],
    }
}

/// `rows × cols` of random valid data of `ty`: random bytes, with every float field set to a
/// finite value so nothing decodes to NaN or infinity.
fn random_tensor(rng: &mut Rng, ty: GgmlType, rows: usize, cols: usize) -> Vec<u8> {
    let len = rows * ty.row_bytes(cols as u64).unwrap() as usize;
    let mut data = rng.bytes(len);
    match ty {
        GgmlType::F32 => {
            for c in data.chunks_exact_mut(4) {
                c.copy_from_slice(&(rng.unit() * 3.0).to_le_bytes());
            }
        }
        GgmlType::F16 => {
            for c in data.chunks_exact_mut(2) {
                c.copy_from_slice(&half::f16::from_f32(rng.unit() * 3.0).to_le_bytes());
            }
        }
        GgmlType::BF16 => {
            for c in data.chunks_exact_mut(2) {
                c.copy_from_slice(&half::bf16::from_f32(rng.unit() * 3.0).to_le_bytes());
            }
        }
        _ => {
            for block in data.chunks_exact_mut(ty.type_size() as usize) {
                for &at in f16_fields(ty) {
                    let v = half::f16::from_f32(rng.unit() * 0.05);
                    block[at..at + 2].copy_from_slice(&v.to_le_bytes());
                }
            }
        }
    }
    data
}

fn dequantize_all(ty: GgmlType, data: &[u8], n: usize) -> Vec<f32> {
    let mut out = vec![0f32; n];
    dequantize_row(ty, data, &mut out).unwrap();
    out
}

fn temp_dir() -> PathBuf {
    let dir = std::env::temp_dir().join(format!("mlx-engine-quant-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// `gguf.quants.dequantize` of `data` through `tests/reference/dequantize.py`, or `None`
/// when skipped with `MLX_ENGINE_SKIP_REFERENCE=1`. Fails clearly when Python lacks packages.
fn python_dequantize(ty: GgmlType, data: &[u8], rows: usize, cols: usize) -> Option<Vec<f32>> {
    let dir = temp_dir();
    let tag = format!("{}-{rows}x{cols}-{:x}", ty.name(), data.len());
    let (src, dst) = (
        dir.join(format!("{tag}.in")),
        dir.join(format!("{tag}.out")),
    );
    std::fs::write(&src, data).unwrap();
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/reference/dequantize.py");
    let output = common::python()
        .arg(script)
        .args([
            ty.name(),
            src.to_str()?,
            &rows.to_string(),
            &cols.to_string(),
            dst.to_str()?,
        ])
        .output();
    let failure = match &output {
        Ok(o) if o.status.success() => None,
        Ok(o) => Some(String::from_utf8_lossy(&o.stderr).into_owned()),
        Err(e) => Some(format!("cannot run python3: {e}")),
    };
    if let Some(why) = failure {
        if std::env::var("MLX_ENGINE_SKIP_REFERENCE").as_deref() == Ok("1") {
            eprintln!("skipping the Python reference: {why}");
            return None;
        }
        panic!(
            "the Python reference failed (set MLX_ENGINE_SKIP_REFERENCE=1 to skip; \
             install with `python3 -m pip install --user numpy gguf`):\n{why}"
        );
    }
    let bytes = std::fs::read(&dst).unwrap();
    let _ = std::fs::remove_file(&src);
    let _ = std::fs::remove_file(&dst);
    Some(
        bytes
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes(b.try_into().unwrap()))
            .collect(),
    )
}

/// Asserts bit-for-bit equality, naming the first differing element.
fn assert_bits_eq(what: &str, ours: &[f32], reference: &[f32]) {
    assert_eq!(ours.len(), reference.len(), "{what}: lengths");
    for (i, (a, b)) in ours.iter().zip(reference).enumerate() {
        assert!(
            a.to_bits() == b.to_bits(),
            "{what}: element {i}: ours {a:e}, reference {b:e}"
        );
    }
}

/// Asserts equal values (`==`: an affine form cannot keep the sign of a zero that comes from a
/// cancellation, so −0.0 and +0.0 count as equal).
fn assert_values_eq(what: &str, ours: &[f32], reference: &[f32]) {
    assert_eq!(ours.len(), reference.len(), "{what}: lengths");
    for (i, (a, b)) in ours.iter().zip(reference).enumerate() {
        assert!(a == b, "{what}: element {i}: ours {a:e}, reference {b:e}");
    }
}

/// Asserts |ours − exact| ≤ the re-quantization bound of each group of 32, plus f32 rounding.
/// Returns (max abs error, max error / group range).
fn assert_requant_bound(what: &str, ours: &[f32], exact: &[f32]) -> (f32, f32) {
    let (mut max_abs, mut max_rel) = (0f32, 0f32);
    for (g, (a, e)) in ours.chunks(32).zip(exact.chunks(32)).enumerate() {
        let lo = e.iter().copied().fold(f32::INFINITY, f32::min);
        let hi = e.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        let range = hi - lo;
        let slack = 4.0 * f32::EPSILON * hi.abs().max(lo.abs());
        for (x, y) in a.iter().zip(e) {
            let err = (x - y).abs();
            assert!(
                err <= range * REQUANT_MAX_ERROR_FRACTION + slack,
                "{what}: group {g}: error {err:e} over the bound (range {range:e})"
            );
            max_abs = max_abs.max(err);
            if range > 0.0 {
                max_rel = max_rel.max(err / range);
            }
        }
    }
    (max_abs, max_rel)
}

#[test]
fn type_table_matches_gguf_py() {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/reference/dequantize.py");
    let out = common::python().arg(script).arg("--sizes").output();
    let Ok(out) =
        out.as_ref()
            .map_err(|_| ())
            .and_then(|o| if o.status.success() { Ok(o) } else { Err(()) })
    else {
        assert!(
            std::env::var("MLX_ENGINE_SKIP_REFERENCE").as_deref() == Ok("1"),
            "python3 reference unavailable: {out:?}"
        );
        return;
    };
    let table: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let table = table.as_object().unwrap();
    for (name, row) in table {
        let row: Vec<u64> = row
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_u64().unwrap())
            .collect();
        let ty = GgmlType::from_id(row[0] as u32)
            .unwrap_or_else(|| panic!("{name} (id {}) missing", row[0]));
        assert_eq!(
            (ty.name(), ty.block_size(), ty.type_size()),
            (name.as_str(), row[1], row[2])
        );
    }
    assert_eq!(
        GgmlType::ALL.len(),
        table.len(),
        "we know types gguf-py does not"
    );
    assert_eq!(GgmlType::from_id(4), None);
}

#[test]
fn unsupported_types_are_named() {
    let err = dequantize_row(GgmlType::IQ2_XXS, &[0; 66], &mut [0.0; 256]).unwrap_err();
    assert!(err.to_string().contains("IQ2_XXS"), "{err}");
    let err = to_mlx_affine(GgmlType::F16, &[0; 64], 1, 32).unwrap_err();
    assert!(err.to_string().contains("F16"), "{err}");
    let err = dequantize_row(GgmlType::Q4_0, &[0; 17], &mut [0.0; 32]).unwrap_err();
    assert!(err.to_string().contains("Q4_0"), "{err}");
}

#[test]
fn dequantize_row_matches_python_on_random_blocks() {
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
    for &ty in SUPPORTED {
        let (rows, cols) = (5, 2 * ty.block_size().max(32) as usize);
        let data = random_tensor(&mut rng, ty, rows, cols);
        let ours = dequantize_all(ty, &data, rows * cols);
        if let Some(reference) = python_dequantize(ty, &data, rows, cols) {
            assert_bits_eq(ty.name(), &ours, &reference);
        }
    }
}

#[test]
fn dequantize_row_matches_python_on_the_real_model() {
    let Some(path) = model_path() else {
        eprintln!("model not present; skipping");
        return;
    };
    let gguf = GgufFile::open(&path).unwrap();
    let mut done = Vec::new();
    for t in gguf.tensors() {
        if done.contains(&t.ggml_type) {
            continue;
        }
        done.push(t.ggml_type);
        let rows = t.n_rows().min(8) as usize;
        let cols = t.row_len() as usize;
        let bytes =
            &gguf.tensor_bytes(t)[..rows * t.ggml_type.row_bytes(t.row_len()).unwrap() as usize];
        let ours = dequantize_all(t.ggml_type, bytes, rows * cols);
        if let Some(reference) = python_dequantize(t.ggml_type, bytes, rows, cols) {
            assert_bits_eq(&t.name, &ours, &reference);
        }
    }
    eprintln!("checked the first rows of one tensor of each type: {done:?}");
}

#[test]
fn affine_conversion_reproduces_dequantize_row() {
    let mut rng = Rng(0xD1B5_4A32_D192_ED03);
    for &ty in AFFINE {
        let (rows, cols) = (6, 2 * ty.block_size() as usize);
        let data = random_tensor(&mut rng, ty, rows, cols);
        let exact = dequantize_all(ty, &data, rows * cols);
        let w = to_mlx_affine(ty, &data, rows, cols).unwrap();
        assert_eq!(w.packed.len(), rows * cols * w.bits as usize / 32);
        assert_eq!(w.scales.len(), rows * cols / 32);
        let ours = dequantize_affine(&w, rows, cols);
        if is_exact(ty) {
            assert_values_eq(ty.name(), &ours, &exact);
        } else {
            let (abs, rel) = assert_requant_bound(ty.name(), &ours, &exact);
            eprintln!("{ty}: random blocks, max error {abs:e} = {rel:.5} of the group range");
        }
    }
}

#[test]
fn pack_and_unpack_are_inverse() {
    let mut rng = Rng(7);
    for bits in [2u32, 3, 4, 5, 6, 8] {
        let codes: Vec<u8> = (0..128).map(|_| (rng.next() % (1 << bits)) as u8).collect();
        let mut words = vec![0u32; 128 * bits as usize / 32];
        pack_codes(&codes, bits, &mut words);
        let mut back = vec![0u8; 128];
        unpack_codes(&words, bits, &mut back);
        assert_eq!(codes, back, "bits {bits}");
    }
    // Spelled out for 5 bits: codes 1, 2, 3, … sit at bit 0, 5, 10, …; code 6 spans words.
    let codes: Vec<u8> = (1..=32).collect();
    let mut words = [0u32; 5];
    pack_codes(&codes, 5, &mut words);
    assert_eq!(words[0] & 0x1F, 1);
    assert_eq!((words[0] >> 5) & 0x1F, 2);
    assert_eq!((words[0] >> 30) | ((words[1] & 0x7) << 2), 7);
}

/// MLX's `dequantize` of an `AffineWeights` `[rows, cols]`.
fn mlx_dequantize(w: &AffineWeights, rows: usize, cols: usize) -> Vec<f32> {
    let (r, packed_cols, groups) = (
        rows as i32,
        (cols * w.bits as usize / 32) as i32,
        (cols / w.group_size as usize) as i32,
    );
    let packed = Array::from_slice(&w.packed, &[r, packed_cols]).unwrap();
    let scales = Array::from_slice(&w.scales, &[r, groups]).unwrap();
    let biases = Array::from_slice(&w.biases, &[r, groups]).unwrap();
    let spec = QuantSpec {
        group_size: w.group_size as i32,
        bits: w.bits as i32,
    };
    ops::dequantize(&packed, &scales, &biases, spec)
        .unwrap()
        .to_vec::<f32>()
        .unwrap()
}

#[test]
fn mlx_reads_our_packing_for_every_bit_width() {
    let _guard = MLX.lock().unwrap_or_else(|e| e.into_inner());
    let mut rng = Rng(11);
    let (rows, cols) = (3, 128);
    for bits in [2u32, 3, 4, 5, 6, 8] {
        let codes: Vec<u8> = (0..rows * cols)
            .map(|_| (rng.next() % (1 << bits)) as u8)
            .collect();
        let mut packed = vec![0u32; rows * cols * bits as usize / 32];
        pack_codes(&codes, bits, &mut packed);
        let groups = rows * cols / 32;
        let w = AffineWeights {
            bits,
            group_size: 32,
            packed,
            scales: vec![1.0; groups],
            biases: vec![0.0; groups],
        };
        let from_mlx = mlx_dequantize(&w, rows, cols);
        let expected: Vec<f32> = codes.iter().map(|&c| f32::from(c)).collect();
        assert_bits_eq(
            &format!("MLX reading our {bits}-bit packing"),
            &from_mlx,
            &expected,
        );
    }
}

#[test]
fn our_dequantize_affine_reads_mlx_quantize_output() {
    let _guard = MLX.lock().unwrap_or_else(|e| e.into_inner());
    let mut rng = Rng(13);
    let (rows, cols) = (4, 256);
    let values: Vec<f32> = (0..rows * cols).map(|_| rng.unit()).collect();
    let w = Array::from_slice(&values, &[rows as i32, cols as i32]).unwrap();
    for bits in [2u32, 3, 4, 5, 6, 8] {
        for group_size in [32u32, 64, 128] {
            let spec = QuantSpec {
                group_size: group_size as i32,
                bits: bits as i32,
            };
            let (packed, scales, biases) = ops::quantize(&w, spec).unwrap();
            let from_mlx = ops::dequantize(&packed, &scales, &biases, spec)
                .unwrap()
                .to_vec::<f32>()
                .unwrap();
            let ours = AffineWeights {
                bits,
                group_size,
                packed: packed.to_vec::<u32>().unwrap(),
                scales: scales.to_vec::<f32>().unwrap(),
                biases: biases.to_vec::<f32>().unwrap(),
            };
            let what = format!("bits {bits}, group {group_size}");
            assert_bits_eq(&what, &dequantize_affine(&ours, rows, cols), &from_mlx);
        }
    }
}

#[test]
fn mlx_dequantize_of_converted_gguf_blocks_matches() {
    let _guard = MLX.lock().unwrap_or_else(|e| e.into_inner());
    let mut rng = Rng(17);
    for &ty in AFFINE {
        let (rows, cols) = (4, 2 * ty.block_size() as usize);
        let data = random_tensor(&mut rng, ty, rows, cols);
        let w = to_mlx_affine(ty, &data, rows, cols).unwrap();
        let ours = dequantize_affine(&w, rows, cols);
        assert_bits_eq(
            &format!("{ty} through MLX"),
            &mlx_dequantize(&w, rows, cols),
            &ours,
        );
        if is_exact(ty) {
            assert_values_eq(
                &format!("{ty} through MLX vs exact"),
                &mlx_dequantize(&w, rows, cols),
                &dequantize_all(ty, &data, rows * cols),
            );
        }
    }
}

/// One row of `w` (`[rows, cols]`) as its own `AffineWeights`.
fn affine_row(w: &AffineWeights, row: usize, cols: usize) -> AffineWeights {
    let (wpr, gpr) = (cols * w.bits as usize / 32, cols / w.group_size as usize);
    AffineWeights {
        bits: w.bits,
        group_size: w.group_size,
        packed: w.packed[row * wpr..(row + 1) * wpr].to_vec(),
        scales: w.scales[row * gpr..(row + 1) * gpr].to_vec(),
        biases: w.biases[row * gpr..(row + 1) * gpr].to_vec(),
    }
}

#[test]
fn real_model_converts_fast_and_within_bounds() {
    let Some(path) = model_path() else {
        eprintln!("model not present; skipping");
        return;
    };
    let gguf = GgufFile::open(&path).unwrap();
    let quantized: Vec<_> = gguf
        .tensors()
        .iter()
        .filter(|t| is_exact(t.ggml_type) || t.ggml_type == GgmlType::Q6_K)
        .collect();
    let start = Instant::now();
    let mut by_type: Vec<(GgmlType, usize, f64)> = Vec::new();
    for t in &quantized {
        let (rows, cols) = (t.n_rows() as usize, t.row_len() as usize);
        let t0 = Instant::now();
        let w = to_mlx_affine(t.ggml_type, gguf.tensor_bytes(t), rows, cols).unwrap();
        let ms = t0.elapsed().as_secs_f64() * 1e3;
        match by_type.iter_mut().find(|(ty, _, _)| *ty == t.ggml_type) {
            Some(entry) => (entry.1, entry.2) = (entry.1 + w.scales.len() * 32, entry.2 + ms),
            None => by_type.push((t.ggml_type, w.scales.len() * 32, ms)),
        }
    }
    let ms = start.elapsed().as_secs_f64() * 1e3;
    let elements: usize = by_type.iter().map(|e| e.1).sum();
    eprintln!(
        "converted {} tensors ({elements} weights) to MLX affine in {ms:.0} ms",
        quantized.len()
    );
    for (ty, n, ms) in &by_type {
        eprintln!("  {ty}: {n} weights in {ms:.0} ms");
    }

    let (mut q6_abs, mut q6_rel, mut q6_sq_err, mut q6_sq) = (0f32, 0f32, 0f64, 0f64);
    for t in &quantized {
        let (rows, cols) = (t.n_rows() as usize, t.row_len() as usize);
        let bytes = gguf.tensor_bytes(t);
        let w = to_mlx_affine(t.ggml_type, bytes, rows, cols).unwrap();
        let row_bytes = t.ggml_type.row_bytes(t.row_len()).unwrap() as usize;
        let every = if t.ggml_type == GgmlType::Q6_K {
            1
        } else {
            rows.div_ceil(32)
        };
        for r in (0..rows).step_by(every) {
            let exact = dequantize_all(
                t.ggml_type,
                &bytes[r * row_bytes..(r + 1) * row_bytes],
                cols,
            );
            let ours = dequantize_affine(&affine_row(&w, r, cols), 1, cols);
            if is_exact(t.ggml_type) {
                assert_values_eq(&format!("{} row {r}", t.name), &ours, &exact);
                continue;
            }
            let (abs, rel) = assert_requant_bound(&format!("{} row {r}", t.name), &ours, &exact);
            (q6_abs, q6_rel) = (q6_abs.max(abs), q6_rel.max(rel));
            q6_sq_err += ours
                .iter()
                .zip(&exact)
                .map(|(a, b)| f64::from(a - b).powi(2))
                .sum::<f64>();
            q6_sq += exact.iter().map(|&b| f64::from(b).powi(2)).sum::<f64>();
        }
    }
    eprintln!(
        "Q6_K → 8-bit g32: max |error| {q6_abs:e}, max error / group range {q6_rel:.5} (bound {:.5}), \
         RMS error / RMS weight {:.2e}",
        REQUANT_MAX_ERROR_FRACTION,
        (q6_sq_err / q6_sq).sqrt()
    );
}

/// Tolerance of an f32 matmul against an f64 one over `cols` products: MLX accumulates in f32
/// in its own order, so allow a few ulps per term of the absolute sum.
fn matmul_tolerance(abs_sum: f64) -> f64 {
    abs_sum * 64.0 * f64::from(f32::EPSILON)
}

#[test]
fn mlx_quantized_matmul_uses_converted_weights() {
    let _guard = MLX.lock().unwrap_or_else(|e| e.into_inner());
    let mut rng = Rng(19);
    for &ty in AFFINE {
        let (rows, cols, m) = (8, 2 * ty.block_size() as usize, 3);
        let data = random_tensor(&mut rng, ty, rows, cols);
        let w = to_mlx_affine(ty, &data, rows, cols).unwrap();
        let dense = dequantize_affine(&w, rows, cols);
        let x: Vec<f32> = (0..m * cols).map(|_| rng.unit()).collect();
        let groups = (cols / 32) as i32;
        let packed_cols = (cols * w.bits as usize / 32) as i32;
        let packed = Array::from_slice(&w.packed, &[rows as i32, packed_cols]).unwrap();
        let scales = Array::from_slice(&w.scales, &[rows as i32, groups]).unwrap();
        let biases = Array::from_slice(&w.biases, &[rows as i32, groups]).unwrap();
        let xs = Array::from_slice(&x, &[m as i32, cols as i32]).unwrap();
        let spec = QuantSpec {
            group_size: 32,
            bits: w.bits as i32,
        };
        // [m, cols] · [rows, cols]ᵀ = [m, rows]: GGUF rows are the output features.
        let y = ops::quantized_matmul(&xs, &packed, &scales, &biases, spec)
            .unwrap()
            .to_vec::<f32>()
            .unwrap();
        for (i, got) in y.iter().enumerate() {
            let (r, c) = (i / rows, i % rows);
            let terms =
                (0..cols).map(|k| f64::from(x[r * cols + k]) * f64::from(dense[c * cols + k]));
            let (exact, abs_sum) = terms.fold((0.0, 0.0), |(s, a), t| (s + t, a + t.abs()));
            let err = (f64::from(*got) - exact).abs();
            assert!(
                err <= matmul_tolerance(abs_sum),
                "{ty}: y[{r}, {c}] = {got}, expected {exact}"
            );
        }
    }
}

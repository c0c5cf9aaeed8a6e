#!/usr/bin/env python3
"""Write small, deterministic, random-weight Llama-family GGUF models for tests.

The output is a complete model file: every hyperparameter key the engine
reads, the standard GGUF tensor names, and a minimal but well-formed
tokenizer (SentencePiece-style "llama" vocabulary for ``--arch llama``,
GPT-2 byte-level BPE with merges for ``--arch qwen2``).

Weights:
  * F32/F16/BF16 and the block types the ``gguf`` package can quantize
    (Q8_0, Q4_0, Q4_1, Q5_0, Q5_1) are made by quantizing seeded normal
    floats with ``gguf.quants.quantize``.
  * K-quants (Q4_K, Q5_K, Q6_K) have no quantizer in the package, so random
    but valid raw blocks are written directly in ggml's byte layout, with
    scales chosen so the dequantized weights have std ~0.02-0.05.
  * Norm weights and biases are always F32.

Usage::

    python3 make_synthetic.py OUT.gguf --arch llama --seed 0 --quant Q4_K \\
        --layers 2 --hidden 256 --heads 4 --kv-heads 2 --ffn 512 --vocab 512 --ctx 256
    python3 make_synthetic.py OUT.gguf --tinyllama-shape --quant Q4_K_M
"""

from __future__ import annotations

import argparse
import itertools
import string
import sys
from dataclasses import dataclass

import numpy as np
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType, GGUFReader, GGUFValueType, GGUFWriter, LlamaFileType
from gguf.quants import quantize

Q = GGMLQuantizationType

# Every type accepted by --quant; `mix` cycles through them in this order.
QUANT_TYPES = ["F32", "F16", "BF16", "Q8_0", "Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q4_K", "Q5_K", "Q6_K"]
# Types produced by quantizing float weights with gguf.quants.quantize.
FLOAT_ENCODED = {Q.F32, Q.F16, Q.BF16, Q.Q8_0, Q.Q4_0, Q.Q4_1, Q.Q5_0, Q.Q5_1}
# Types written as random raw blocks (no quantizer in the gguf package).
RAW_BLOCKS = {Q.Q4_K, Q.Q5_K, Q.Q6_K}

FILE_TYPES = {
    "F32": LlamaFileType.ALL_F32, "F16": LlamaFileType.MOSTLY_F16, "BF16": LlamaFileType.MOSTLY_BF16,
    "Q8_0": LlamaFileType.MOSTLY_Q8_0, "Q4_0": LlamaFileType.MOSTLY_Q4_0, "Q4_1": LlamaFileType.MOSTLY_Q4_1,
    "Q5_0": LlamaFileType.MOSTLY_Q5_0, "Q5_1": LlamaFileType.MOSTLY_Q5_1, "Q4_K": LlamaFileType.MOSTLY_Q4_K_M,
    "Q5_K": LlamaFileType.MOSTLY_Q5_K_M, "Q6_K": LlamaFileType.MOSTLY_Q6_K,
    "Q4_K_M": LlamaFileType.MOSTLY_Q4_K_M,
}

# Per-block (or per-tensor) weight std is drawn uniformly from this range.
STD_RANGE = (0.02, 0.05)

TINYLLAMA_SHAPE = dict(layers=22, hidden=2048, heads=32, kv_heads=4, ffn=5632, vocab=32000,
                       ctx=2048, rope_base=10000.0, eps=1e-5)

ZEPHYR_TEMPLATE = (
    "{% for message in messages %}"
    "{% if message['role'] == 'system' %}{{ '<|system|>\\n' + message['content'] + eos_token + '\\n' }}"
    "{% elif message['role'] == 'user' %}{{ '<|user|>\\n' + message['content'] + eos_token + '\\n' }}"
    "{% else %}{{ '<|assistant|>\\n' + message['content'] + eos_token + '\\n' }}{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|assistant|>\\n' }}{% endif %}"
)

CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)

# Words given whole-word pieces (plus all their prefixes) in both vocabularies.
COMMON_WORDS = [
    "the", "of", "and", "to", "in", "is", "it", "that", "was", "for", "on", "are", "with", "as",
    "be", "at", "by", "this", "have", "from", "or", "an", "not", "you", "we", "can", "hello",
    "world", "capital", "city", "Paris", "France", "The", "model", "token", "test", "one", "two",
    "three", "user", "assistant", "system", "what", "how", "why", "yes", "no",
]

SPM_SPACE = "\u2581"  # '▁'
GPT2_SPACE = "\u0120"  # 'Ġ'


@dataclass(frozen=True)
class Config:
    """Shape and hyperparameters of the model to write."""

    arch: str
    layers: int
    hidden: int
    heads: int
    kv_heads: int
    ffn: int
    vocab: int
    ctx: int
    rope_base: float
    eps: float
    tied: bool
    head_dim_override: int = 0  # gemma3: key_length independent of hidden / heads
    sliding_window: int = 0  # gemma3
    # gemma3, optional keys (written only when set; llama.cpp's defaults otherwise):
    sliding_pattern: int | None = None  # attention.sliding_window_pattern (default 6)
    rope_base_swa: float | None = None  # rope.freq_base_swa (default 10000)
    rope_scale: float | None = None  # rope.scaling.type linear + rope.scaling.factor
    logit_softcap: float | None = None  # final_logit_softcapping
    # RoPE scaling of any architecture:
    yarn: tuple[float, int] | None = None  # (factor, original context): rope.scaling.type yarn
    llama3_rope: tuple[float, float, float, int] | None = None  # (factor, low, high, original
    # context): Llama 3's per-dimension factors, written as the tensor rope_freqs.weight

    @property
    def head_dim(self) -> int:
        """Per-head dimension."""
        return self.head_dim_override or self.hidden // self.heads


# ---------------------------------------------------------------------------
# Weight encoding
# ---------------------------------------------------------------------------

def f16_bytes(values: np.ndarray) -> np.ndarray:
    """float values [n] -> their little-endian float16 bytes [n, 2]."""
    return values.astype("<f2").view(np.uint8).reshape(-1, 2)


def pack_k_scales(sc: np.ndarray, mn: np.ndarray) -> np.ndarray:
    """Pack 8 six-bit scales and 8 six-bit mins per block into ggml's 12-byte Q4_K/Q5_K layout.

    Bytes 0-3 hold sc[0..3] in their low 6 bits and bits 4-5 of sc[4..7] on
    top; bytes 4-7 do the same for the mins; bytes 8-11 hold the low nibbles
    of sc[4..7] (low half) and mn[4..7] (high half).
    """
    sc = sc.astype(np.uint8)
    mn = mn.astype(np.uint8)
    out = np.empty((sc.shape[0], 12), dtype=np.uint8)
    out[:, 0:4] = (sc[:, 0:4] & 0x3F) | ((sc[:, 4:8] >> 4) << 6)
    out[:, 4:8] = (mn[:, 0:4] & 0x3F) | ((mn[:, 4:8] >> 4) << 6)
    out[:, 8:12] = (sc[:, 4:8] & 0x0F) | ((mn[:, 4:8] & 0x0F) << 4)
    return out


def random_k_blocks(rng: np.random.Generator, n_blocks: int, qtype: GGMLQuantizationType) -> np.ndarray:
    """Random but valid raw K-quant super-blocks, [n_blocks, type_size] uint8.

    Quant codes are uniform random bytes; scales are positive and chosen per
    block so the dequantized values have std drawn from STD_RANGE and roughly
    zero mean (the min of each sub-block is set near scale * mean code).
    """
    std = rng.uniform(*STD_RANGE, size=n_blocks)
    if qtype == Q.Q6_K:
        # ql[128] qh[64] scales[16] (int8) d (f16); value = d * scale_j * (q - 32), q in 0..63
        scales = rng.integers(16, 128, size=(n_blocks, 16)) * rng.choice([-1, 1], size=(n_blocks, 16))
        code_std = np.sqrt((64 ** 2 - 1) / 12.0)
        d = std / (code_std * np.abs(scales).mean(axis=1))
        parts = [rng.integers(0, 256, size=(n_blocks, 192), dtype=np.uint8),
                 scales.astype(np.int8).view(np.uint8), f16_bytes(d)]
    else:
        # d (f16) dmin (f16) scales[12] [qh[32] for Q5_K] qs[128];
        # value = d * sc_j * q - dmin * m_j with q in 0..15 (Q4_K) or 0..31 (Q5_K)
        levels = 16 if qtype == Q.Q4_K else 32
        sc = rng.integers(32, 64, size=(n_blocks, 8))
        mn = np.clip(sc + rng.integers(-3, 4, size=(n_blocks, 8)), 0, 63)
        code_std = np.sqrt((levels ** 2 - 1) / 12.0)
        d = std / (code_std * sc.mean(axis=1))
        dmin = d * (levels - 1) / 2.0
        n_code_bytes = 128 if qtype == Q.Q4_K else 160
        parts = [f16_bytes(d), f16_bytes(dmin), pack_k_scales(sc, mn),
                 rng.integers(0, 256, size=(n_blocks, n_code_bytes), dtype=np.uint8)]
    blocks = np.concatenate(parts, axis=1)
    assert blocks.shape[1] == GGML_QUANT_SIZES[qtype][1], (qtype.name, blocks.shape)
    return blocks


def make_matrix(rng: np.random.Generator, rows: int, cols: int, qtype: GGMLQuantizationType) -> np.ndarray:
    """Random [rows, cols] weight encoded as `qtype`.

    Returns float32/float16 data for F32/F16, otherwise uint8 bytes of numpy
    shape [rows, cols / block_size * type_size] (what GGUFWriter.add_tensor
    expects together with raw_dtype).
    """
    block_size, type_size = GGML_QUANT_SIZES[qtype]
    if cols % block_size:
        raise ValueError(f"{qtype.name} needs the input dim ({cols}) to be a multiple of {block_size}")
    if qtype in RAW_BLOCKS:
        blocks = random_k_blocks(rng, rows * cols // block_size, qtype)
        return blocks.reshape(rows, cols // block_size * type_size)
    weights = rng.standard_normal((rows, cols), dtype=np.float32)
    weights *= np.float32(rng.uniform(*STD_RANGE))
    if qtype == Q.F32:
        return weights
    return quantize(weights, qtype)


def fits(qtype: GGMLQuantizationType, cols: int) -> bool:
    """Whether a matrix with `cols` inputs can be stored as `qtype`."""
    return cols % GGML_QUANT_SIZES[qtype][0] == 0


class TypePicker:
    """Chooses the storage type of each 2-D weight: one fixed type, or a cycle (`mix`)."""

    def __init__(self, quant: str, layers: int = 0):
        """`quant` is one of QUANT_TYPES, 'mix' or 'Q4_K_M'."""
        self.mix = quant == "mix"
        self.q4_k_m = quant == "Q4_K_M"
        self.fixed = None if self.mix or self.q4_k_m else Q[quant]
        self.layers = layers
        self.counter = 0

    def q4_k_m_type(self, name: str) -> GGMLQuantizationType:
        """llama.cpp's Q4_K_M recipe: Q6_K for the output and for attn_v / ffn_down in the
        first and last eighth of the layers and every third layer between, Q4_K elsewhere."""
        if name == "output.weight":
            return Q.Q6_K
        if name.endswith(("attn_v.weight", "ffn_down.weight")):
            i, n = int(name.split(".")[1]), self.layers
            more_bits = i < n // 8 or i >= 7 * n // 8 or (i - n // 8) % 3 == 2
            return Q.Q6_K if more_bits else Q.Q4_K
        return Q.Q4_K

    def next(self, name: str, cols: int) -> GGMLQuantizationType:
        """Type for the next matrix `name` with `cols` inputs.

        In mix mode tensor i gets QUANT_TYPES[i % len], moving on to the next
        type in the cycle when the block size does not divide `cols`.
        """
        if self.q4_k_m:
            qtype = self.q4_k_m_type(name)
            if not fits(qtype, cols):
                raise SystemExit(f"{name}: Q4_K_M needs input dims that are multiples of 256")
            return qtype
        if not self.mix:
            if not fits(self.fixed, cols):
                raise SystemExit(f"{name}: input dim {cols} is not a multiple of the "
                                 f"{self.fixed.name} block size {GGML_QUANT_SIZES[self.fixed][0]}")
            return self.fixed
        start = self.counter
        self.counter += 1
        for offset in range(len(QUANT_TYPES)):
            qtype = Q[QUANT_TYPES[(start + offset) % len(QUANT_TYPES)]]
            if fits(qtype, cols):
                return qtype
        raise SystemExit(f"{name}: no type fits input dim {cols}")


def add_matrix(writer: GGUFWriter, rng: np.random.Generator, picker: TypePicker,
               name: str, rows: int, cols: int) -> None:
    """Add a [rows (out), cols (in)] weight matrix; GGUF records it as ne = [cols, rows]."""
    qtype = picker.next(name, cols)
    data = make_matrix(rng, rows, cols, qtype)
    if data.dtype == np.uint8:
        # Byte-shaped data: the writer derives the element shape from raw_dtype.
        writer.add_tensor(name, data, raw_dtype=qtype)
    else:
        writer.add_tensor(name, data)


def add_vector(writer: GGUFWriter, rng: np.random.Generator, name: str, n: int,
               mean: float, std: float) -> None:
    """Add an F32 1-D tensor (norm weight or bias) drawn from N(mean, std)."""
    writer.add_tensor(name, (mean + std * rng.standard_normal(n)).astype(np.float32))


def llama3_rope_factors(cfg: Config) -> np.ndarray:
    """Llama 3's RoPE factors [head_dim / 2], one divisor of each pair's frequency: 1 for
    wavelengths under original/high, `factor` over original/low, a smooth blend between."""
    factor, low, high, original = cfg.llama3_rope
    dim = cfg.head_dim
    inv_freq = cfg.rope_base ** (-np.arange(0, dim, 2, dtype=np.float64) / dim)
    wavelength = 2 * np.pi / inv_freq
    smooth = (original / wavelength - low) / (high - low)
    blended = 1.0 / ((1 - smooth) / factor + smooth)
    factors = np.where(wavelength < original / high, 1.0,
                       np.where(wavelength > original / low, factor, blended))
    return factors.astype(np.float32)


def add_weights(writer: GGUFWriter, cfg: Config, rng: np.random.Generator, quant: str) -> None:
    """Add every model tensor, in a fixed order so the output is deterministic per seed."""
    picker = TypePicker(quant, cfg.layers)
    q_dim, kv_dim = cfg.heads * cfg.head_dim, cfg.kv_heads * cfg.head_dim
    add_matrix(writer, rng, picker, "token_embd.weight", cfg.vocab, cfg.hidden)
    if cfg.llama3_rope is not None:
        writer.add_tensor("rope_freqs.weight", llama3_rope_factors(cfg))
    for layer in range(cfg.layers):
        p = f"blk.{layer}"
        add_vector(writer, rng, f"{p}.attn_norm.weight", cfg.hidden, 1.0, 0.1)
        if cfg.arch == "phi3":  # one fused projection, rows Q then K then V
            add_matrix(writer, rng, picker, f"{p}.attn_qkv.weight", q_dim + 2 * kv_dim, cfg.hidden)
        else:
            for proj, out_dim in (("attn_q", q_dim), ("attn_k", kv_dim), ("attn_v", kv_dim)):
                add_matrix(writer, rng, picker, f"{p}.{proj}.weight", out_dim, cfg.hidden)
                if cfg.arch == "qwen2":
                    add_vector(writer, rng, f"{p}.{proj}.bias", out_dim, 0.0, 0.05)
        if cfg.arch in ("gemma3", "qwen3"):  # norm weights around 1 (GGUF Gemma holds its 1 + w)
            add_vector(writer, rng, f"{p}.attn_q_norm.weight", cfg.head_dim, 1.0, 0.1)
            add_vector(writer, rng, f"{p}.attn_k_norm.weight", cfg.head_dim, 1.0, 0.1)
        add_matrix(writer, rng, picker, f"{p}.attn_output.weight", cfg.hidden, q_dim)
        if cfg.arch == "gemma3":
            add_vector(writer, rng, f"{p}.post_attention_norm.weight", cfg.hidden, 1.0, 0.1)
        add_vector(writer, rng, f"{p}.ffn_norm.weight", cfg.hidden, 1.0, 0.1)
        if cfg.arch == "phi3":  # gate and up fused: rows 0..F gate, F..2F up
            add_matrix(writer, rng, picker, f"{p}.ffn_up.weight", 2 * cfg.ffn, cfg.hidden)
        else:
            add_matrix(writer, rng, picker, f"{p}.ffn_gate.weight", cfg.ffn, cfg.hidden)
            add_matrix(writer, rng, picker, f"{p}.ffn_up.weight", cfg.ffn, cfg.hidden)
        add_matrix(writer, rng, picker, f"{p}.ffn_down.weight", cfg.hidden, cfg.ffn)
        if cfg.arch == "gemma3":
            add_vector(writer, rng, f"{p}.post_ffw_norm.weight", cfg.hidden, 1.0, 0.1)
    add_vector(writer, rng, "output_norm.weight", cfg.hidden, 1.0, 0.1)
    if not cfg.tied:
        add_matrix(writer, rng, picker, "output.weight", cfg.vocab, cfg.hidden)


# ---------------------------------------------------------------------------
# Tokenizers
# ---------------------------------------------------------------------------

def unique_take(candidates, count: int) -> list[str]:
    """First `count` distinct strings from the iterable `candidates`."""
    seen: set[str] = set()
    out: list[str] = []
    for piece in candidates:
        if piece not in seen:
            seen.add(piece)
            out.append(piece)
            if len(out) == count:
                return out
    raise SystemExit(f"could not generate {count} distinct vocabulary pieces")


def letter_words():
    """Lowercase letter strings of length 2, 3, ... in lexicographic order (endless)."""
    for length in itertools.count(2):
        for combo in itertools.product(string.ascii_lowercase, repeat=length):
            yield "".join(combo)


def spm_candidates():
    """Prefix-closed SentencePiece pieces: '▁', single chars, '▁x', common words, letter n-grams."""
    yield SPM_SPACE
    yield from string.ascii_lowercase + string.ascii_uppercase + string.digits
    yield from ".,!?'\"-:;()<>|/"
    for c in string.ascii_letters:
        yield SPM_SPACE + c
    for word in COMMON_WORDS:
        for k in range(2, len(word) + 1):
            yield SPM_SPACE + word[:k]
    for word in letter_words():
        yield word
        yield SPM_SPACE + word


def llama_tokenizer(vocab: int) -> dict:
    """SentencePiece-style vocabulary: <unk>, <s>, </s>, 256 byte tokens, then pieces."""
    n_pieces = vocab - 3 - 256
    if n_pieces < 1:
        raise SystemExit("--vocab must be at least 260 for the llama tokenizer")
    pieces = unique_take(spm_candidates(), n_pieces)
    tokens = ["<unk>", "<s>", "</s>"] + [f"<0x{b:02X}>" for b in range(256)] + pieces
    types = [2, 3, 3] + [6] * 256 + [1] * n_pieces
    scores = [0.0] * (3 + 256) + [-float(i) for i in range(n_pieces)]
    return dict(model="llama", tokens=tokens, types=types, scores=scores, merges=None,
                bos=1, eos=2, unk=0, add_bos=True)


def gpt2_byte_chars() -> list[str]:
    """GPT-2 byte-level alphabet: the character standing for byte b, for b = 0..255.

    Printable bytes ('!'..'~', 0xA1..0xAC, 0xAE..0xFF) stand for themselves;
    the rest map, in byte order, to U+0100, U+0101, ...
    """
    printable = set(range(ord("!"), ord("~") + 1)) | set(range(0xA1, 0xAD)) | set(range(0xAE, 0x100))
    chars, extra = [], 0
    for b in range(256):
        if b in printable:
            chars.append(chr(b))
        else:
            chars.append(chr(0x100 + extra))
            extra += 1
    return chars


def bpe_candidates():
    """(left, right) merge pairs whose results form a prefix-closed set of byte-level pieces."""
    for c in string.ascii_letters:
        yield GPT2_SPACE, c
    for word in COMMON_WORDS:
        for k in range(2, len(word) + 1):
            yield GPT2_SPACE + word[:k - 1], word[k - 1]
    for word in letter_words():
        yield word[:-1], word[-1]
        yield GPT2_SPACE + word[:-1], word[-1]


def qwen2_tokenizer(vocab: int) -> dict:
    """GPT-2 byte-level BPE vocabulary: 256 byte chars (id b = byte b), merged pieces, 3 specials."""
    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    n_merged = vocab - 256 - len(specials)
    if n_merged < 1:
        raise SystemExit("--vocab must be at least 260 for the qwen2 tokenizer")
    tokens = gpt2_byte_chars()
    known = set(tokens)
    merges = []
    for left, right in bpe_candidates():
        piece = left + right
        if piece in known:
            continue
        assert left in known and right in known, (left, right)
        known.add(piece)
        tokens.append(piece)
        merges.append(f"{left} {right}")
        if len(merges) == n_merged:
            break
    first_special = len(tokens)
    tokens += specials
    types = [1] * first_special + [3] * len(specials)
    return dict(model="gpt2", pre="qwen2", tokens=tokens, types=types, scores=None, merges=merges,
                bos=first_special, eos=first_special + 2, pad=first_special, add_bos=False)


def add_tokenizer(writer: GGUFWriter, tok: dict, template: str) -> None:
    """Write the tokenizer.* metadata for a vocabulary built above."""
    writer.add_string("tokenizer.ggml.model", tok["model"])
    if "pre" in tok:
        writer.add_string("tokenizer.ggml.pre", tok["pre"])
    writer.add_array("tokenizer.ggml.tokens", tok["tokens"])
    if tok["scores"] is not None:
        writer.add_array("tokenizer.ggml.scores", [float(s) for s in tok["scores"]])
    writer.add_array("tokenizer.ggml.token_type", [int(t) for t in tok["types"]])
    if tok["merges"] is not None:
        writer.add_array("tokenizer.ggml.merges", tok["merges"])
    writer.add_uint32("tokenizer.ggml.bos_token_id", tok["bos"])
    writer.add_uint32("tokenizer.ggml.eos_token_id", tok["eos"])
    if "unk" in tok:
        writer.add_uint32("tokenizer.ggml.unknown_token_id", tok["unk"])
    if "pad" in tok:
        writer.add_uint32("tokenizer.ggml.padding_token_id", tok["pad"])
    writer.add_bool("tokenizer.ggml.add_bos_token", tok["add_bos"])
    if "add_space_prefix" in tok:
        writer.add_bool("tokenizer.ggml.add_space_prefix", tok["add_space_prefix"])
    if template is not None:
        writer.add_string("tokenizer.chat_template", template)


# ---------------------------------------------------------------------------
# Model file
# ---------------------------------------------------------------------------

def add_hparams(writer: GGUFWriter, cfg: Config, quant: str) -> None:
    """Write general.* and {arch}.* hyperparameter metadata."""
    a = cfg.arch
    # llama.cpp sets token attributes by model name, and for names containing "phi3" expects
    # Phi-3's special tokens, which the synthetic vocabulary lacks.
    name = "phi-three" if a == "phi3" else a
    writer.add_string("general.name", f"synthetic-{name}-{quant.lower()}")
    writer.add_uint32("general.quantization_version", 2)
    if quant in FILE_TYPES:
        writer.add_uint32("general.file_type", int(FILE_TYPES[quant]))
    writer.add_uint32(f"{a}.context_length", cfg.ctx)
    writer.add_uint32(f"{a}.embedding_length", cfg.hidden)
    writer.add_uint32(f"{a}.block_count", cfg.layers)
    writer.add_uint32(f"{a}.feed_forward_length", cfg.ffn)
    writer.add_uint32(f"{a}.attention.head_count", cfg.heads)
    writer.add_uint32(f"{a}.attention.head_count_kv", cfg.kv_heads)
    writer.add_uint32(f"{a}.rope.dimension_count", cfg.head_dim)
    writer.add_float32(f"{a}.rope.freq_base", cfg.rope_base)
    writer.add_float32(f"{a}.attention.layer_norm_rms_epsilon", cfg.eps)
    writer.add_uint32(f"{a}.vocab_size", cfg.vocab)
    if cfg.yarn is not None:
        writer.add_string(f"{a}.rope.scaling.type", "yarn")
        writer.add_float32(f"{a}.rope.scaling.factor", cfg.yarn[0])
        writer.add_uint32(f"{a}.rope.scaling.original_context_length", cfg.yarn[1])
    if cfg.rope_scale is not None and a != "gemma3":
        writer.add_string(f"{a}.rope.scaling.type", "linear")
        writer.add_float32(f"{a}.rope.scaling.factor", cfg.rope_scale)
    if a == "gemma3":
        writer.add_uint32(f"{a}.attention.key_length", cfg.head_dim)
        writer.add_uint32(f"{a}.attention.value_length", cfg.head_dim)
        writer.add_uint32(f"{a}.attention.sliding_window", cfg.sliding_window)
        if cfg.sliding_pattern is not None:
            writer.add_uint32(f"{a}.attention.sliding_window_pattern", cfg.sliding_pattern)
        if cfg.rope_base_swa is not None:
            writer.add_float32(f"{a}.rope.freq_base_swa", cfg.rope_base_swa)
        if cfg.rope_scale is not None:
            writer.add_string(f"{a}.rope.scaling.type", "linear")
            writer.add_float32(f"{a}.rope.scaling.factor", cfg.rope_scale)
        if cfg.logit_softcap is not None:
            writer.add_float32(f"{a}.final_logit_softcapping", cfg.logit_softcap)


def validate(cfg: Config) -> None:
    """Reject shapes the model (or the llama tokenizer layout) cannot have."""
    if (cfg.hidden % cfg.heads and not cfg.head_dim_override) or cfg.head_dim % 2:
        raise SystemExit("--hidden must be divisible by --heads (or --head-dim given), with an even head dim")
    if cfg.arch == "gemma3" and (not cfg.tied or cfg.sliding_window < 1):
        raise SystemExit("gemma3 models are tied and need --sliding-window >= 1")
    if cfg.heads % cfg.kv_heads:
        raise SystemExit("--heads must be a multiple of --kv-heads")
    if min(cfg.layers, cfg.ffn, cfg.vocab, cfg.ctx) < 1:
        raise SystemExit("sizes must be positive")


KV_TYPES = {
    "u32": (GGUFValueType.UINT32, int), "u64": (GGUFValueType.UINT64, int),
    "i32": (GGUFValueType.INT32, int), "f32": (GGUFValueType.FLOAT32, float),
    "f64": (GGUFValueType.FLOAT64, float), "str": (GGUFValueType.STRING, str),
}


def parse_kv(spec: str) -> tuple[str, object, GGUFValueType]:
    """`KEY=TYPE:VALUE` (TYPE one of KV_TYPES) as a metadata entry."""
    key, _, typed = spec.partition("=")
    kind, _, value = typed.partition(":")
    if not key or kind not in KV_TYPES:
        raise SystemExit(f"--kv {spec!r}: expected KEY=TYPE:VALUE with TYPE in {sorted(KV_TYPES)}")
    vtype, convert = KV_TYPES[kind]
    return key, convert(value), vtype


def write_model(path: str, cfg: Config, quant: str, seed: int, template: str,
                kvs: list[str] = (), extra_tensors: list[str] = ()) -> None:
    """Build and write the whole GGUF file; `kvs` (KEY=TYPE:VALUE) add or overwrite metadata
    after the usual keys, `extra_tensors` (NAME:LEN) add F32 vectors the model does not use."""
    validate(cfg)
    rng = np.random.default_rng(seed)
    gpt2_vocab = cfg.arch in ("qwen2", "qwen3")
    tok = qwen2_tokenizer(cfg.vocab) if gpt2_vocab else llama_tokenizer(cfg.vocab)
    if cfg.arch == "gemma3":
        tok["add_space_prefix"] = False
    assert len(tok["tokens"]) == cfg.vocab
    writer = GGUFWriter(path, cfg.arch)
    add_hparams(writer, cfg, quant)
    add_tokenizer(writer, tok, {"zephyr": ZEPHYR_TEMPLATE, "chatml": CHATML_TEMPLATE}.get(template))
    add_weights(writer, cfg, rng, quant)
    for spec in kvs:
        writer.add_key_value(*parse_kv(spec))
    for spec in extra_tensors:
        name, _, length = spec.partition(":")
        writer.add_tensor(name, np.ones(int(length), dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def check_roundtrip(path: str, cfg: Config) -> str:
    """Re-open `path` with GGUFReader and check counts; return a one-line summary."""
    reader = GGUFReader(path)
    per_layer = 9 + {"qwen2": 3, "gemma3": 4, "qwen3": 2, "phi3": -3}.get(cfg.arch, 0)
    expected = 2 + cfg.layers * per_layer + (0 if cfg.tied else 1) + (cfg.llama3_rope is not None)
    if len(reader.tensors) != expected:
        raise SystemExit(f"round-trip: {len(reader.tensors)} tensors, expected {expected}")
    if len(reader.fields["tokenizer.ggml.tokens"].data) != cfg.vocab:
        raise SystemExit("round-trip: vocabulary size mismatch")
    types = sorted({t.tensor_type.name for t in reader.tensors})
    return f"wrote {path}: {len(reader.tensors)} tensors, types {','.join(types)}"


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("out", help="output .gguf path")
    ap.add_argument("--arch", choices=["llama", "qwen2", "gemma3", "qwen3", "phi3"], default="llama",
                    help="gemma3 implies --tied and writes no chat template")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--quant", choices=QUANT_TYPES + ["mix", "Q4_K_M"], default="F16",
                    help="type of the 2-D weight matrices (norms and biases stay F32)")
    ap.add_argument("--layers", type=int, default=2)
    ap.add_argument("--hidden", type=int, default=256)
    ap.add_argument("--heads", type=int, default=4)
    ap.add_argument("--kv-heads", type=int, default=2)
    ap.add_argument("--ffn", type=int, default=512)
    ap.add_argument("--vocab", type=int, default=512)
    ap.add_argument("--ctx", type=int, default=256)
    ap.add_argument("--rope-base", type=float, default=None,
                    help="rope.freq_base (default 10000 for llama, 1000000 for qwen2)")
    ap.add_argument("--eps", type=float, default=None,
                    help="RMSNorm epsilon (default 1e-5 for llama, 1e-6 for qwen2)")
    ap.add_argument("--tied", action="store_true", help="omit output.weight (tied to token_embd)")
    ap.add_argument("--head-dim", type=int, default=0, help="gemma3: per-head dim (default hidden / heads)")
    ap.add_argument("--sliding-window", type=int, default=4, help="gemma3: attention.sliding_window")
    ap.add_argument("--sliding-pattern", type=int, default=None,
                    help="gemma3: write attention.sliding_window_pattern (readers default to 6)")
    ap.add_argument("--rope-base-swa", type=float, default=None,
                    help="gemma3: write rope.freq_base_swa (readers default to 10000)")
    ap.add_argument("--rope-scale", type=float, default=None,
                    help="write linear rope.scaling.factor (positions divided by it; gemma3: global layers only)")
    ap.add_argument("--yarn", default=None, metavar="FACTOR:ORIGINAL_CTX",
                    help="write rope.scaling.type yarn with this factor and original context")
    ap.add_argument("--llama3-rope", default=None, metavar="FACTOR:LOW:HIGH:ORIGINAL_CTX",
                    help="write Llama 3 RoPE factors as rope_freqs.weight (Llama 3.1: 8:1:4:8192)")
    ap.add_argument("--logit-softcap", type=float, default=None,
                    help="gemma3: write final_logit_softcapping")
    ap.add_argument("--chat-template", choices=["zephyr", "chatml"], default=None,
                    help="default: zephyr for llama, chatml for qwen2")
    ap.add_argument("--tinyllama-shape", action="store_true",
                    help="22 layers, hidden 2048, 32/4 heads, ffn 5632, vocab 32000, ctx 2048")
    ap.add_argument("--no-check", action="store_true", help="skip re-reading the written file")
    ap.add_argument("--kv", action="append", default=[], metavar="KEY=TYPE:VALUE",
                    help="add or overwrite a metadata key (TYPE: u32 u64 i32 f32 f64 str); repeatable")
    ap.add_argument("--extra-tensor", action="append", default=[], metavar="NAME:LEN",
                    help="add an F32 vector the model does not read; repeatable")
    args = ap.parse_args(argv)

    shape = dict(layers=args.layers, hidden=args.hidden, heads=args.heads, kv_heads=args.kv_heads,
                 ffn=args.ffn, vocab=args.vocab, ctx=args.ctx,
                 rope_base=args.rope_base if args.rope_base is not None
                 else (10000.0 if args.arch in ("llama", "phi3") else 1000000.0),
                 eps=args.eps if args.eps is not None else (1e-5 if args.arch in ("llama", "phi3") else 1e-6))
    if args.tinyllama_shape:
        shape.update(TINYLLAMA_SHAPE)
    gemma = args.arch == "gemma3"
    if gemma:
        shape.update(head_dim_override=args.head_dim, sliding_window=args.sliding_window,
                     sliding_pattern=args.sliding_pattern, rope_base_swa=args.rope_base_swa,
                     rope_scale=args.rope_scale, logit_softcap=args.logit_softcap)
    elif any(v is not None for v in (args.sliding_pattern, args.rope_base_swa, args.logit_softcap)):
        raise SystemExit("--sliding-pattern, --rope-base-swa, --logit-softcap are gemma3 options")
    else:
        shape.update(rope_scale=args.rope_scale)
    if args.yarn:
        factor, original = args.yarn.split(":")
        shape.update(yarn=(float(factor), int(original)))
    if args.llama3_rope:
        factor, low, high, original = args.llama3_rope.split(":")
        shape.update(llama3_rope=(float(factor), float(low), float(high), int(original)))
    cfg = Config(arch=args.arch, tied=args.tied or gemma, **shape)
    template = args.chat_template or {"llama": "zephyr", "qwen2": "chatml", "qwen3": "chatml",
                                      "phi3": "zephyr"}.get(args.arch)
    write_model(args.out, cfg, args.quant, args.seed, template, args.kv, args.extra_tensor)
    check = args.no_check or args.kv or args.extra_tensor
    print(f"wrote {args.out}" if check else check_roundtrip(args.out, cfg))
    return 0


if __name__ == "__main__":
    sys.exit(main())

#!/usr/bin/env python3
"""Write the committed seed corpora of the fuzz targets into fuzz/corpus/<target>/.

Run from the repository root after a test run has installed the reference packages into
target/pydeps (the GGUF seeds come from tests/reference/make_synthetic.py):

    PYTHONPATH=target/pydeps python3 fuzz/make_seeds.py

Seeds are small valid inputs (plus a few near-misses) that show the fuzzer each format's
structure; every file is also run by tests/fuzz_corpora.rs on stable.
"""

from __future__ import annotations

import json
import pathlib
import struct
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parent.parent
CORPUS = ROOT / "fuzz" / "corpus"


def write(target: str, name: str, data: bytes) -> None:
    path = CORPUS / target / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)


def gguf_seeds() -> None:
    shape = "--layers 1 --hidden 32 --heads 2 --kv-heads 1 --ffn 32 --vocab 260 --ctx 32 --tied"
    for arch in ["llama", "qwen2", "gemma3"]:
        out = CORPUS / "gguf" / f"{arch}-q4_0.gguf"
        out.parent.mkdir(parents=True, exist_ok=True)
        args = [sys.executable, str(ROOT / "tests/reference/make_synthetic.py"), str(out),
                "--arch", arch, "--quant", "Q4_0", *shape.split()]
        subprocess.run(args, check=True, stdout=subprocess.DEVNULL)


def safetensors_file(tensors: dict[str, tuple[str, list[int], bytes]], metadata=None) -> bytes:
    header, data = {}, b""
    for name, (dtype, shape, raw) in tensors.items():
        header[name] = {"dtype": dtype, "shape": shape, "data_offsets": [len(data), len(data) + len(raw)]}
        data += raw
    if metadata is not None:
        header["__metadata__"] = metadata
    text = json.dumps(header).encode()
    text += b" " * (-len(text) % 8)
    return struct.pack("<Q", len(text)) + text + data


def safetensors_seeds() -> None:
    f32 = struct.pack("<4f", 1.0, -2.0, 0.5, 3.0)
    write("safetensors", "one-f32.safetensors", safetensors_file({"w": ("F32", [2, 2], f32)}, {"format": "pt"}))
    write("safetensors", "mixed.safetensors", safetensors_file({
        "model.embed_tokens.weight": ("BF16", [2, 4], bytes(16)),
        "model.norm.weight": ("F16", [4], bytes(8)),
        "lm_head.weight": ("F32", [1, 4], f32),
    }))
    write("safetensors", "scalar-and-empty.safetensors", safetensors_file({
        "s": ("F32", [], f32[:4]), "e": ("F32", [0, 3], b""),
    }))


def snapshot_without_checksum(layers: int, kv_heads: int, head_dim: int, length: int,
                              dtype: int = 0) -> bytes:
    """The KV snapshot format of src/backend/snapshot.rs (dtype 0 = float32, 1 = float16), less
    its trailing SHA-256 (the harness appends a correct one)."""
    head = b"MLXE-KV\0" + struct.pack("<II", 1, dtype) + bytes(32)
    head += struct.pack("<IIIIQ", layers, kv_heads, head_dim, 0, length)
    floats = 2 * layers * kv_heads * head_dim * length
    code = "e" if dtype == 1 else "f"
    return head + struct.pack(f"<{floats}{code}", *[(i % 7) * 0.25 - 0.5 for i in range(floats)])


def kv_snapshot_seeds() -> None:
    write("kv_snapshot", "len3", snapshot_without_checksum(2, 1, 4, 3))
    write("kv_snapshot", "len0", snapshot_without_checksum(2, 1, 4, 0))
    write("kv_snapshot", "other-shape", snapshot_without_checksum(1, 2, 2, 2))
    write("kv_snapshot", "len3-f16", snapshot_without_checksum(2, 1, 4, 3, dtype=1))


def tokenizer_json_seeds() -> None:
    byte_level = {
        "version": "1.0",
        "added_tokens": [{"id": 5, "content": "<|endoftext|>", "single_word": False, "lstrip": False,
                          "rstrip": False, "normalized": False, "special": True}],
        "normalizer": None,
        "pre_tokenizer": {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True,
                          "use_regex": True},
        "post_processor": {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": False,
                           "use_regex": True},
        "decoder": {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": True, "use_regex": True},
        "model": {"type": "BPE", "dropout": None, "unk_token": None, "continuing_subword_prefix": None,
                  "end_of_word_suffix": None, "fuse_unk": False, "byte_fallback": False,
                  "vocab": {"H": 0, "e": 1, "l": 2, "o": 3, "He": 4, "<|endoftext|>": 5, "ll": 6},
                  "merges": ["H e", "l l"]},
    }
    write("tokenizer_json", "byte-level-bpe.json", json.dumps(byte_level).encode())
    word_level = {
        "version": "1.0", "added_tokens": [], "normalizer": {"type": "Lowercase"},
        "pre_tokenizer": {"type": "Whitespace"}, "post_processor": None, "decoder": None,
        "model": {"type": "WordLevel", "vocab": {"<unk>": 0, "hello": 1, "world": 2}, "unk_token": "<unk>"},
    }
    write("tokenizer_json", "word-level.json", json.dumps(word_level).encode())
    unigram = {
        "version": "1.0", "added_tokens": [], "normalizer": None,
        "pre_tokenizer": {"type": "Metaspace", "replacement": "\u2581", "prepend_scheme": "always", "split": True},
        "post_processor": None,
        "decoder": {"type": "Metaspace", "replacement": "\u2581", "prepend_scheme": "always", "split": True},
        "model": {"type": "Unigram", "unk_id": 0, "byte_fallback": True,
                  "vocab": [["<unk>", 0.0], ["\u2581", -1.0], ["\u2581Hello", -2.0], ["o", -3.0],
                            ["<0x48>", -5.0], ["<0x65>", -5.0]]},
    }
    write("tokenizer_json", "unigram.json", json.dumps(unigram).encode())


def chat_template_seeds() -> None:
    messages = [(0, "You are terse."), (1, "Hello <s> {{ 1 }}"), (2, "Hi."), (3, '{"x": 1}'), (1, "Bye")]
    tail = b"".join(b"\0" + bytes([role]) + text.encode() for role, text in messages)
    for fixture in sorted((ROOT / "tests/data").glob("*_chat_template.jinja")):
        name = fixture.name.removesuffix("_chat_template.jinja")
        write("chat_template", f"{name}.bin", fixture.read_bytes() + tail)
    hostile = [
        "{% for i in range(99) %}{% for j in range(99) %}{{ i }}{% endfor %}{% endfor %}",
        "{% macro f(n) %}{{ f(n + 1) }}{% endmacro %}{{ f(0) }}",
        "{{ 'x' * 1000 }}{{ messages | tojson }}{{ '{:>5}'.format('y') }}",
        "{% set ns = namespace(a=[]) %}{% for m in messages %}{% set ns.a = ns.a + [m.content] %}{% endfor %}{{ ns.a | join(',') }}",
        "{{ raise_exception('no') }}",
    ]
    for i, source in enumerate(hostile):
        write("chat_template", f"hostile-{i}.bin", source.encode() + tail)


def request_body_seeds() -> None:
    bodies = {
        "chat.json": {"model": "m", "messages": [{"role": "system", "content": "Be brief."},
                                                 {"role": "user", "content": "Hi"}],
                      "max_tokens": 8, "temperature": 0.7, "top_p": 0.9, "top_k": 40, "min_p": 0.05,
                      "seed": 1, "stop": ["\n", "END"], "stream": True,
                      "stream_options": {"include_usage": True}, "presence_penalty": 0.5,
                      "frequency_penalty": 0.1, "repetition_penalty": 1.1},
        "chat-parts.json": {"messages": [{"role": "user", "content": [{"type": "text", "text": "a"}]}],
                            "max_completion_tokens": 4, "logprobs": False, "n": 1},
        "completion-text.json": {"prompt": "Once upon", "max_tokens": 3, "stop": "."},
        "completion-ids.json": {"prompt": [1, 2, 3], "max_tokens": 2, "temperature": 0},
        "refused.json": {"prompt": "x", "logit_bias": {"1": 2}, "n": 2, "tools": []},
    }
    for name, body in bodies.items():
        write("request_body", name, json.dumps(body).encode())
    write("request_body", "not-an-object.json", b"[1, 2, 3]")
    schema = {"type": "object", "properties": {"a": {"type": "integer"}}, "required": ["a"]}
    structured = {
        "chat-json-schema.json": {"messages": [{"role": "user", "content": "x"}], "response_format":
                                  {"type": "json_schema", "json_schema": {"name": "s", "schema": schema,
                                                                          "strict": True}}},
        "chat-json-object.json": {"messages": [{"role": "user", "content": "x"}],
                                  "response_format": {"type": "json_object"}},
        "chat-tools.json": {"messages": [{"role": "user", "content": "x"}], "tool_choice": "required",
                            "tools": [{"type": "function", "function": {"name": "f", "parameters": schema}}]},
    }
    for name, body in structured.items():
        write("request_body", name, json.dumps(body).encode())


def grammar_seeds() -> None:
    """A kind byte (0 JSON Schema, 1 regex, 2 Lark: GRAMMAR_KINDS) and the grammar's text."""
    schema = {"type": "object", "properties": {"name": {"type": "string", "maxLength": 8},
                                               "n": {"type": "integer", "minimum": 0, "maximum": 99},
                                               "tags": {"type": "array", "items": {"enum": ["a", "b"]},
                                                        "maxItems": 3}},
              "required": ["name"], "additionalProperties": False}
    seeds = {
        "schema-object.bin": b"\x00" + json.dumps(schema).encode(),
        "schema-true.bin": b"\x00true",
        "schema-bad-type.bin": b"\x00" + json.dumps({"type": "nope"}).encode(),
        "regex-digits.bin": b"\x01[0-9]{1,4}(\\.[0-9]+)?",
        "regex-bad.bin": b"\x01(a|",
        "lark-arith.bin": b"\x02start: expr\nexpr: term ((\"+\"|\"-\") term)*\nterm: NUMBER | \"(\" expr \")\"\nNUMBER: /[0-9]{1,3}/\n",
        "lark-json.bin": b"\x02start: %json {\"type\": \"array\", \"maxItems\": 2}\n",
        "lark-bad.bin": b"\x02start: missing_rule\n",
    }
    for name, data in seeds.items():
        write("grammar", name, data)


if __name__ == "__main__":
    gguf_seeds()
    safetensors_seeds()
    kv_snapshot_seeds()
    tokenizer_json_seeds()
    chat_template_seeds()
    request_body_seeds()
    grammar_seeds()

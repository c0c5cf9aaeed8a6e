#!/usr/bin/env python3
"""Reference token ids for the Qwen2 vocabulary, from an implementation independent of ours.

Reads the vocabulary (tokens, token types, merges, special ids) from a GGUF file with the `gguf`
package, writes it as vocab.json / merges.txt, and tokenizes every string with transformers'
SLOW, pure-Python `Qwen2Tokenizer` (transformers < 5; v5 dropped the slow path).

usage: tokenize_qwen.py MODEL.gguf STRINGS.json OUT_DIR

Writes to OUT_DIR:
  vocab.json, merges.txt  the slow tokenizer's files
  qwen_vocab.json         the GGUF tokenizer metadata, for building our `Vocab` without a loader
  qwen_ids.json           {"ids": [[...] per string], "decoded": [text per string]}
  tokenizer.json          the same vocabulary as a Hugging Face fast-tokenizer file
"""

import json
import os
import sys

CONTROL, USER_DEFINED = 3, 4


def field(reader, key):
    """A GGUF metadata value as a Python value, or None when the key is absent."""
    f = reader.fields.get(key)
    return None if f is None else f.contents()


def read_vocab(path):
    """The `tokenizer.ggml.*` metadata of a GGUF file."""
    from gguf import GGUFReader

    r = GGUFReader(path)
    keys = {
        "model": "tokenizer.ggml.model",
        "pre": "tokenizer.ggml.pre",
        "tokens": "tokenizer.ggml.tokens",
        "token_types": "tokenizer.ggml.token_type",
        "merges": "tokenizer.ggml.merges",
        "bos": "tokenizer.ggml.bos_token_id",
        "eos": "tokenizer.ggml.eos_token_id",
        "eot": "tokenizer.ggml.eot_token_id",
        "unk": "tokenizer.ggml.unknown_token_id",
        "pad": "tokenizer.ggml.padding_token_id",
        "add_bos": "tokenizer.ggml.add_bos_token",
        "add_eos": "tokenizer.ggml.add_eos_token",
    }
    return {name: field(r, key) for name, key in keys.items()}


def write_slow_files(vocab, out_dir):
    """vocab.json and merges.txt as the slow tokenizer reads them."""
    with open(os.path.join(out_dir, "vocab.json"), "w", encoding="utf-8") as f:
        json.dump({t: i for i, t in enumerate(vocab["tokens"])}, f, ensure_ascii=False)
    with open(os.path.join(out_dir, "merges.txt"), "w", encoding="utf-8") as f:
        f.write("#version: 0.2\n")
        f.writelines(m + "\n" for m in vocab["merges"])


def whole_tokens(vocab):
    """(piece, is_special) of the GGUF's control and user-defined tokens."""
    return [
        (t, ty == CONTROL)
        for t, ty in zip(vocab["tokens"], vocab["token_types"])
        if ty in (CONTROL, USER_DEFINED)
    ]


def add_whole_tokens(tok, vocab):
    """Makes `tok` match the control and user-defined tokens whole, at their GGUF ids."""
    from transformers import AddedToken

    whole = whole_tokens(vocab)
    special = [AddedToken(t, special=True, normalized=False) for t, s in whole if s]
    plain = [AddedToken(t, special=False, normalized=False) for t, s in whole if not s]
    tok.add_tokens(special, special_tokens=True)
    tok.add_tokens(plain)
    for t, _ in whole:
        assert tok.convert_tokens_to_ids(t) == vocab["tokens"].index(t), t
    return tok


def slow_tokenizer(vocab, out_dir):
    """The slow, pure-Python Qwen2Tokenizer."""
    from transformers.models.qwen2.tokenization_qwen2 import Qwen2Tokenizer
    from transformers.tokenization_utils import PreTrainedTokenizer

    if not issubclass(Qwen2Tokenizer, PreTrainedTokenizer):
        sys.exit("Qwen2Tokenizer is not the slow Python tokenizer: install 'transformers<5'")

    files = (os.path.join(out_dir, "vocab.json"), os.path.join(out_dir, "merges.txt"))
    return add_whole_tokens(Qwen2Tokenizer(*files), vocab)


def write_fast_file(vocab, out_dir):
    """tokenizer.json converted from the slow files by transformers (for `from_file` tests)."""
    from transformers import Qwen2TokenizerFast

    fast = Qwen2TokenizerFast(
        vocab_file=os.path.join(out_dir, "vocab.json"),
        merges_file=os.path.join(out_dir, "merges.txt"),
    )
    add_whole_tokens(fast, vocab).backend_tokenizer.save(os.path.join(out_dir, "tokenizer.json"))


def main():
    if len(sys.argv) != 4:
        sys.exit(__doc__)
    gguf_path, strings_path, out_dir = sys.argv[1:]
    os.makedirs(out_dir, exist_ok=True)
    vocab = read_vocab(gguf_path)
    assert vocab["model"] == "gpt2", vocab["model"]
    with open(strings_path, encoding="utf-8") as f:
        strings = json.load(f)
    write_slow_files(vocab, out_dir)
    tok = slow_tokenizer(vocab, out_dir)
    ids = [tok.encode(s, add_special_tokens=False) for s in strings]
    decoded = [tok.decode(i) for i in ids]
    with open(os.path.join(out_dir, "qwen_ids.json"), "w", encoding="utf-8") as f:
        json.dump({"ids": ids, "decoded": decoded}, f, ensure_ascii=False)
    with open(os.path.join(out_dir, "qwen_vocab.json"), "w", encoding="utf-8") as f:
        json.dump(vocab, f, ensure_ascii=False)
    write_fast_file(vocab, out_dir)
    print(f"tokenized {len(strings)} strings")


if __name__ == "__main__":
    main()

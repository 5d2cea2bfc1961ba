#!/usr/bin/env python3
"""Write a tiny random-weight llama GGUF (~17 MB) for tests and benchmarks.

    tools/make-tiny-gguf.py OUT.gguf [--llama-cpp DIR] [--vocab FILE] [--seed N]

Uses the gguf-py package vendored in a llama.cpp tree (DIR, else $LLAMA_CPP_DIR, else the tree
tools/build-llama.sh unpacks under ${MESHD_CACHE:-~/.cache/meshd}). The tokenizer (tokenizer.ggml.*)
is copied from DIR/models/ggml-vocab-llama-spm.gguf. Needs only numpy (pyyaml is optional).
The output is byte-for-byte reproducible for a given seed; it is written atomically.
"""
from __future__ import annotations

import argparse
import os
import sys
import types
from pathlib import Path

# Model shape. Vocab comes from the vocab file (32000 for llama-spm).
N_LAYER = 4
N_EMBD = 64
N_HEAD = 4
N_HEAD_KV = 4
N_FF = 128
N_CTX = 512
RMS_EPS = 1e-5
ROPE_THETA = 10000.0
NAME = "meshd-tiny"


def default_llama_cpp() -> Path:
    cache = Path(os.environ.get("MESHD_CACHE") or Path.home() / ".cache" / "meshd")
    ver = os.environ.get("LLAMA_CPP_PY_VERSION", "0.3.36")
    return cache / f"llama_cpp_python-{ver}" / "vendor" / "llama.cpp"


def import_gguf(llama_cpp: Path):
    gguf_py = llama_cpp / "gguf-py"
    if not (gguf_py / "gguf" / "__init__.py").is_file():
        sys.exit(f"make-tiny-gguf: no gguf-py under {llama_cpp} (run tools/build-llama.sh --src-only)")
    sys.path.insert(0, str(gguf_py))
    try:
        import yaml  # noqa: F401  (gguf.metadata imports it at load time; we never use it)
    except ImportError:
        sys.modules["yaml"] = types.ModuleType("yaml")
    import gguf
    return gguf


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("out", type=Path)
    ap.add_argument("--llama-cpp", type=Path,
                    default=Path(os.environ["LLAMA_CPP_DIR"]) if os.environ.get("LLAMA_CPP_DIR") else default_llama_cpp())
    ap.add_argument("--vocab", type=Path, help="GGUF to copy tokenizer.ggml.* from")
    ap.add_argument("--seed", type=int, default=1234)
    args = ap.parse_args()

    gguf = import_gguf(args.llama_cpp)
    import numpy as np

    vocab_path = args.vocab or args.llama_cpp / "models" / "ggml-vocab-llama-spm.gguf"
    reader = gguf.GGUFReader(vocab_path)
    tokens = reader.get_field("tokenizer.ggml.tokens")
    if tokens is None:
        sys.exit(f"make-tiny-gguf: {vocab_path} has no tokenizer.ggml.tokens")
    n_vocab = len(tokens.data)

    args.out.parent.mkdir(parents=True, exist_ok=True)
    tmp = args.out.with_name(args.out.name + f".tmp{os.getpid()}")
    w = gguf.GGUFWriter(tmp, "llama")
    w.add_name(NAME)
    w.add_context_length(N_CTX)
    w.add_embedding_length(N_EMBD)
    w.add_block_count(N_LAYER)
    w.add_feed_forward_length(N_FF)
    w.add_head_count(N_HEAD)
    w.add_head_count_kv(N_HEAD_KV)
    w.add_layer_norm_rms_eps(RMS_EPS)
    w.add_rope_dimension_count(N_EMBD // N_HEAD)
    w.add_rope_freq_base(ROPE_THETA)
    w.add_vocab_size(n_vocab)
    w.add_file_type(gguf.LlamaFileType.ALL_F32)

    # Tokenizer: copy every tokenizer.ggml.* key with its original type.
    for key, field in reader.fields.items():
        if not key.startswith("tokenizer.ggml."):
            continue
        vtype = field.types[0]
        if vtype == gguf.GGUFValueType.ARRAY:
            w.add_key_value(key, field.contents(), vtype, sub_type=field.types[-1])
        else:
            w.add_key_value(key, field.contents(), vtype)

    # Weights: numpy shapes are the reverse of GGML's ne order.
    rng = np.random.default_rng(args.seed)

    def rand(*shape: int, std: float = 0.02):
        return (rng.standard_normal(shape, dtype=np.float32) * np.float32(std)).astype(np.float32)

    def ones(n: int):
        return np.ones((n,), dtype=np.float32)

    T = gguf.MODEL_TENSOR
    names = gguf.TENSOR_NAMES
    w.add_tensor(names[T.TOKEN_EMBD] + ".weight", rand(n_vocab, N_EMBD))
    head_dim = N_EMBD // N_HEAD
    for i in range(N_LAYER):
        blk = lambda t: names[t].format(bid=i) + ".weight"  # noqa: E731
        w.add_tensor(blk(T.ATTN_NORM), ones(N_EMBD))
        w.add_tensor(blk(T.ATTN_Q), rand(N_EMBD, N_EMBD))
        w.add_tensor(blk(T.ATTN_K), rand(N_HEAD_KV * head_dim, N_EMBD))
        w.add_tensor(blk(T.ATTN_V), rand(N_HEAD_KV * head_dim, N_EMBD))
        w.add_tensor(blk(T.ATTN_OUT), rand(N_EMBD, N_EMBD))
        w.add_tensor(blk(T.FFN_NORM), ones(N_EMBD))
        w.add_tensor(blk(T.FFN_GATE), rand(N_FF, N_EMBD))
        w.add_tensor(blk(T.FFN_UP), rand(N_FF, N_EMBD))
        w.add_tensor(blk(T.FFN_DOWN), rand(N_EMBD, N_FF))
    w.add_tensor(names[T.OUTPUT_NORM] + ".weight", ones(N_EMBD))
    # Larger spread on the LM head so sampling is not uniform noise over 32000 tokens.
    w.add_tensor(names[T.OUTPUT] + ".weight", rand(n_vocab, N_EMBD, std=0.5))

    try:
        w.write_header_to_file()
        w.write_kv_data_to_file()
        w.write_tensors_to_file()
        w.close()
        os.replace(tmp, args.out)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    print(args.out)


if __name__ == "__main__":
    main()

#!/usr/bin/env python3
"""Write a small random-weight llama GGUF (by default meshd-tiny, ~17 MB) for tests and benchmarks.

    tools/make-tiny-gguf.py OUT.gguf [--llama-cpp DIR] [--vocab FILE] [--seed N]
                            [--layers N] [--embd N] [--heads N] [--heads-kv N] [--ff N] [--ctx N]
                            [--name NAME] [--type f32|f16]

The shape options default to meshd-tiny's (4 layers, n_embd 64, 4 heads, n_ff 128, context 512,
f32), so without them the file is the same, byte for byte, as it always was. --heads-kv defaults
to --heads; --embd must be a multiple of --heads. --type f16 stores the 2-D weights as f16 (half
the size; norms stay f32). Size is about (2 * vocab * embd + layers * (4 * embd^2 + 3 * embd * ff))
times 4 bytes (2 for f16), with vocab 32000. tools/make-tiny-model.sh --shape NAME has the named
shapes (split, slow) used by tests and benches/split_rpc.sh.

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

# Default model shape (meshd-tiny). Vocab comes from the vocab file (32000 for llama-spm).
N_LAYER = 4
N_EMBD = 64
N_HEAD = 4
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
    try:
        import numpy  # noqa: F401
    except ImportError:
        sys.exit(f"make-tiny-gguf: {sys.executable} has no numpy (pip install numpy, or PYTHON=... for make-tiny-model.sh)")
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
    ap.add_argument("--layers", type=int, default=N_LAYER, help="block count [%(default)s]")
    ap.add_argument("--embd", type=int, default=N_EMBD, help="embedding length [%(default)s]")
    ap.add_argument("--heads", type=int, default=N_HEAD, help="attention heads [%(default)s]")
    ap.add_argument("--heads-kv", type=int, help="KV heads [= --heads]")
    ap.add_argument("--ff", type=int, default=N_FF, help="feed-forward length [%(default)s]")
    ap.add_argument("--ctx", type=int, default=N_CTX, help="context length [%(default)s]")
    ap.add_argument("--name", default=NAME, help="general.name [%(default)s]")
    ap.add_argument("--type", choices=("f32", "f16"), default="f32", help="2-D weight type [%(default)s]")
    args = ap.parse_args()
    n_layer, n_embd, n_head, n_ff = args.layers, args.embd, args.heads, args.ff
    n_head_kv = args.heads_kv or n_head
    if min(n_layer, n_embd, n_head, n_head_kv, n_ff, args.ctx) < 1:
        ap.error("--layers, --embd, --heads, --heads-kv, --ff and --ctx must be positive")
    if n_embd % n_head or n_head % n_head_kv:
        ap.error(f"--embd ({n_embd}) must be a multiple of --heads ({n_head}), and --heads of --heads-kv ({n_head_kv})")

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
    w.add_name(args.name)
    w.add_context_length(args.ctx)
    w.add_embedding_length(n_embd)
    w.add_block_count(n_layer)
    w.add_feed_forward_length(n_ff)
    w.add_head_count(n_head)
    w.add_head_count_kv(n_head_kv)
    w.add_layer_norm_rms_eps(RMS_EPS)
    w.add_rope_dimension_count(n_embd // n_head)
    w.add_rope_freq_base(ROPE_THETA)
    w.add_vocab_size(n_vocab)
    w.add_file_type(gguf.LlamaFileType.MOSTLY_F16 if args.type == "f16" else gguf.LlamaFileType.ALL_F32)

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

    wtype = np.float16 if args.type == "f16" else np.float32

    def rand(*shape: int, std: float = 0.02):
        return (rng.standard_normal(shape, dtype=np.float32) * np.float32(std)).astype(wtype)

    def ones(n: int):
        return np.ones((n,), dtype=np.float32)

    T = gguf.MODEL_TENSOR
    names = gguf.TENSOR_NAMES
    w.add_tensor(names[T.TOKEN_EMBD] + ".weight", rand(n_vocab, n_embd))
    head_dim = n_embd // n_head
    for i in range(n_layer):
        blk = lambda t: names[t].format(bid=i) + ".weight"  # noqa: E731
        w.add_tensor(blk(T.ATTN_NORM), ones(n_embd))
        w.add_tensor(blk(T.ATTN_Q), rand(n_embd, n_embd))
        w.add_tensor(blk(T.ATTN_K), rand(n_head_kv * head_dim, n_embd))
        w.add_tensor(blk(T.ATTN_V), rand(n_head_kv * head_dim, n_embd))
        w.add_tensor(blk(T.ATTN_OUT), rand(n_embd, n_embd))
        w.add_tensor(blk(T.FFN_NORM), ones(n_embd))
        w.add_tensor(blk(T.FFN_GATE), rand(n_ff, n_embd))
        w.add_tensor(blk(T.FFN_UP), rand(n_ff, n_embd))
        w.add_tensor(blk(T.FFN_DOWN), rand(n_embd, n_ff))
    w.add_tensor(names[T.OUTPUT_NORM] + ".weight", ones(n_embd))
    # Larger spread on the LM head so sampling is not uniform noise over 32000 tokens.
    w.add_tensor(names[T.OUTPUT] + ".weight", rand(n_vocab, n_embd, std=0.5))

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

"""Reference values for tensor/tests/gguf.rs (`real_smollm2_file`): the first 64 weights of
`blk.0.attn_q.weight` in SmolLM2-135M-Instruct.Q4_1.gguf, dequantized by gguf-py, llama.cpp's own
Python package (independent of shears' reader and kernels).

    pip install gguf numpy
    python3 tensor/tests/gguf_reference.py data/smollm2/SmolLM2-135M-Instruct.Q4_1.gguf

prints the tensor's type, its row-major shape and the 64 values as a Rust array (repr of f32
values, exact), which the test hard-codes.
"""
import sys

import numpy as np
from gguf import GGUFReader
from gguf.quants import dequantize

path = sys.argv[1] if len(sys.argv) > 1 else "data/smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
reader = GGUFReader(path)
t = next(t for t in reader.tensors if t.name == "blk.0.attn_q.weight")
values = dequantize(t.data, t.tensor_type).astype(np.float32)
print("type", t.tensor_type.name, "row-major shape", list(values.shape))
first = values.reshape(-1)[:64]
print("[" + ", ".join(repr(float(v)) for v in first) + "]")

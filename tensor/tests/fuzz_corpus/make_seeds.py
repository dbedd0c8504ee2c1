"""Writes the seed files of the parser fuzz targets (tensor/tests/fuzz.rs): small but complete
safetensors and GGUF files that cover every header feature the parsers validate (this folder),
sharded-checkpoint indexes (index/), compressed-tensors files in every sparse layout shears reads
(compressed/) and a GGUF v2 file with every dequantized type (quant/). Run from this folder:
python3 make_seeds.py (standard library only). The outputs are committed; the fuzz tests never
call Python. models/tests/fuzz_corpus/tokenizer/make_seeds.py imports the GGUF writer."""
import json
import os
import struct


def safetensors(tensors, metadata=None):
    header, data = {}, b""
    for name, dtype, shape, payload in tensors:
        header[name] = {"dtype": dtype, "shape": shape, "data_offsets": [len(data), len(data) + len(payload)]}
        data += payload
    if metadata is not None:
        header["__metadata__"] = metadata
    h = json.dumps(header, separators=(",", ":")).encode()
    h += b" " * (-len(h) % 8)
    return struct.pack("<Q", len(h)) + h + data


def f32(*v):
    return struct.pack(f"<{len(v)}f", *v)


def f16(*v):
    return struct.pack(f"<{len(v)}e", *v)


def bf16(*v):
    # bf16 is the high half of the f32 bits (these values are exact in bf16).
    return b"".join(struct.pack("<f", x)[2:] for x in v)


def i64(*v):
    return struct.pack(f"<{len(v)}q", *v)


def u32(*v):
    return struct.pack(f"<{len(v)}I", *v)


# GGUF: every metadata value type, F32 / F16 / Q8_0 / Q4_1 tensors, alignment 32.
TYPES = {"u8": 0, "i8": 1, "u16": 2, "i16": 3, "u32": 4, "i32": 5, "f32": 6, "bool": 7,
         "str": 8, "arr": 9, "u64": 10, "i64": 11, "f64": 12}
FMT = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?", 10: "<Q", 11: "<q", 12: "<d"}


def gstr(s):
    b = s.encode()
    return struct.pack("<Q", len(b)) + b


def gval(t, v):
    if t == 8:
        return gstr(v)
    if t == 9:
        et, items = v
        return struct.pack("<IQ", et, len(items)) + b"".join(gval(et, x) for x in items)
    return struct.pack(FMT[t], v)


def gguf(kv, tensors, alignment=32, version=3):
    out = b"GGUF" + struct.pack("<IQQ", version, len(tensors), len(kv))
    for k, t, v in kv:
        out += gstr(k) + struct.pack("<I", t) + gval(t, v)
    off, offs = 0, []
    for name, ne, ty, data in tensors:
        out += gstr(name) + struct.pack("<I", len(ne)) + b"".join(struct.pack("<Q", d) for d in ne)
        out += struct.pack("<IQ", ty, off)
        offs.append(off)
        off = (off + len(data) + alignment - 1) // alignment * alignment
    out += b"\0" * (-len(out) % alignment)
    start = len(out)
    for (name, ne, ty, data), o in zip(tensors, offs):
        out += b"\0" * (start + o - len(out)) + data
    return out


def write(path, data):
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    with open(path, "wb") as f:
        f.write(data)


def main():
    write("st_mixed.safetensors", safetensors([
        ("model.embed_tokens.weight", "F32", [3, 2], f32(1, 2, 3, 4, 5, 6)),
        ("model.norm.weight", "BF16", [2], b"\x80\x3f\x00\x40"),
        ("ids", "I64", [2], struct.pack("<2q", -1, 7)),
        ("mask", "BOOL", [3], b"\x01\x00\x01"),
        ("half", "F16", [1, 1], b"\x00\x3c"),
        ("empty", "F32", [0, 4], b""),
        ("scalar", "F64", [], struct.pack("<d", 2.5)),
    ], {"format": "pt", "note": "seed"}))
    # sparse-bitmask (compressed-tensors), [2, 4], 2 values per row.
    write("st_compressed.safetensors", safetensors([
        ("w.bitmask", "U8", [2, 1], b"\x05\x0a"),
        ("w.compressed", "F32", [4], f32(1, 2, 3, 4)),
        ("w.row_offsets", "I64", [2], struct.pack("<2q", 0, 2)),
        ("w.shape", "I64", [2], struct.pack("<2q", 2, 4)),
    ], {"format": "pt"}))

    kv = [
        ("general.architecture", 8, "llama"),
        ("general.alignment", 4, 32),
        ("llama.block_count", 4, 1),
        ("llama.context_length", 10, 64),
        ("llama.rope.freq_base", 6, 10000.0),
        ("t.u8", 0, 7), ("t.i8", 1, -7), ("t.u16", 2, 700), ("t.i16", 3, -700), ("t.i32", 5, -70000),
        ("t.bool", 7, True), ("t.i64", 11, -(1 << 40)), ("t.f64", 12, 0.125),
        ("tokenizer.ggml.tokens", 9, (8, ["<s>", "a", "b", "ab"])),
        ("tokenizer.ggml.scores", 9, (6, [0.0, -1.0, -2.0, -3.0])),
        ("t.nested", 9, (9, [(4, [1, 2]), (4, [])])),
    ]
    q8 = struct.pack("<e", 0.5) + bytes(range(32))            # one Q8_0 block: f16 scale + 32 i8
    q41 = struct.pack("<ee", 0.25, -1.0) + bytes(range(16))   # one Q4_1 block: scale, min, 16 bytes
    tensors = [
        ("token_embd.weight", [2, 2], 0, f32(1, 2, 3, 4)),
        ("output_norm.weight", [2], 1, struct.pack("<2e", 1.0, 2.0)),
        ("blk.0.ffn_up.weight", [32, 1], 8, q8),
        ("blk.0.ffn_down.weight", [32, 1], 3, q41),
    ]
    write("gguf_v3.gguf", gguf(kv, tensors))
    write("gguf_empty.gguf", gguf([("general.architecture", 8, "llama")], []))

    # Sharded-checkpoint indexes: as HF `save_pretrained` writes one (indent 2), and a compact one
    # with shards in a subfolder, `./` components and non-string metadata.
    names = ["lm_head.weight", "model.embed_tokens.weight", "model.layers.0.mlp.down_proj.weight",
             "model.layers.0.self_attn.q_proj.weight", "model.norm.weight"]
    weight_map = {n: f"model-0000{1 + i % 2}-of-00002.safetensors" for i, n in enumerate(names)}
    write("index/hf_sharded.index.json", json.dumps(
        {"metadata": {"total_size": 269060352}, "weight_map": weight_map}, indent=2).encode() + b"\n")
    write("index/nested.index.json", json.dumps({
        "metadata": {"total_size": 48, "format": "pt", "shards": [1, 2], "sparse": None},
        "weight_map": {"a": "shards/a.safetensors", "b": "./shards/a.safetensors", "c": "b.safetensors"},
    }, separators=(",", ":")).encode())

    # compressed-tensors layouts: sparse-24-bitmask (bf16 values, a dense tensor beside it),
    # shears-nm-bitmask 1:4 (f16), sparse-bitmask with u32 integer parts, 12 columns (two bitmask
    # bytes per row, padding bits) and an empty row, and shears-csr.
    p = "model.layers.0.mlp.down_proj"
    write("compressed/sparse24_bf16.safetensors", safetensors([
        (f"{p}.bitmask", "U8", [2, 1], bytes([0b0101_0011, 0b1010_1100])),
        (f"{p}.compressed", "BF16", [2, 4], bf16(1, 2, 3, 4, 5, 6, 7, 8)),
        (f"{p}.shape", "I64", [2, 1], i64(2, 8)),
        ("model.norm.weight", "F32", [8], f32(*range(8))),
    ], {"format": "pt"}))
    write("compressed/nm14_f16.safetensors", safetensors([
        ("fc.nm_bitmask", "U8", [2, 1], bytes([0b0010_0001, 0b1000_0100])),
        ("fc.nm_shape", "I64", [4], i64(2, 8, 1, 4)),
        ("fc.nm_values", "F16", [2, 2], f16(1.5, -2, 0.25, 8)),
    ]))
    write("compressed/bitmask_u32_f16.safetensors", safetensors([
        ("q.bitmask", "U8", [2, 2], bytes([0x81, 0x08, 0x00, 0x00])),
        ("q.compressed", "F16", [3], f16(1, -1, 0.5)),
        ("q.row_offsets", "U32", [2], u32(0, 3)),
        ("q.shape", "U32", [2], u32(2, 12)),
    ]))
    write("compressed/csr_f32.safetensors", safetensors([
        ("fc.indices", "U32", [3], u32(1, 0, 2)),
        ("fc.indptr", "I64", [4], i64(0, 1, 1, 3)),
        ("fc.shape", "I64", [2], i64(3, 3)),
        ("fc.values", "F32", [3], f32(5, 7, 8)),
        ("fc_bias", "F32", [3], f32(0, 1, 2)),
    ]))

    # GGUF v2 (default alignment): Q4_0 over two rows of two blocks, Q8_0 over two rows, Q4_1,
    # BF16, an F32 scalar and an F16 tensor with a zero dim.
    q40 = b"".join(struct.pack("<e", 0.5 * (k + 1)) + bytes((k * 37 + j) % 256 for j in range(16)) for k in range(4))
    q80 = b"".join(struct.pack("<e", -0.25) + bytes((k * 11 + j * 7) % 256 for j in range(32)) for k in range(2))
    q41b = struct.pack("<ee", 0.125, 2.0) + bytes(range(240, 256))
    write("quant/gguf_v2_quant.gguf", gguf([("general.architecture", 8, "llama")], [
        ("blk.0.attn_q.weight", [64, 2], 2, q40),
        ("blk.0.attn_k.weight", [32, 2], 8, q80),
        ("blk.0.attn_v.weight", [32], 3, q41b),
        ("blk.0.attn_norm.weight", [3], 30, bf16(1, -2, 0.5)),
        ("scale", [], 0, f32(3.0)),
        ("empty", [0, 4], 1, b""),
    ], version=2))


if __name__ == "__main__":
    main()

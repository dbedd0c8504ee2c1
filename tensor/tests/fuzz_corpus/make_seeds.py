"""Writes the seed files of the parser fuzz targets (tensor/tests/fuzz.rs): small but complete
safetensors and GGUF files that cover every header feature the parsers validate. Run from this
folder: python3 make_seeds.py (standard library only). The outputs are committed; the fuzz test
never calls Python."""
import json
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


open("st_mixed.safetensors", "wb").write(safetensors([
    ("model.embed_tokens.weight", "F32", [3, 2], f32(1, 2, 3, 4, 5, 6)),
    ("model.norm.weight", "BF16", [2], b"\x80\x3f\x00\x40"),
    ("ids", "I64", [2], struct.pack("<2q", -1, 7)),
    ("mask", "BOOL", [3], b"\x01\x00\x01"),
    ("half", "F16", [1, 1], b"\x00\x3c"),
    ("empty", "F32", [0, 4], b""),
    ("scalar", "F64", [], struct.pack("<d", 2.5)),
], {"format": "pt", "note": "seed"}))
open("st_compressed.safetensors", "wb").write(safetensors([
    ("w.bitmask", "U8", [2, 1], b"\x05\x0a"),
    ("w.compressed", "F32", [4], f32(1, 2, 3, 4)),
    ("w.row_offsets", "I64", [2], struct.pack("<2q", 0, 2)),
    ("w.shape", "I64", [2], struct.pack("<2q", 2, 4)),
], {"format": "pt"}))

# GGUF v3: every metadata value type, F32 / F16 / Q8_0 / Q4_1 tensors, alignment 32.
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


def gguf(kv, tensors, alignment=32):
    out = b"GGUF" + struct.pack("<IQQ", 3, len(tensors), len(kv))
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
open("gguf_v3.gguf", "wb").write(gguf(kv, tensors))
open("gguf_empty.gguf", "wb").write(gguf([("general.architecture", 8, "llama")], []))

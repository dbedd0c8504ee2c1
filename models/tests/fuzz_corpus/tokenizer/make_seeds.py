"""Writes the seeds of the tokenizer fuzz targets (models/tests/fuzz.rs) from SmolLM2-135M's own
tokenizer, read out of its GGUF file (what `shears fetch` downloads):

    python3 make_seeds.py ../../../../data/smollm2/SmolLM2-135M-Instruct.Q4_1.gguf

Each seed keeps the first KEEP token ids of the real vocabulary (the 17 special tokens, the 256
byte-level tokens, then the tokens of the first merges) and the merges among them, in the real
files' structure:
- smollm2_cut.json: an HF tokenizer.json as SmolLM2 ships it (and as shears writes it):
  Sequence[Digits, ByteLevel] pre-tokenizer, ByteLevel decoder, BPE, special added tokens;
- llama3_style.json: the same vocabulary in the Llama-3 pipeline (Split regex + ByteLevel without
  regex, ignore_merges, a TemplateProcessing post-processor adding a BOS), merges as "a b" strings;
- smollm2_cut.gguf: the `tokenizer.ggml.*` metadata of a GGUF file (no tensors), chat template
  included.
Standard library only; the outputs are committed and the fuzz tests never call Python."""
import json
import os
import struct
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)),
                                "../../../../tensor/tests/fuzz_corpus"))
from make_seeds import gguf  # noqa: E402  (the GGUF writer of the tensor crate's seeds)

KEEP = 350
LLAMA3_PATTERN = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+"
                  r"[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")


def read_metadata(path):
    """The key-value metadata of a GGUF file: key -> (value type, value)."""
    fmt = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?", 10: "<Q",
           11: "<q", 12: "<d"}
    with open(path, "rb") as f:
        def num(code):
            return struct.unpack(code, f.read(struct.calcsize(code)))[0]

        def string():
            return f.read(num("<Q")).decode()

        def value(t):
            if t == 8:
                return string()
            if t == 9:
                et, n = num("<I"), num("<Q")
                return (et, [value(et) for _ in range(n)])
            return num(fmt[t])

        assert f.read(4) == b"GGUF"
        num("<I")
        num("<Q")
        kv = {}
        for _ in range(num("<Q")):
            k = string()
            t = num("<I")
            kv[k] = (t, value(t))
        return kv


def main(path):
    kv = read_metadata(path)
    tokens = kv["tokenizer.ggml.tokens"][1][1][:KEEP]
    types = kv["tokenizer.ggml.token_type"][1][1][:KEEP]
    known = set(tokens)
    merges = [m for m in kv["tokenizer.ggml.merges"][1][1]
              if all(p in known for p in m.split(" ")) and m.replace(" ", "") in known]
    specials = [(i, t) for i, (t, ty) in enumerate(zip(tokens, types)) if ty == 3]

    def added(i, t):
        return {"id": i, "content": t, "single_word": False, "lstrip": False, "rstrip": False,
                "normalized": False, "special": True}

    def model(merge_list, ignore_merges):
        return {"type": "BPE", "dropout": None, "unk_token": None, "continuing_subword_prefix": None,
                "end_of_word_suffix": None, "fuse_unk": False, "byte_fallback": False,
                "ignore_merges": ignore_merges, "vocab": {t: i for i, t in enumerate(tokens)},
                "merges": merge_list}

    byte_level = {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": True}
    smollm2 = {
        "version": "1.0", "truncation": None, "padding": None,
        "added_tokens": [added(i, t) for i, t in specials],
        "normalizer": None,
        "pre_tokenizer": {"type": "Sequence", "pretokenizers": [
            {"type": "Digits", "individual_digits": True}, byte_level]},
        "post_processor": None,
        "decoder": {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": True, "use_regex": True},
        "model": model([m.split(" ") for m in merges], False),
    }
    bos = tokens[1]
    llama3 = dict(smollm2)
    llama3.update({
        "added_tokens": [added(i, t) for i, t in specials[:3]],
        "pre_tokenizer": {"type": "Sequence", "pretokenizers": [
            {"type": "Split", "pattern": {"Regex": LLAMA3_PATTERN}, "behavior": "Isolated", "invert": False},
            dict(byte_level, use_regex=False)]},
        "post_processor": {"type": "TemplateProcessing",
                           "single": [{"SpecialToken": {"id": bos, "type_id": 0}},
                                      {"Sequence": {"id": "A", "type_id": 0}}],
                           "pair": [{"SpecialToken": {"id": bos, "type_id": 0}},
                                    {"Sequence": {"id": "A", "type_id": 0}},
                                    {"Sequence": {"id": "B", "type_id": 1}}],
                           "special_tokens": {bos: {"id": bos, "ids": [1], "tokens": [bos]}}},
        "model": model(merges, True),
    })
    here = os.path.dirname(os.path.abspath(__file__))
    for name, tok in [("smollm2_cut.json", smollm2), ("llama3_style.json", llama3)]:
        with open(os.path.join(here, name), "w", encoding="utf-8") as f:
            json.dump(tok, f, ensure_ascii=False, separators=(",", ":"))

    meta = [("general.architecture", 8, "llama")]
    for key in ["tokenizer.ggml.model", "tokenizer.ggml.pre", "tokenizer.ggml.add_bos_token",
                "tokenizer.ggml.add_space_prefix", "tokenizer.ggml.bos_token_id",
                "tokenizer.ggml.eos_token_id", "tokenizer.ggml.unknown_token_id",
                "tokenizer.ggml.padding_token_id", "tokenizer.chat_template"]:
        t, v = kv[key]
        meta.append((key, t, v))
    meta += [("tokenizer.ggml.tokens", 9, (8, tokens)),
             ("tokenizer.ggml.token_type", 9, (5, types)),
             ("tokenizer.ggml.merges", 9, (8, merges))]
    with open(os.path.join(here, "smollm2_cut.gguf"), "wb") as f:
        f.write(gguf(meta, []))
    print(f"{len(tokens)} tokens ({len(specials)} special), {len(merges)} merges")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "data/smollm2/SmolLM2-135M-Instruct.Q4_1.gguf")

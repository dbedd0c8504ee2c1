"""Independent transcription of shears' Rng (SplitMix64 seeding + xoshiro256++), used to pin the
golden values in rng_golden.txt. Run: python3 tensor/tests/rng_golden.py > tensor/tests/rng_golden.txt"""
M = (1 << 64) - 1

def splitmix(seed):
    x = seed
    while True:
        x = (x + 0x9E3779B97F4A7C15) & M
        z = x
        z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & M
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & M
        yield z ^ (z >> 31)

def rotl(x, k):
    return ((x << k) | (x >> (64 - k))) & M

def xoshiro(seed):
    g = splitmix(seed)
    s = [next(g) for _ in range(4)]
    while True:
        result = (rotl((s[0] + s[3]) & M, 23) + s[0]) & M
        t = (s[1] << 17) & M
        s[2] ^= s[0]; s[3] ^= s[1]; s[1] ^= s[2]; s[0] ^= s[3]; s[2] ^= t
        s[3] = rotl(s[3], 45)
        yield result

g = xoshiro(42)
vals = [(next(g) >> 11) * (1.0 / (1 << 53)) for _ in range(3)]
print("vec![" + ", ".join(repr(v) for v in vals) + "]")

#!/usr/bin/env bash
# llama.cpp as a peer, built and run beside `shears bench` in one script.
#
# llama.cpp's C/C++ source ships in the llama-cpp-python sdist on PyPI. This script downloads that
# sdist into a work directory OUTSIDE the repository (default: $HOME/.cache/shears-peers, or
# $PEERS_DIR), builds `llama-bench` and `llama-quantize` there with cmake (from PyPI, in a venv
# of its own), makes F32, F16 and Q8_0 files from the default Q4_1 GGUF
# (`llama-quantize --allow-requantize`), and runs `llama-bench -p 512 -n 128` on each, then
# `shears bench` (f32, and bf16 weights against llama.cpp's F16) on the same machine. Nothing of
# llama.cpp is copied into the repository.
#
# Usage (from the repository root, after `cargo build --release` and `shears fetch`):
#   bash peers/llama-cpp.sh                 # build once (about 10 min on 2 cores), then measure
#   THREADS=1 bash peers/llama-cpp.sh       # one core
#   REPACK=0 bash peers/llama-cpp.sh        # pass --repack 0 to llama-bench (see below)
#
# On the Intel Xeon VM with AMX, llama.cpp's AMX path crashed in earlier runs (SIGSEGV in
# ggml_backend_amx_mul_mat); `--repack 0` avoided it. The script retries a crashed run with
# `--repack 0` and says so.
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
version=${LLAMA_CPP_PYTHON_VERSION:-0.3.36}
work=${PEERS_DIR:-$HOME/.cache/shears-peers}
threads=${THREADS:-$(nproc)}
data=${SHEARS_DATA:-$repo/data}
q41="$data/smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
shears="$repo/target/release/shears"
case "$work" in "$repo"/*) echo "PEERS_DIR must be outside the repository" >&2; exit 1 ;; esac
[ -f "$q41" ] || { echo "no $q41: run \`shears fetch\` first" >&2; exit 1; }
[ -x "$shears" ] || { echo "no $shears: run \`cargo build --release\` first" >&2; exit 1; }
mkdir -p "$work"
cd "$work"

# --- build (once) ---------------------------------------------------------------------------
# The sdist unpacks to llama_cpp_python-$version/ (older ones: llama-cpp-python-$version/).
find_src() { find "$work" -maxdepth 4 -path "*python-$version/vendor/llama.cpp/CMakeLists.txt" | head -n1; }
src=$(dirname "$(find_src)")
build="$work/build-$version"
if [ ! -x "$build/bin/llama-bench" ] || [ ! -x "$build/bin/llama-quantize" ]; then
  if [ ! -f "$src/CMakeLists.txt" ]; then
    # The sdist's URL (and sha256) from PyPI's simple index; `pip download --no-binary` would
    # build its build dependencies, cmake included, from source just to read its metadata.
    link=$(curl -fsSL "https://pypi.org/simple/llama-cpp-python/" |
      grep -o "href=\"[^\"]*llama_cpp_python-$version\.tar\.gz#sha256=[0-9a-f]*\"" | head -n1)
    [ -n "$link" ] || { echo "llama-cpp-python $version: no sdist on PyPI" >&2; exit 1; }
    link=${link#href=\"}; link=${link%\"}
    url=${link%%#*}; sha=${link##*sha256=}
    curl -fsSL "$url" -o "$work/llama-cpp-python-$version.tar.gz"
    echo "$sha  $work/llama-cpp-python-$version.tar.gz" | sha256sum -c - >&2
    tar xzf "$work/llama-cpp-python-$version.tar.gz" -C "$work"
    src=$(dirname "$(find_src)")
    [ -f "$src/CMakeLists.txt" ] || { echo "no vendor/llama.cpp in the sdist" >&2; exit 1; }
  fi
  if ! command -v cmake >/dev/null 2>&1 || ! command -v ninja >/dev/null 2>&1; then
    [ -x "$work/venv/bin/ninja" ] ||
      { python3 -m venv "$work/venv" && "$work/venv/bin/pip" install -q --only-binary :all: cmake ninja >&2; }
    export PATH="$work/venv/bin:$PATH"
  fi
  cmake -S "$src" -B "$build" -G Ninja -DCMAKE_BUILD_TYPE=Release -DGGML_NATIVE=ON \
    -DLLAMA_CURL=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_SERVER=OFF \
    -DLLAMA_BUILD_TOOLS=ON >&2
  cmake --build "$build" --target llama-bench llama-quantize -j "$(nproc)" >&2
fi

# --- model files ------------------------------------------------------------------------------
for t in F32 F16 Q8_0; do
  out="$work/smollm2-$t.gguf"
  [ -f "$out" ] || "$build/bin/llama-quantize" --allow-requantize "$q41" "$out" "$t" >&2
done

# --- measure ----------------------------------------------------------------------------------
cpu=$(lscpu | sed -n 's/^Model name: *//p' | head -n1)
amx=$(grep -q amx_tile /proc/cpuinfo && echo yes || echo no)
echo "# llama.cpp (llama-cpp-python $version sdist) vs shears, $threads threads, $cpu, AMX: $amx"
echo
echo "| engine | weights | pp512 tokens/s | tg128 tokens/s |"
echo "|---|---|---:|---:|"
bench_llama() {  # $1 = type
  local f="$work/smollm2-$1.gguf" extra=() out
  [ "${REPACK:-}" = 0 ] && extra=(--repack 0)
  if ! out=$("$build/bin/llama-bench" -m "$f" -p 512 -n 128 -t "$threads" -o json "${extra[@]}" 2>/dev/null); then
    echo "(llama-bench crashed on $1; retrying with --repack 0)" >&2
    out=$("$build/bin/llama-bench" -m "$f" -p 512 -n 128 -t "$threads" -o json --repack 0)
  fi
  python3 - "$1" "$out" <<'EOF'
import json, sys
kind, rows = sys.argv[1], json.loads(sys.argv[2])
pp = next(r["avg_ts"] for r in rows if r["n_prompt"] > 0)
tg = next(r["avg_ts"] for r in rows if r["n_gen"] > 0)
print(f"| llama.cpp | {kind} | {pp:.1f} | {tg:.1f} |")
EOF
}
bench_shears() {  # $1 = dtype
  "$shears" bench --dtype "$1" --threads "$threads" --no-limits --json 2>/dev/null |
    python3 -c 'import json,sys; r=json.loads(sys.stdin.read()); print("| shears | %s | %.1f | %.1f |" % (r["dtype"], r["prefill_tokens_per_s"], r["decode_tokens_per_s"]))'
}
for round in 1 2; do
  bench_llama F32
  bench_shears f32
  bench_llama F16
  bench_shears bf16
  bench_llama Q8_0
done

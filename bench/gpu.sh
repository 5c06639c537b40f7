#!/usr/bin/env bash
# bench/gpu.sh [OUT_DIR]: the real-GPU benchmark, for a fresh Linux x86-64 machine with a GPU and
# no network. Needs what bench/prepare_gpu.sh gathered (.gl/ and bench/.gpu/, carried along).
# Sets up the Vulkan loader, deno and node-llama-cpp from the carried files, then runs, each
# under a share of an 8-minute budget, writing JSON, tables and logs to OUT_DIR:
#
#   adapter.txt        the WebGPU adapter Deno sees and the GPU (nvidia-smi)
#   peer-shakespeare.* bench peer on shakespeare-moe: moeq vs llama.cpp Vulkan, f16/q8/q4
#   kernels.*          bench kernels
#   decode.*           bench decode (shakespeare-moe 4-bit experts vs f16)
#   peer-synthetic.*   bench peer on the 978M-parameter synthetic (written under /tmp)
#
# Each step's .json is its JSON output, .md/.txt its table, .log its stderr; summary.txt lists
# each step's exit status and seconds. Environment: BUDGET (seconds, default 480), PEER_ARGS
# (extra bench peer flags), WORK (default /tmp/moeq-peer), SKIP_SYNTHETIC=1, DENO (a deno binary
# to use instead of the carried one).
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-${OUT:-/tmp/moeq-gpu}}
BUDGET=${BUDGET:-480}
mkdir -p "$OUT"
START=$(date +%s)
G=bench/.gpu
T=/tmp/moeq-gpu-tools
mkdir -p "$T"

# Vulkan loader: carried .debs when the system has none.
if ! ldconfig -p | grep -q 'libvulkan.so.1 '; then
  for f in .gl/*.deb; do dpkg -x "$f" /; done
  ldconfig
fi
if [ -f /usr/local/nvidia/share/vulkan/icd.d/nvidia_icd.json ] && [ -z "${VK_DRIVER_FILES:-}" ]; then
  export VK_DRIVER_FILES=/usr/local/nvidia/share/vulkan/icd.d/nvidia_icd.json
  export __EGL_VENDOR_LIBRARY_FILENAMES=/usr/local/nvidia/share/glvnd/egl_vendor.d/10_nvidia.json
fi

# xz, or Python's lzma where xz-utils is missing: unxz FILE > OUT; untar_xz FILE DIR.
unxz() {
  if command -v xz >/dev/null; then xz -dc "$1"; else
    python3 -c 'import lzma,shutil,sys; shutil.copyfileobj(lzma.open(sys.argv[1]), sys.stdout.buffer)' "$1"
  fi
}
untar_xz() { unxz "$1" | tar -C "$2" -xf -; }

# deno: on the PATH, or the carried binary.
DENO=${DENO:-$(command -v deno || true)}
if [ -z "$DENO" ]; then
  unxz "$G/deno.xz" > "$T/deno" && chmod +x "$T/deno" && DENO=$T/deno
fi
export PATH=$(dirname "$DENO"):$PATH
# Deno's npm cache (flatbuffers), unless this machine's Deno already has one.
if [ -f "$G/deno_dir.tar.xz" ]; then
  untar_xz "$G/deno_dir.tar.xz" "$T"
  export DENO_DIR=$T/deno_dir
fi
# node-llama-cpp (JS + prebuilt Vulkan build).
if [ ! -d bench/.deps/node_modules/node-llama-cpp ] && [ -f "$G/llama.tar.xz" ]; then
  mkdir -p bench/.deps && untar_xz "$G/llama.tar.xz" bench/.deps
fi
export XDG_RUNTIME_DIR=${XDG_RUNTIME_DIR:-/tmp} DENO_NO_UPDATE_CHECK=1
export GGML_VK_VISIBLE_DEVICES=${GGML_VK_VISIBLE_DEVICES:-0}
D=("$DENO" run -A --cached-only)
WORK=${WORK:-/tmp/moeq-peer} # artifacts, GGUFs and the synthetic checkpoint

left() { echo $((BUDGET - ($(date +%s) - START))); }
# step NAME SHARE_OF_WHAT_IS_LEFT_PERCENT cmd...: runs cmd with a timeout, stdout → NAME.out.
step() {
  local name=$1 pct=$2 t0 rc limit
  shift 2
  limit=$(($(left) * pct / 100))
  if [ "$limit" -lt 10 ]; then
    echo "$name skipped: no time left" | tee -a "$OUT/summary.txt"
    return
  fi
  t0=$(date +%s)
  timeout "$limit" "$@" > "$OUT/$name" 2> "$OUT/${name%.*}.log"
  rc=$?
  echo "$name rc=$rc $(($(date +%s) - t0)) s (limit $limit s)" | tee -a "$OUT/summary.txt"
}

{
  echo "date: $(date -u)"
  if command -v nvidia-smi >/dev/null; then
    nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv
  fi
  "${D[@]}" --no-config - <<'JS' 2>&1
const a = await navigator.gpu?.requestAdapter({ powerPreference: "high-performance" });
const i = a?.info;
console.log("WebGPU adapter:", i ? `${i.vendor} | ${i.architecture} | ${i.device} | ${i.description}` : "none");
JS
} > "$OUT/adapter.txt"
cat "$OUT/adapter.txt"

# shellcheck disable=SC2206
PEER=("${D[@]}" bench/peer.ts --engines moeq,llama-vulkan --work "$WORK" ${PEER_ARGS:-})
step peer-shakespeare.md 20 "${PEER[@]}" --models shakespeare --out "$OUT/peer-shakespeare"
step kernels.json 15 "${D[@]}" cli.ts bench kernels --json
step decode.json 20 "${D[@]}" cli.ts bench decode "$WORK/shakespeare-q4.moeq" \
  --compare "$WORK/shakespeare-f16.moeq" --json
step decode.txt 30 "${D[@]}" cli.ts bench decode "$WORK/shakespeare-q4.moeq" \
  --compare "$WORK/shakespeare-f16.moeq"
if [ "${SKIP_SYNTHETIC:-0}" != 1 ]; then
  step peer-synthetic.md 95 "${PEER[@]}" --models synthetic --tokens 32 --out "$OUT/peer-synthetic"
fi
step kernels.txt 90 "${D[@]}" cli.ts bench kernels
echo "total $(($(date +%s) - START)) s" | tee -a "$OUT/summary.txt"

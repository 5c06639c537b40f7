#!/usr/bin/env bash
# bench/prepare_gpu.sh: run HERE (with network: Debian mirrors and the npm registry) before
# bench/gpu.sh runs on a machine without network. Gathers into ignored folders of this checkout:
#
#   .gl/                      Vulkan loader + GL libraries (.deb, amd64), unpacked there with dpkg -x
#   bench/.gpu/deno.xz        the deno binary that runs this script's Deno (xz -9)
#   bench/.gpu/deno_dir.tar.xz  Deno's cache for the repo's npm imports (flatbuffers)
#   bench/.gpu/llama.tar.xz   node-llama-cpp 3.22 (JS) + its linux-x64 Vulkan prebuilt (+ the
#                             CPU-only build with LLAMA_CPU=1)
#
# and prints the total that the device tool must carry (limit 64 MiB with the tracked files).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
G=bench/.gpu
mkdir -p "$G" .gl
DENO_BIN=${DENO_BIN:-$(npx -y deno@2.9.6 eval 'console.log(Deno.execPath())')}
echo "deno: $DENO_BIN ($("$DENO_BIN" --version | head -1))"

# 1. Vulkan loader (what the device README prescribes).
if ! ls .gl/libvulkan1_*.deb >/dev/null 2>&1; then
  mkdir -p /tmp/amd64/partial
  o='-oAPT::Architecture=amd64 -oAPT::Architectures=amd64 -oDir::State::Lists=/tmp/amd64'
  # shellcheck disable=SC2086
  apt-get $o update >/dev/null
  # shellcheck disable=SC2086
  (cd .gl && apt-get $o download libvulkan1 libegl1 libglvnd0 libopengl0 libgl1 libglx0 libgles2)
fi

# 2. deno itself.
XZ_LEVEL=${XZ_LEVEL:--9} # -1 is ~10x faster and ~25% larger
if [ ! -s "$G/deno.xz" ]; then
  xz -T0 "$XZ_LEVEL" -c "$DENO_BIN" > "$G/deno.xz.tmp" && mv "$G/deno.xz.tmp" "$G/deno.xz"
fi

# 3. Deno's npm cache for the repo (flatbuffers), from a clean DENO_DIR.
if [ ! -s "$G/deno_dir.tar.xz" ]; then
  tmp=$(mktemp -d)
  DENO_DIR=$tmp/deno_dir "$DENO_BIN" cache cli.ts bench/peer.ts bench/peer_child.ts >/dev/null
  tar -C "$tmp" -cf - deno_dir/npm | xz -T0 "$XZ_LEVEL" > "$G/deno_dir.tar.xz"
  rm -rf "$tmp"
fi

# 4. node-llama-cpp and its prebuilt binaries (no install scripts: nothing is built or fetched).
if [ ! -d bench/.deps/node_modules/@node-llama-cpp/linux-x64-vulkan ]; then
  mkdir -p bench/.deps
  [ -f bench/.deps/package.json ] || echo '{"name":"moeq-bench-deps","private":true}' > bench/.deps/package.json
  (cd bench/.deps && npm install --omit=optional --ignore-scripts --no-audit --no-fund \
    node-llama-cpp@3.22.1 @node-llama-cpp/linux-x64@3.22.1 @node-llama-cpp/linux-x64-vulkan@3.22.1)
fi
if [ ! -s "$G/llama.tar.xz" ]; then
  excl=(--exclude=node_modules/node-llama-cpp/llama/gitRelease.bundle --exclude='*.map' --exclude='*.d.ts')
  # ggml's CPU-variant libraries of the Vulkan build: keep the baseline (x64) and the server
  # generations a GPU host has (haswell, skylakex, icelake, sapphirerapids, zen4).
  for v in alderlake cannonlake cascadelake cooperlake ivybridge piledriver sandybridge sse42; do
    excl+=(--exclude="libggml-cpu-$v.so")
  done
  # gpu.sh runs llama.cpp's Vulkan build only; LLAMA_CPU=1 also packs the CPU-only build.
  [ "${LLAMA_CPU:-0}" = 1 ] || excl+=(--exclude=node_modules/@node-llama-cpp/linux-x64)
  tar -C bench/.deps "${excl[@]}" -cf - package.json node_modules | xz -T0 "$XZ_LEVEL" > "$G/llama.tar.xz.tmp"
  mv "$G/llama.tar.xz.tmp" "$G/llama.tar.xz"
fi

du -b .gl "$G"/* | sed "s|$ROOT/||"
tracked=$(git ls-files -z | xargs -0 du -cb 2>/dev/null | tail -1 | cut -f1)
carried=$(du -cb .gl "$G" | tail -1 | cut -f1)
echo "tracked files $((tracked / 1048576)) MiB + carried $((carried / 1048576)) MiB = $(((tracked + carried) / 1048576)) MiB (limit 64)"

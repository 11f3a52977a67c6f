#!/usr/bin/env bash
# The CUDA check (README, "CUDA"), on a lent GPU machine or here:
#   1. joins .gpu/parts/*.part-NN into the onnxruntime-gpu wheel and checks it against
#      .gpu/parts/SHA256SUMS (the hash PyPI publishes);
#   2. extracts libonnxruntime.so and the CUDA provider libraries into .gpu/ort;
#   3. finds the CUDA 13 / cuDNN 9 libraries of the machine's Python packages (nvidia-*) for the
#      loader;
#   4. runs `weir check-cuda` (the fraud model and a 15-1024-512-256-2 MLP, CUDA against CPU, at
#      256, 4,096 and 65,536 rows) and, if CUDA ran, `weir bench` with fraud-scoring on CUDA.
# Prints one summary (also to $OUT/summary.txt when $OUT is set, as on a device machine).
# Exit status: 0 checked, 4 CUDA unavailable (no GPU, no wheel parts: the CPU figures only),
# 1 a check failed (hash, extraction, scores), 2 usage.
set -uo pipefail
cd "$(dirname "$0")/../.."
G=$(realpath -m "${GPU_DIR:-.gpu}")   # where prepare.sh put the parts (tests set another)
WEIR="${WEIR_BIN:-}"
for c in target/release/weir "$G/bin/weir"; do
  [ -z "$WEIR" ] && [ -x "$c" ] && WEIR="$c"
done
[ -n "$WEIR" ] || { echo "check.sh: no weir binary (target/release/weir or .gpu/bin/weir; or set WEIR_BIN)" >&2; exit 2; }
summary=$(mktemp)
say() { echo "$@" | tee -a "$summary"; }
finish() {
  [ -n "${OUT:-}" ] && cp "$summary" "$OUT/summary.txt"
  exit "$1"
}
say "== weir CUDA check ($(date -u +%FT%TZ), $(uname -m), $(nvidia-smi --query-gpu=name,driver_version --format=csv,noheader 2>/dev/null || echo 'no nvidia-smi'))"

ort=""
if ls "$G"/parts/*.part-* >/dev/null 2>&1; then
  read -r want name < "$G/parts/SHA256SUMS" || { say "FAILED: no $G/parts/SHA256SUMS"; finish 1; }
  t0=$(date +%s)
  cat "$G"/parts/"$name".part-* > "$G/$name"
  got=$(sha256sum "$G/$name" | cut -d' ' -f1)
  if [ "$got" != "$want" ]; then
    say "FAILED: the joined wheel's sha256 is $got, the published one $want (a part is missing or damaged)"
    finish 1
  fi
  mkdir -p "$G/ort"
  python3 - "$G/$name" "$G/ort" <<'PY' || { say "FAILED: cannot extract the libraries"; finish 1; }
import sys, zipfile, os
wheel, out = sys.argv[1], sys.argv[2]
with zipfile.ZipFile(wheel) as z:
    libs = [n for n in z.namelist() if n.startswith("onnxruntime/capi/libonnxruntime")]
    for n in libs:
        with z.open(n) as src, open(os.path.join(out, os.path.basename(n)), "wb") as dst:
            dst.write(src.read())
PY
  ort=$(ls "$G"/ort/libonnxruntime.so.* 2>/dev/null | head -1)
  say "wheel $name: sha256 ok (published $want), joined and extracted in $(( $(date +%s) - t0 )) s: $(ls "$G"/ort | tr '\n' ' ')"
else
  say "no wheel parts in $G/parts (scripts/gpu/prepare.sh makes them): the CPU library only"
fi
if [ -n "$ort" ]; then
  export ORT_DYLIB_PATH="$ort"
  # CUDA 13 and cuDNN 9 from the machine's Python packages (nvidia-cuda-runtime, nvidia-cudnn-cu13, ...).
  cuda_libs=$(python3 -c 'import glob, os, site; ds = set(); [ds.add(os.path.dirname(p)) for s in site.getsitepackages() for p in glob.glob(os.path.join(s, "nvidia", "**", "lib*.so*"), recursive=True)]; print(":".join(sorted(ds)))' 2>/dev/null)
  export LD_LIBRARY_PATH="$G/ort${cuda_libs:+:$cuda_libs}${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
  say "ORT_DYLIB_PATH=$ORT_DYLIB_PATH; CUDA libraries from $(echo "$cuda_libs" | tr ':' '\n' | grep -c . ) package folders"
fi
"$WEIR" check-cuda "$@" 2>&1 | tee -a "$summary"
status=${PIPESTATUS[0]}
case "$status" in
  0)
    say "== weir bench, fraud-scoring on CUDA"
    "$WEIR" bench --days 10 --onnx-seconds 2 2>&1 | tee -a "$summary"
    [ "${PIPESTATUS[0]}" = 0 ] || { say "FAILED: weir bench"; finish 1; }
    say "== CUDA check passed"
    finish 0 ;;
  4) say "== CUDA unavailable here (exit status 4): CPU figures only"; finish 4 ;;
  *) say "== CUDA check FAILED (weir check-cuda exit status $status)"; finish 1 ;;
esac

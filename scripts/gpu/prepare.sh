#!/usr/bin/env bash
# Prepares, on a machine that reaches PyPI, what a lent GPU machine needs to run
# scripts/gpu/check.sh (README, "CUDA"):
#
#   .gpu/parts/onnxruntime_gpu-<version>-...whl.part-NN   the onnxruntime-gpu wheel (255 MB, CUDA 13)
#                                                        split into parts of PART_MB MiB (56)
#   .gpu/parts/SHA256SUMS                                the wheel's hash as PyPI publishes it
#   .gpu/bin/weir                                        the weir binary, stripped (about 22 MB)
#
# A device call carries at most 64 MiB with the working tree (about 5 MiB): carry one part per
# call while the machine is warm, then the last part, SHA256SUMS and .gpu/bin with the call that
# runs check.sh (scripts/gpu/README.md lists the calls).
#
#   scripts/gpu/prepare.sh                         download (pip) and split
#   scripts/gpu/prepare.sh --wheel F --sha256 H    split a wheel already here (tests)
set -euo pipefail
cd "$(dirname "$0")/../.."
VERSION="${ORT_GPU_VERSION:-1.31.1}"
PART_MB="${PART_MB:-56}"
PYTHON="${PYTHON:-python3}"
OUT="${GPU_DIR:-.gpu}"   # where the parts go (tests set another)
wheel="" published=""
while [ $# -gt 0 ]; do
  case "$1" in
    --wheel) wheel="$2"; shift 2 ;;
    --sha256) published="$2"; shift 2 ;;
    *) echo "prepare.sh: unknown argument $1" >&2; exit 2 ;;
  esac
done
mkdir -p "$OUT/download" "$OUT/parts" "$OUT/bin"
platform=(--only-binary=:all: --python-version 3.12 --platform manylinux_2_27_x86_64 --platform manylinux_2_28_x86_64)
if [ -z "$wheel" ]; then
  # The hash PyPI publishes for the file pip picks (its index link's sha256), from pip's report;
  # pip itself checks the download against it too.
  "$PYTHON" -m pip install --quiet --disable-pip-version-check --no-deps "${platform[@]}" \
    --ignore-installed --dry-run --target "$OUT/resolve" --report "$OUT/report.json" "onnxruntime-gpu==$VERSION"
  published=$("$PYTHON" -c 'import json,sys; r=json.load(open(sys.argv[1])); print(r["install"][0]["download_info"]["archive_info"]["hashes"]["sha256"])' "$OUT/report.json")
  "$PYTHON" -m pip download --quiet --disable-pip-version-check --no-deps "${platform[@]}" \
    -d "$OUT/download" "onnxruntime-gpu==$VERSION"
  wheel=$(ls "$OUT"/download/onnxruntime_gpu-"$VERSION"-*.whl | head -1)
fi
[ -n "$published" ] || { echo "prepare.sh: --wheel needs --sha256 (the published hash)" >&2; exit 2; }
actual=$(sha256sum "$wheel" | cut -d' ' -f1)
if [ "$actual" != "$published" ]; then
  echo "prepare.sh: $wheel has sha256 $actual, PyPI publishes $published" >&2
  exit 1
fi
name=$(basename "$wheel")
rm -f "$OUT"/parts/*
split -b "${PART_MB}m" -d -a 2 "$wheel" "$OUT/parts/$name.part-"
printf '%s  %s\n' "$published" "$name" > "$OUT/parts/SHA256SUMS"
# The parts rejoin to the published hash (checked here before anything is carried).
joined=$(cat "$OUT"/parts/"$name".part-* | sha256sum | cut -d' ' -f1)
[ "$joined" = "$published" ] || { echo "prepare.sh: the parts do not rejoin to $published" >&2; exit 1; }
# The binary the GPU machine runs (it cannot build: no registry there).
bin="${WEIR_BIN:-target/release/weir}"
if [ -x "$bin" ]; then
  cp "$bin" "$OUT/bin/weir" && strip "$OUT/bin/weir" 2>/dev/null || true
fi
echo "prepare.sh: $name ($(stat -c %s "$wheel") bytes, sha256 $published)"
ls -l "$OUT"/parts/ | awk 'NR>1 {printf "  %s %s\n", $5, $9}'
[ -x "$OUT/bin/weir" ] && echo "  $(stat -c %s "$OUT/bin/weir") .gpu/bin/weir"
echo "parts rejoin to the published hash: ok"

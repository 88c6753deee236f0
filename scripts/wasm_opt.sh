#!/usr/bin/env bash
# `make build`, after cargo: Binaryen's `wasm-opt -O3` over the filter cargo built, into
# target/wasm32-wasip1/release/graysplit.wasm (what Envoy, the tests and istio/ load). Cargo's own
# output (target/wasm32-wasip1/release/deps/graysplit.wasm) is never changed, so the step is
# repeatable: the same cargo output gives the same optimized file, byte for byte (its sha256 is
# what istio/wasmplugin-file.yaml pins). It is skipped when the file in place is already the
# optimization of cargo's current output (a stamp holds both sha256s).
#
# wasm-opt comes from Debian's `binaryen` package, installed here where missing (as root).
# Features: those rustc's wasm32-wasip1 emits by default (Rust 1.82+: bulk memory, sign
# extension, non-trapping float-to-int, mutable globals, multi-value, reference types), all of
# which Envoy's V8 runs.
set -euo pipefail
cd "$(dirname "$0")/.."
DIR=target/wasm32-wasip1/release
SRC=$DIR/deps/graysplit.wasm
OUT=$DIR/graysplit.wasm
KEPT=$DIR/graysplit.opt.wasm
STAMP=$DIR/graysplit.opt.wasm.from

if ! command -v wasm-opt >/dev/null; then
  if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null; then
    echo "wasm-opt is missing: install Binaryen (Debian: apt-get install binaryen)" >&2
    exit 1
  fi
  echo "installing Debian's binaryen (wasm-opt)"
  . scripts/debian.sh
  debian_install binaryen --no-install-recommends
fi

src_sha=$(sha256sum "$SRC" | cut -d' ' -f1)
if ! { [ -f "$STAMP" ] && [ -f "$KEPT" ] && [ "$(cat "$STAMP")" = "$src_sha" ]; }; then
  tmp=$(mktemp "$KEPT.XXXXXX")
  wasm-opt -O3 --enable-bulk-memory --enable-sign-ext --enable-nontrapping-float-to-int \
    --enable-mutable-globals --enable-multivalue --enable-reference-types \
    "$SRC" -o "$tmp"
  mv "$tmp" "$KEPT"
  echo "$src_sha" >"$STAMP"
  echo "wasm-opt -O3: $(stat -c %s "$SRC") -> $(stat -c %s "$KEPT") bytes"
fi
# A new file, not a write through cargo's hard link to its own output.
tmp=$(mktemp "$OUT.XXXXXX")
cp "$KEPT" "$tmp"
chmod 755 "$tmp"
mv "$tmp" "$OUT"

#!/bin/sh
# Builds librseq_malloc in release mode and installs it under PREFIX:
#   PREFIX/lib/librseq_malloc.so.VERSION  (SONAME librseq_malloc.so.0)
#   PREFIX/lib/librseq_malloc.so.0 -> librseq_malloc.so.VERSION
#   PREFIX/lib/librseq_malloc.so   -> librseq_malloc.so.0
#   PREFIX/lib/librseq_malloc.a
#   PREFIX/include/rseq_malloc.h
#   PREFIX/lib/pkgconfig/rseq_malloc.pc
# Usage: ffi/install.sh PREFIX   (CARGO_TARGET_DIR and CARGO are honoured;
# DESTDIR is prepended to the paths written, not to the prefix in the .pc)
set -eu
if [ "$#" -ne 1 ]; then
    echo "usage: $0 PREFIX" >&2
    exit 2
fi
prefix=$1
root=$(cd "$(dirname "$0")/.." && pwd)
cargo=${CARGO:-cargo}
target=${CARGO_TARGET_DIR:-$root/target}
"$cargo" build --release -p rseq-malloc --manifest-path "$root/Cargo.toml" --target-dir "$target"
version=$(sed -n 's/^version = "\(.*\)"$/\1/p' "$root/Cargo.toml" | head -n 1)
dest=${DESTDIR:-}$prefix
install -d "$dest/lib/pkgconfig" "$dest/include"
install -m 755 "$target/release/librseq_malloc.so" "$dest/lib/librseq_malloc.so.$version"
ln -sf "librseq_malloc.so.$version" "$dest/lib/librseq_malloc.so.0"
ln -sf librseq_malloc.so.0 "$dest/lib/librseq_malloc.so"
install -m 644 "$target/release/librseq_malloc.a" "$dest/lib/librseq_malloc.a"
install -m 644 "$root/ffi/include/rseq_malloc.h" "$dest/include/rseq_malloc.h"
sed -e "s|@PREFIX@|$prefix|" -e "s|@VERSION@|$version|" "$root/ffi/rseq_malloc.pc.in" \
    > "$dest/lib/pkgconfig/rseq_malloc.pc"
echo "installed librseq_malloc $version under $dest"

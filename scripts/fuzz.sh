#!/usr/bin/env bash
# Builds every cargo-fuzz target, replays every committed corpus, and with FUZZ_SECS=N
# fuzzes each target for N seconds (new corpus entries stay uncommitted in
# <crate>/fuzz/corpus/<target>/; crashes land in <crate>/fuzz/artifacts/).
#   scripts/fuzz.sh                 build + replay all
#   scripts/fuzz.sh --build-only    build all targets (sanitizer build, as fuzzing needs)
#   scripts/fuzz.sh --check-only    type-check all targets with the fuzzing cfg, no
#                                   sanitizer or codegen (the CI step: a cold build-only
#                                   takes far more than 5 minutes on 2 cores)
#   FUZZ_SECS=30 scripts/fuzz.sh    build + replay + 30 s of fuzzing per target
#   FUZZ_ONLY=oci scripts/fuzz.sh   only the fuzz crates whose path contains "oci"
# Needs the nightly toolchain; installs cargo-fuzz when missing. Exits non-zero if any
# target fails to build, crashes on its corpus, or crashes while fuzzing.
set -uo pipefail
cd "$(dirname "$0")/.."
BUILD_ONLY=0
CHECK_ONLY=0
case "${1:-}" in
  --build-only) BUILD_ONLY=1 ;;
  --check-only) CHECK_ONLY=1 ;;
  "") ;;
  *) echo "usage: scripts/fuzz.sh [--build-only|--check-only]" >&2; exit 2 ;;
esac
# --check-only shares one target directory across the fuzz crates (their dependencies
# are mostly the same), next to the workspace's.
CHECK_TARGET=${CARGO_TARGET_DIR:-$PWD/target}/fuzz-check
SECS=${FUZZ_SECS:-0}
CRATES=(fuzz guest-agent/fuzz guest-image/fuzz oci/fuzz specs/fuzz vmm/fuzz)
# The workspace's CARGO_TARGET_DIR would mix sanitizer builds into it: each fuzz crate
# keeps its own target directory (ignored by git).
unset CARGO_TARGET_DIR

if ! rustup toolchain list | grep -q '^nightly'; then
  echo "fuzz.sh: the nightly toolchain is missing (rustup toolchain install nightly --profile minimal)" >&2
  exit 1
fi
if [ "$CHECK_ONLY" = 0 ] && ! cargo +nightly fuzz --version >/dev/null 2>&1; then
  echo "==> installing cargo-fuzz"
  cargo +nightly install cargo-fuzz --locked || exit 1
fi

RESULTS=()
FAILED=0
record() { RESULTS+=("$(printf '%-8s %-22s %-24s %s' "$1" "$2" "$3" "$4")"); [ "$1" = ok ] || FAILED=1; }

for crate in "${CRATES[@]}"; do
  [ -n "${FUZZ_ONLY:-}" ] && [[ "$crate" != *"$FUZZ_ONLY"* ]] && continue
  dir=${crate%/fuzz}
  [ "$dir" = fuzz ] && dir=.
  start=$SECONDS
  if [ "$CHECK_ONLY" = 1 ]; then
    printf '\n==> %s: cargo +nightly check --bins (cfg fuzzing)\n' "$crate"
    if RUSTFLAGS="--cfg fuzzing" CARGO_TARGET_DIR=$CHECK_TARGET \
      cargo +nightly check --quiet --manifest-path "$crate/Cargo.toml" --bins; then
      record ok "$crate" "(check)" "$((SECONDS - start))s"
    else
      record FAILED "$crate" "(check)" "$((SECONDS - start))s"
    fi
    continue
  fi
  printf '\n==> %s: cargo +nightly fuzz build\n' "$crate"
  if ! (cd "$dir" && cargo +nightly fuzz build); then
    record FAILED "$crate" "(build)" "$((SECONDS - start))s"
    continue
  fi
  record ok "$crate" "(build)" "$((SECONDS - start))s"
  [ "$BUILD_ONLY" = 1 ] && continue
  for target in $(cd "$dir" && cargo +nightly fuzz list); do
    corpus=$crate/corpus/$target
    seeds=$(find "$corpus" -type f 2>/dev/null | wc -l)
    if [ "$seeds" = 0 ]; then
      record FAILED "$crate" "$target" "no corpus at $corpus"
      continue
    fi
    printf '\n==> %s %s: replay %s seeds\n' "$crate" "$target" "$seeds"
    if ! (cd "$dir" && cargo +nightly fuzz run "$target" -- -runs=0); then
      record FAILED "$crate" "$target" "crashed on its corpus"
      continue
    fi
    if [ "$SECS" -gt 0 ]; then
      printf '\n==> %s %s: fuzz %ss\n' "$crate" "$target" "$SECS"
      if ! (cd "$dir" && cargo +nightly fuzz run "$target" -- -max_total_time="$SECS" -timeout=10); then
        record FAILED "$crate" "$target" "crashed while fuzzing (see $crate/artifacts/$target)"
        continue
      fi
      after=$(find "$corpus" -type f | wc -l)
      record ok "$crate" "$target" "$seeds seeds, $after after ${SECS}s"
    else
      record ok "$crate" "$target" "$seeds seeds replayed"
    fi
  done
done

printf '\n==> fuzz summary (total %ss)\n' "$SECONDS"
printf '%s\n' "${RESULTS[@]}"
exit "$FAILED"

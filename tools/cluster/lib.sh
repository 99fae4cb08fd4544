# Sourced by tools/cluster/up, down and exec: where the lab's binary is, built on demand.
# shellcheck shell=bash
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
bin="${CARGO_TARGET_DIR:-$root/target}/debug"
# shellcheck disable=SC2034 # used by the scripts that source this
lab="$bin/vesper-cluster-lab"

# Builds the lab's binary, and vesperd and vesper which run on the nodes.
build_lab() {
  cargo build --quiet --manifest-path "$root/Cargo.toml" \
    -p vesper-cluster-lab -p vesperd -p vesper-cli -p vesper-guest-kit --bins
}

# Shared by the scripts: one cargo target directory outside the clone, so the
# demo, the tests and CI steps reuse each other's builds.
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/tidewater/target}"
export CARGO_TERM_COLOR="${CARGO_TERM_COLOR:-never}"

# Sourced by the launch scripts: the jax release they install, and `run`.
# shellcheck shell=bash

# The jax release the project's tests run with (on CPU); the scripts install
# its TPU or CUDA build, pinned, so every host of a job runs the same one.
# shellcheck disable=SC2034  # Used by the scripts that source this file.
JAX_VERSION=0.10.2

# Runs a command, or with DRY_RUN=1 in the environment prints it instead.
run() {
  if [[ -n ${DRY_RUN:-} ]]; then
    echo "$*"
  else
    "$@"
  fi
}

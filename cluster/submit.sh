#!/usr/bin/env bash
# Submit an slg run to a Ray cluster from a checkout:
#   RAY_ADDRESS=http://HEAD:8265 cluster/submit.sh configs/llama1b_skywork8b.yaml [KEY=VALUE ...]
# The driver runs on the head node (no GPU), replicas on GPU workers. Results land in output_dir:
# a bucket (output_dir=s3://bucket/run1, staged and uploaded at each checkpoint) or shared storage
# the entrypoint's node writes to (output_dir=/mnt/shared/run1).
# Clusters started by `ray start` on Ray >= 2.60 use token authentication: RAY_AUTH_MODE=token.
set -euo pipefail
config=${1:?usage: cluster/submit.sh CONFIG.yaml [KEY=VALUE ...]}
shift
cd "$(dirname "$0")/.."
exec ray job submit --address "${RAY_ADDRESS:-http://127.0.0.1:8265}" \
  --runtime-env cluster/runtime_env.yaml --working-dir . -- \
  python -m pipeline.run run --config "$config" "$@"

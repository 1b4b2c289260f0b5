#!/bin/sh
# The `export` job of docker-compose.yml and deploy/kubernetes/export-job.yaml, run inside the `train` image:
# train a model and publish it as the next version in the model repository that the service polls.
#   MODEL_NAME    name in the repository (default: basicmotions)
#   TRAIN_CONFIG  TOML settings for `python -m models.train` (default: the demo model, configs/demo.toml)
#   DEMO_DATA     1 (default): first write the demo data set that configs/demo.toml reads; 0: bring your own
# The repository is SEQSERVE_MODEL_REPOSITORY (the image sets /models, the shared volume).
set -eu
name="${MODEL_NAME:-basicmotions}"
config="${TRAIN_CONFIG:-configs/demo.toml}"
run="runs/${name}-$(date -u +%Y%m%dT%H%M%SZ)"
if [ "${DEMO_DATA:-1}" = 1 ]; then
    python -m models.demo --out data/basicmotions.csv
fi
python -m models.train --config "$config" --out "$run"
exec python -m export "$run" --repository "$SEQSERVE_MODEL_REPOSITORY" --name "$name"

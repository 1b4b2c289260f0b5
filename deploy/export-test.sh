#!/usr/bin/env bash
# `make export-test`: the compose `export` flow with podman. Builds the train image, runs its command (the `export`
# job) into an empty "volume" folder, serves that folder with the serve-cpu image of `make image-test` as the compose
# file does (read-only, polling every 10 s), runs the export job again while predictions keep coming and checks that
# version 2 takes over without a failed request; then the same with polling off and SIGHUP as the reload.
# Needs what `make image-test` needs, and its image.
#   WHEELS  a folder of wheels to prefer during the train build (e.g. a CPU torch wheel); default: PyPI only
#   BASE, PORT (default 19081), SERVE_IMAGE, TRAIN_IMAGE
set -euo pipefail

base="${BASE:-localhost/seqserve-base:bookworm-python3.11}"
serve="${SERVE_IMAGE:-localhost/seqserve:serve-cpu}"
train="${TRAIN_IMAGE:-localhost/seqserve:train}"
port="${PORT:-19081}"
name="seqserve-export-test-$$"
work=".image"
volume="$work/volume-models"
read -r -a podman <<<"${PODMAN:-podman --runtime runc}"
limits=(--ulimit nofile=1024:1024 --ulimit nproc=4096:4096)

step() { printf '\n==> %s\n' "$*"; }
fail() { printf 'FAIL: %s\n' "$*" >&2; exit 1; }
cleanup() { "${podman[@]}" rm --force --ignore "$name" >/dev/null 2>&1 || true; }
trap cleanup EXIT

"${podman[@]}" image exists "$serve" || fail "$serve is missing: make image-test builds it"

step "podman build --target train -t $train"
mkdir -p "$work"
ca="${PIP_CERT:-/etc/ssl/certs/ca-certificates.crt}"
conf="[global]\n"
mounts=()
if [ -f "$ca" ]; then
    conf+="cert = /etc/pip-host-ca.crt\n"
    mounts+=(-v "$ca:/etc/pip-host-ca.crt:ro")
fi
if [ -n "${WHEELS:-}" ]; then
    conf+="find-links = /opt/host-wheels\n"
    mounts+=(-v "$(realpath "$WHEELS"):/opt/host-wheels:ro")
    echo "wheels from $WHEELS are preferred: $(ls "$WHEELS" | tr '\n' ' ')"
fi
printf "$conf" >"$work/pip-train.conf"
mounts+=(-v "$PWD/$work/pip-train.conf:/etc/pip.conf:ro")
"${podman[@]}" build --format docker "${limits[@]}" "${mounts[@]}" --target train \
    --build-arg "PYTHON_BASE=$base" -t "$train" .
echo "size $("${podman[@]}" image inspect --format '{{.Size}}' "$train") bytes"

# The compose `export` service: the train image's own command, with the volume mounted read-write. A script, so
# that switch_check can run it while it keeps predicting.
cat >"$work/export-job.sh" <<EOF
#!/usr/bin/env bash
set -euo pipefail
${podman[*]} run --rm ${limits[*]} -v "$PWD/$volume:/models" "$train" 2>&1 \\
    | grep -E "test accuracy|INFO export|Error" || true
EOF

serve_volume() {  # the compose `api` service (CPU override) on the volume, read-only
    "${podman[@]}" run -d --name "$name" "${limits[@]}" --read-only --tmpfs /tmp \
        -e SEQSERVE_POLL_INTERVAL="$1" -e SEQSERVE_WORKERS=2 \
        -p "127.0.0.1:$port:8000" -v "$PWD/$volume:/models:ro" "$serve" >/dev/null
    for _ in $(seq 240); do
        curl -fsS "http://127.0.0.1:$port/ready" >/dev/null 2>&1 && { curl -sS "http://127.0.0.1:$port/ready"; echo; return; }
        sleep 0.5
    done
    "${podman[@]}" logs "$name"
    fail "not ready"
}

stop_api() {
    "${podman[@]}" kill --signal TERM "$name" >/dev/null
    code=$(timeout 60 "${podman[@]}" wait "$name") || fail "did not stop"
    echo "SIGTERM -> exit code $code"
    [ "$code" = 0 ] || fail "exit code $code"
    "${podman[@]}" rm "$name" >/dev/null
}

step "an empty volume, owned by uid 10001 as Docker makes it from the image's /models"
rm -rf "$volume"
mkdir -p "$volume"
chown 10001:10001 "$volume"

step "export job 1: train the demo model and publish basicmotions/1"
start=$(date +%s)
bash "$work/export-job.sh"
test -f "$volume/basicmotions/1/manifest.json" || fail "no version 1"
echo "export job took $(($(date +%s) - start)) s"

step "api on the volume, polling every 10 s"
serve_volume 10

step "export job 2 while the api serves: version 2 must take over without a failed prediction"
python3 deploy/switch_check.py --url "http://127.0.0.1:$port" --model basicmotions --expect 2 --timeout 300 -- \
    bash "$work/export-job.sh" || fail "switch to version 2"
curl -sS "http://127.0.0.1:$port/v1/models/basicmotions" | python3 -c \
    'import json, sys; print("versions:", [(v["version"], v["state"]) for v in json.load(sys.stdin)["versions"]])'
stop_api

step "polling off: export job 3, then SIGHUP (docker compose kill -s SIGHUP api) makes the api load it"
serve_volume 0
bash "$work/export-job.sh"
answer=$(curl -sS -H 'Content-Type: application/json' -d '{"sequences": [[[0.1,0.2,0.3,0.4,0.5,0.6]]]}' \
    "http://127.0.0.1:$port/v1/models/basicmotions/predict")
echo "before SIGHUP: version $(echo "$answer" | python3 -c 'import json, sys; print(json.load(sys.stdin)["model_version"])')"
python3 deploy/switch_check.py --url "http://127.0.0.1:$port" --model basicmotions --expect 3 -- \
    "${podman[@]}" kill --signal HUP "$name" || fail "SIGHUP reload"
stop_api

step "export-test passed"

#!/usr/bin/env bash
# `make image-test`: build the serve-cpu image with podman, run it on 127.0.0.1 with a model repository mounted
# read-only, probe /ready and a prediction, run its HEALTHCHECK, then stop it with SIGTERM and check that gunicorn
# (PID 1) exits with 0. Run it by hand whenever the Dockerfile changes. Needs root, podman, runc, debootstrap, curl
# (apt-get install -y podman runc debootstrap curl nginx-light: nginx only checks deploy/nginx/nginx.conf).
#   REPOSITORY  model repository to mount (default: $SEQSERVE_MODEL_REPOSITORY or model_repository)
#   BASE        the Python 3.11 base image (default: a Debian bookworm one built by deploy/base-image.sh)
#   PORT        host port on 127.0.0.1 (default 19080)
#   NO_CACHE=1  build every layer again (podman build --no-cache)
set -euo pipefail

repository="${REPOSITORY:-${SEQSERVE_MODEL_REPOSITORY:-model_repository}}"
base="${BASE:-localhost/seqserve-base:bookworm-python3.11}"
image="${IMAGE:-localhost/seqserve:serve-cpu}"
port="${PORT:-19080}"
name="seqserve-image-test-$$"
work=".image"
# crun fails on this machine's hybrid cgroups, runc works; and the default rlimits are refused (explicit ones).
read -r -a podman <<<"${PODMAN:-podman --runtime runc}"
limits=(--ulimit nofile=1024:1024 --ulimit nproc=4096:4096)

step() { printf '\n==> %s\n' "$*"; }
fail() { printf 'FAIL: %s\n' "$*" >&2; exit 1; }
cleanup() { "${podman[@]}" rm --force --ignore "$name" >/dev/null 2>&1 || true; }
trap cleanup EXIT

for tool in podman runc curl; do
    command -v "$tool" >/dev/null || fail "$tool is missing: apt-get install -y podman runc debootstrap curl"
done
ls "$repository"/*/*/manifest.json >/dev/null 2>&1 || fail "no model version in $repository (make demo-model)"

step "base image $base"
if [ -z "${BASE:-}" ]; then
    bash deploy/base-image.sh "$base"
fi

step "pip inside the build: public PyPI, this host's CA bundle (its TLS goes through a proxy with its own CA)"
# The host's pip settings (find-links, local indexes) do not exist in the build; only the CA bundle is lent, as a
# build-time mount: nothing of it ends up in the image but an empty mount point.
mkdir -p "$work"
ca="${PIP_CERT:-/etc/ssl/certs/ca-certificates.crt}"
build_mounts=()
if [ -f "$ca" ]; then
    printf '[global]\ncert = /etc/pip-host-ca.crt\n' >"$work/pip.conf"
    build_mounts=(-v "$PWD/$work/pip.conf:/etc/pip.conf:ro" -v "$ca:/etc/pip-host-ca.crt:ro")
    echo "CA bundle: $ca"
fi

step "podman build --target serve-cpu --build-arg PYTHON_BASE=$base -t $image"
start=$(date +%s)
cache=()
[ "${NO_CACHE:-0}" = 1 ] && cache=(--no-cache)
"${podman[@]}" build --format docker "${cache[@]}" "${limits[@]}" "${build_mounts[@]}" --target serve-cpu \
    --build-arg "PYTHON_BASE=$base" -t "$image" .
echo "built in $(($(date +%s) - start)) s; size $("${podman[@]}" image inspect --format '{{.Size}}' "$image") bytes"

step "image configuration"
"${podman[@]}" image inspect --format \
    'User={{.Config.User}} Entrypoint={{json .Config.Entrypoint}} Cmd={{json .Config.Cmd}} StopSignal={{.Config.StopSignal}}
Volumes={{json .Config.Volumes}} ExposedPorts={{json .Config.ExposedPorts}} Healthcheck={{json .Config.Healthcheck}}' "$image"
[ "$("${podman[@]}" image inspect --format '{{.Config.User}}' "$image")" = "10001:10001" ] || fail "not uid 10001"
"${podman[@]}" run --rm "${limits[@]}" --entrypoint python "$image" - <<'EOF' || fail "image contents"
import importlib.metadata as md, importlib.util, sys
dists = {d.metadata["Name"].lower() for d in md.distributions()}
print("python", sys.version.split()[0], "| onnxruntime", md.version("onnxruntime"), "| seqserve", md.version("seqserve"))
assert importlib.util.find_spec("torch") is None, "torch in a serve image"
assert "onnxruntime-gpu" not in dists, "onnxruntime-gpu next to onnxruntime"
print("no torch, no onnxruntime-gpu")
EOF

step "nginx -t on deploy/nginx/nginx.conf (Debian's nginx)"
if command -v nginx >/dev/null; then
    mkdir -p "$work/nginx"
    nginx -t -q -c "$PWD/deploy/nginx/nginx.conf" -p "$PWD/$work/nginx/" && echo "nginx.conf: syntax ok"
else
    echo "nginx not installed: skipped (apt-get install -y nginx-light)"
fi

step "run $image on 127.0.0.1:$port, $repository mounted read-only at /models, read-only root filesystem"
# The repository is copied and given to uid 10001, as a volume filled by the export job would be (a local
# repository may hold root-only folders from older exports).
rm -rf "$work/models"
cp -a "$repository" "$work/models"
chown -R 10001:10001 "$work/models"
"${podman[@]}" run -d --name "$name" "${limits[@]}" --read-only --tmpfs /tmp \
    -e SEQSERVE_POLL_INTERVAL=2 -p "127.0.0.1:$port:8000" -v "$PWD/$work/models:/models:ro" "$image"

step "GET /ready until 200 (120 s at most)"
ready=""
for _ in $(seq 240); do
    state=$("${podman[@]}" inspect --format '{{.State.Status}}' "$name")
    [ "$state" = running ] || { "${podman[@]}" logs "$name"; fail "container $state"; }
    if curl -fsS "http://127.0.0.1:$port/ready" -o "$work/ready.json" 2>/dev/null; then ready=1; break; fi
    sleep 0.5
done
[ -n "$ready" ] || { curl -sS "http://127.0.0.1:$port/ready" || true; "${podman[@]}" logs "$name"; fail "not ready"; }
cat "$work/ready.json"; echo

model=$(basename "$(dirname "$(dirname "$(ls "$work"/models/*/*/manifest.json | head -1)")")")
step "POST /v1/models/$model/predict"
body='{"sequences": [[[0.1,0.2,0.3,0.4,0.5,0.6],[0.1,0.2,0.3,0.4,0.5,0.6]]]}'
code=$(curl -sS -o "$work/predict.json" -w '%{http_code}' -H 'Content-Type: application/json' \
    -H 'X-Request-ID: image-test' -d "$body" "http://127.0.0.1:$port/v1/models/$model/predict")
cat "$work/predict.json"; echo
[ "$code" = 200 ] || fail "predict answered $code"
grep -q '"predictions"' "$work/predict.json" || fail "no predictions"

old=$(ls "$work/models/$model" | grep -E '^[0-9]+$' | sort -n | tail -1)
new=$((old + 1))
step "publish $model/$new into the mounted repository while predictions keep coming (the container polls every 2 s)"
# As `python -m export` publishes: a hidden folder first, then one rename. The copy gets its number in the manifest.
publish_copy() {
    local dir="$1" old="$2" new="$3"
    cp -a "$dir/$old" "$dir/.tmp-image-test"
    python3 -c 'import json, sys; p, v = sys.argv[1:]; m = json.load(open(p)); m["version"] = int(v); json.dump(m, open(p, "w"))' \
        "$dir/.tmp-image-test/manifest.json" "$new"
    chown -R 10001:10001 "$dir/.tmp-image-test"
    mv "$dir/.tmp-image-test" "$dir/$new"
}
export -f publish_copy
python3 deploy/switch_check.py --url "http://127.0.0.1:$port" --model "$model" --expect "$new" -- \
    bash -c 'publish_copy "$@"' publish "$work/models/$model" "$old" "$new" || fail "new version"

step "HEALTHCHECK (podman healthcheck run)"
"${podman[@]}" healthcheck run "$name" && echo healthy || fail "unhealthy"

step "PID 1 and user inside the container"
"${podman[@]}" exec "$name" sh -c 'echo "PID 1: $(tr "\0" " " </proc/1/cmdline)"; echo "uid: $(id -u)"'

step "SIGTERM to PID 1 (what docker stop sends), wait for the exit"
"${podman[@]}" kill --signal TERM "$name" >/dev/null
exit_code=$(timeout 60 "${podman[@]}" wait "$name") || fail "did not exit within 60 s"
"${podman[@]}" logs "$name" 2>&1 | tail -n 8
echo "exit code: $exit_code"
[ "$exit_code" = 0 ] || fail "exit code $exit_code"
"${podman[@]}" logs "$name" 2>&1 | grep -q "Shutting down: Master" || fail "no graceful shutdown in the log"

step "image-test passed"

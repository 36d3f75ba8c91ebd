#!/usr/bin/env bash
# Foundation benchmarks (release build), each in a fresh temporary YUN_HOME:
#   1. `yun up -d` of the example shop to ready: cold (daemon not running) and warm;
#   2. API latency of `GET /api/v1/apps/{name}` (what `yun status` calls), with wrk;
#   3. time and daemon RSS to bring 200 single-instance webservices to ready;
#   4. idle daemon RSS and CPU with the example running.
# Needs wrk (Debian package `wrk`); installs it when apt-get is available.
set -euo pipefail
cd "$(dirname "$0")/.."

RUNS=${RUNS:-10}
if ! command -v wrk >/dev/null; then
  apt-get install -y wrk >/dev/null 2>&1 || { echo "wrk is required (apt-get install wrk)"; exit 1; }
fi
cargo build --release --workspace >/dev/null 2>&1
YUN=$PWD/target/release/yun
SHOP=$PWD/target/release/shop
TESTSVC=$PWD/target/release/yun-testsvc

work=$(mktemp -d)
export YUN_HOME=$work/home YUN_LISTEN=127.0.0.1:0
cleanup() {
  [ -f "$YUN_HOME/daemon.json" ] && kill "$(sed -n 's/.*"pid": *\([0-9]*\).*/\1/p' "$YUN_HOME/daemon.json")" 2>/dev/null || true
  sleep 1
  rm -rf "$work"
}
trap cleanup EXIT

now_ms() { date +%s%3N; }
daemon_pid() { sed -n 's/.*"pid": *\([0-9]*\).*/\1/p' "$YUN_HOME/daemon.json"; }
rss_kb() { awk '/VmRSS/ {print $2}' "/proc/$1/status"; }
cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
percentile() { sort -n | awk -v p="$1" '{a[NR]=$1} END {i=int((NR*p+99)/100); if (i<1) i=1; print a[i]}'; }

port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
sed -e "s#../../target/release/shop#$SHOP#" -e "s#port: 8080#port: $port#" examples/shop/app.yaml > "$work/shop.yaml"

echo "## 1. yun up -d of the example shop to ready ($RUNS runs each)"
cold=()
for _ in $(seq "$RUNS"); do
  t0=$(now_ms); "$YUN" up -d -f "$work/shop.yaml" >/dev/null 2>&1; t1=$(now_ms)
  cold+=($((t1 - t0)))
  "$YUN" delete shop >/dev/null
  kill "$(daemon_pid)"; while [ -f "$YUN_HOME/daemon.json" ]; do sleep 0.05; done
done
warm=()
"$YUN" up -d -f "$work/shop.yaml" >/dev/null 2>&1; "$YUN" delete shop >/dev/null
for _ in $(seq "$RUNS"); do
  t0=$(now_ms); "$YUN" up -d -f "$work/shop.yaml" >/dev/null 2>&1; t1=$(now_ms)
  warm+=($((t1 - t0)))
  "$YUN" delete shop >/dev/null
done
printf 'cold (starts the daemon): median %s ms, max %s ms\n' "$(printf '%s\n' "${cold[@]}" | percentile 50)" "$(printf '%s\n' "${cold[@]}" | percentile 100)"
printf 'warm (daemon running):    median %s ms, max %s ms\n' "$(printf '%s\n' "${warm[@]}" | percentile 50)" "$(printf '%s\n' "${warm[@]}" | percentile 100)"

echo
echo "## 2. API latency: GET /api/v1/apps/shop (yun status), 1 connection, 10 s"
"$YUN" up -d -f "$work/shop.yaml" >/dev/null 2>&1
addr=$(sed -n 's/.*"addr": *"\([^"]*\)".*/\1/p' "$YUN_HOME/daemon.json")
token=$(cat "$YUN_HOME/token")
wrk -t1 -c1 -d10s --latency -H "Authorization: Bearer $token" "http://$addr/api/v1/apps/shop" | sed -n '/Latency Distribution/,/Requests\/sec/p'
echo "and 4 connections:"
wrk -t2 -c4 -d10s --latency -H "Authorization: Bearer $token" "http://$addr/api/v1/apps/shop" | sed -n '/Latency Distribution/,/Requests\/sec/p'

echo
echo "## 4. idle daemon with the example running (30 s)"
pid=$(daemon_pid)
sleep 5
c0=$(cpu_ticks "$pid"); sleep 30; c1=$(cpu_ticks "$pid")
hz=$(getconf CLK_TCK)
echo "daemon RSS: $(( $(rss_kb "$pid") / 1024 )) MiB; CPU: $(awk -v d=$((c1 - c0)) -v hz="$hz" 'BEGIN {printf "%.2f", d / hz / 30 * 100}') % of one core"
"$YUN" delete shop >/dev/null

echo
echo "## 3. 200 single-instance webservices to ready"
{
  echo "apiVersion: core.oam.dev/v1beta1"
  echo "kind: Application"
  echo "metadata: {name: many}"
  echo "spec:"
  echo "  components:"
  for i in $(seq 1 200); do
    echo "    - {name: svc-$i, type: webservice, properties: {cmd: [\"$TESTSVC\"]}}"
  done
} > "$work/many.yaml"
t0=$(now_ms); "$YUN" up -d -f "$work/many.yaml" --timeout 300 >/dev/null 2>&1; t1=$(now_ms)
echo "200 components ready in $((t1 - t0)) ms; daemon RSS $(( $(rss_kb "$pid") / 1024 )) MiB"
sleep 10
c0=$(cpu_ticks "$pid"); sleep 20; c1=$(cpu_ticks "$pid")
echo "idle with 200 components: RSS $(( $(rss_kb "$pid") / 1024 )) MiB; CPU: $(awk -v d=$((c1 - c0)) -v hz="$hz" 'BEGIN {printf "%.2f", d / hz / 20 * 100}') % of one core"
t0=$(now_ms); "$YUN" delete many >/dev/null; t1=$(now_ms)
echo "delete of 200 components: $((t1 - t0)) ms"

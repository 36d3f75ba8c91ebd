#!/usr/bin/env bash
# Data-plane benchmark, side by side on one machine in one run: a trivial upstream (nginx,
# `return 200`) reached four ways — direct, through Yun's service address, through HAProxy and
# through nginx as a proxy (both from Debian, configured equivalently: one worker/thread,
# keep-alive to the upstream, no logging, the client's Host kept, and the request fields Yun
# adds — X-Forwarded-For and a caller identity, x-yun-caller — added by them too, so the
# upstream parses the same). Each path gets fixed-rate load (1k and 5k req/s, open loop with
# latency correction) and maximum throughput; the proxy's RSS and CPU are read from /proc.
# Proxies run on core 0; the load generator and upstream on core 1. Yun runs twice, as
# configured by default (every request traced) and with `--tracing off`, to show what tracing
# costs.
#
# Needs: haproxy, nginx (apt), oha (cargo install oha). Installs what is missing.
# Usage: [RATES="1000 5000 max"] [RAW=file] scripts/bench-proxy.sh [seconds per run, default 10]
#        [runs per cell, default 3]
# Each figure is the median over the runs; each run takes the paths in a rotated order. Yun is
# also compared with HAProxy run by run (the difference of their p99s, the ratio of their
# throughputs), which cancels the machine's slow drifts between runs.
set -euo pipefail
cd "$(dirname "$0")/.."

SECS=${1:-10}
REPS=${2:-3}
# Which loads to run, e.g. RATES=5000 for more runs of one cell in the same time.
RATES=${RATES:-1000 5000 max}
# Every run's figures are kept here, for comparisons the summary does not make.
RAW=${RAW:-target/bench-proxy-runs.txt}
for pkg in haproxy nginx; do
  command -v "$pkg" >/dev/null || apt-get install -y --no-install-recommends "$pkg" >/dev/null
done
command -v oha >/dev/null || cargo install oha --locked >/dev/null
cargo build --release -p yun >/dev/null 2>&1
YUN=$PWD/target/release/yun

work=$(mktemp -d)
export YUN_HOME=$work/home YUN_LISTEN=127.0.0.1:0
pids=()
cleanup() {
  for h in "$work/home" "$work/home2"; do
    YUN_HOME=$h "$YUN" delete bench >/dev/null 2>&1 || true
    [ -f "$h/daemon.json" ] && kill "$(YUN_HOME=$h daemon_pid)" 2>/dev/null || true
  done
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  sleep 1
  rm -rf "$work"
}
trap cleanup EXIT
daemon_pid() { sed -n 's/.*"pid": *\([0-9]*\).*/\1/p' "$YUN_HOME/daemon.json"; }
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

# The upstream: nginx as a Yun component, so Yun proxies to an instance it runs; the other
# paths reach the same instance port.
mkdir -p "$work/up"
cat > "$work/up/nginx.tmpl" <<'EOF'
worker_processes 1;
daemon off;
pid WORK/up/nginx-PORT.pid;
error_log stderr error;
events { worker_connections 4096; }
http {
  access_log off;
  keepalive_requests 100000;
  server { listen 127.0.0.1:PORT; location / { return 200 "hello\n"; } }
}
EOF
sed -i "s#WORK#$work#" "$work/up/nginx.tmpl"
svc_port=$(free_port)
cat > "$work/bench.yaml" <<EOF
apiVersion: core.oam.dev/v1beta1
kind: Application
metadata: {name: bench}
spec:
  components:
    - name: upstream
      type: webservice
      properties:
        cmd: ["sh", "-c", "sed s/PORT/\$PORT/ $work/up/nginx.tmpl > $work/up/nginx.conf && exec taskset -c 1 nginx -c $work/up/nginx.conf"]
        ports: [{port: $svc_port}]
EOF
start_daemon() { # home, extra flags...
  local home=$1; shift
  YUN_HOME=$home TOKIO_WORKER_THREADS=1 taskset -c 0 "$YUN" server --gateway off --gateway-tls off \
    --otlp 127.0.0.1:0 "$@" >"$home.log" 2>&1 &
  pids+=($!)
  for _ in $(seq 100); do [ -f "$home/daemon.json" ] && break; sleep 0.05; done
}
start_daemon "$work/home"
"$YUN" up -d -f "$work/bench.yaml" >/dev/null
svc_port2=$(free_port)
sed "s/port: $svc_port/port: $svc_port2/" "$work/bench.yaml" > "$work/bench2.yaml"
start_daemon "$work/home2" --tracing off
YUN_HOME=$work/home2 "$YUN" up -d -f "$work/bench2.yaml" >/dev/null
up_port=$("$YUN" status bench -o json | python3 -c 'import json,sys; print(json.load(sys.stdin)["components"][0]["instances"][0]["ports"][0])')

hap_port=$(free_port)
cat > "$work/haproxy.cfg" <<EOF
global
  nbthread 1
defaults
  mode http
  timeout connect 1s
  timeout client 30s
  timeout server 30s
frontend fe
  bind 127.0.0.1:$hap_port
  default_backend be
backend be
  http-reuse safe
  option forwardfor
  http-request set-header x-yun-caller external
  server u 127.0.0.1:$up_port
EOF
taskset -c 0 haproxy -f "$work/haproxy.cfg" >/dev/null 2>&1 &
pids+=($!)
hap_pid=$!

ngx_port=$(free_port)
mkdir -p "$work/ngx"
cat > "$work/ngx/nginx.conf" <<EOF
worker_processes 1;
daemon off;
pid $work/ngx/nginx.pid;
error_log stderr error;
events { worker_connections 4096; }
http {
  access_log off;
  upstream up { server 127.0.0.1:$up_port; keepalive 64; }
  server {
    listen 127.0.0.1:$ngx_port;
    location / {
      proxy_pass http://up; proxy_http_version 1.1; proxy_set_header Connection "";
      proxy_set_header Host \$host;
      proxy_set_header X-Forwarded-For \$proxy_add_x_forwarded_for;
      proxy_set_header x-yun-caller external;
    }
  }
}
EOF
taskset -c 0 nginx -c "$work/ngx/nginx.conf" >/dev/null 2>&1 &
ngx_master=$!
pids+=($ngx_master)
sleep 1
ngx_pids="$ngx_master,$(pgrep -P "$ngx_master" | tr '\n' ',' | sed 's/,$//')"

# Path name, port, pids of the proxy ("-" for direct).
paths=("direct $up_port -" "yun $svc_port $(daemon_pid)" "yun-untraced $svc_port2 $(YUN_HOME=$work/home2 daemon_pid)"
  "haproxy $hap_port $hap_pid" "nginx $ngx_port $ngx_pids")

rss_kb() { local t=0; for p in ${1//,/ }; do t=$((t + $(awk '/VmRSS/ {print $2}' "/proc/$p/status"))); done; echo $t; }
hwm_kb() { local t=0; for p in ${1//,/ }; do t=$((t + $(awk '/VmHWM/ {print $2}' "/proc/$p/status"))); done; echo $t; }
ticks() { local t=0; for p in ${1//,/ }; do t=$((t + $(awk '{print $14 + $15}' "/proc/$p/stat"))); done; echo $t; }
hz=$(getconf CLK_TCK)

run_oha() { # port, rate or "max"
  local args=(-z "${SECS}s" -c 16 --no-tui --output-format json)
  if [ "$2" = max ]; then args=(-z "${SECS}s" -c 64 --no-tui --output-format json); else args+=(-q "$2" --latency-correction); fi
  taskset -c 1 oha "${args[@]}" "http://127.0.0.1:$1/" 2>/dev/null
}

# Warm-up.
for p in "${paths[@]}"; do set -- $p; taskset -c 1 oha -z 2s -c 16 --no-tui "http://127.0.0.1:$2/" >/dev/null 2>&1; done

results=$work/results.txt
: > "$results"
for rep in $(seq "$REPS"); do
# Each run starts the order one path later, so no path always follows the same one.
shift_by=$(( (rep - 1) % ${#paths[@]} ))
ordered=("${paths[@]:shift_by}" "${paths[@]:0:shift_by}")
for rate in $RATES; do
  for p in "${ordered[@]}"; do
    set -- $p
    name=$1; port=$2; pp=$3
    t0=0; [ "$pp" != - ] && t0=$(ticks "$pp")
    json=$(run_oha "$port" "$rate")
    t1=0; [ "$pp" != - ] && t1=$(ticks "$pp")
    rss=-; hwm=-; cpu=-
    if [ "$pp" != - ]; then
      rss=$(( $(rss_kb "$pp") / 1024 )); hwm=$(( $(hwm_kb "$pp") / 1024 ))
      cpu=$(awk -v d=$((t1 - t0)) -v hz="$hz" -v s="$SECS" 'BEGIN {printf "%.0f", d / hz / s * 100}')
    fi
    echo "$json" | python3 -c "
import json,sys
d=json.load(sys.stdin)
lat=d.get('latencyPercentiles',{})
s=d['summary']
codes=d.get('statusCodeDistribution',{})
# Requests still in flight when oha's deadline passes are not failures.
errors={k: v for k, v in d.get('errorDistribution',{}).items() if k != 'aborted due to deadline'}
ok=codes.get('200',0); total=sum(codes.values()) + sum(errors.values())
print('$rep $rate $name %.1f %.1f %.0f %d %d $rss $hwm $cpu' % (lat['p50']*1e6, lat['p99']*1e6, s['requestsPerSec'], ok, total))
" >> "$results"
  done
done
done

mkdir -p "$(dirname "$RAW")" && cp "$results" "$RAW"
python3 - "$results" "$SECS" "$REPS" <<'EOF'
import sys, statistics
# Row: run rate path p50 p99 req/s ok total rss hwm cpu
rows=[l.split() for l in open(sys.argv[1])]
secs, reps = sys.argv[2], sys.argv[3]
groups={}
cell={}
for r in rows:
    groups.setdefault((r[1],r[2]),[]).append(r[1:])
    cell[(r[0],r[1],r[2])]=r[1:]
def med(rs, i):
    vals=[float(r[i]) for r in rs if r[i] != "-"]
    return f"{statistics.median(vals):.1f}" if vals else "-"
def spread(rs, i):
    vals=sorted(float(r[i]) for r in rs)
    return f"{vals[0]:.0f}-{vals[-1]:.0f}"
# One row per (rate, path): the median of each column over the runs.
by={k:[k[0],k[1]]+[med(v,i) for i in range(2,10)] for k,v in groups.items()}
def paired(rate, name, i):
    # Yun against HAProxy within each run (minutes apart): slow drifts of the machine
    # cancel, which the medians of each path alone do not do.
    runs=sorted({r[0] for r in rows}, key=int)
    return [(float(cell[(run,rate,name)][i]), float(cell[(run,rate,'haproxy')][i]))
            for run in runs if (run,rate,name) in cell and (run,rate,'haproxy') in cell]
print(f"Side-by-side proxy benchmark ({secs} s per run, median of {reps} runs, 16 connections at fixed rates, 64 at max)")
for rate in [r for r in ["1000","5000","max"] if (r,"direct") in by]:
    d=by[(rate,"direct")]
    print()
    if rate=="max":
        print("max throughput | req/s | vs HAProxy | range | proxy RSS MiB (peak) | proxy CPU % | CPU µs/request")
        for name in ["direct","yun","yun-untraced","haproxy","nginx"]:
            r=by[(rate,name)]
            ratio=float(r[4])/float(by[(rate,'haproxy')][4])
            per=f"{float(r[9])/100/float(r[4])*1e6:.1f}" if r[9] != "-" else "-"
            print(f"{name:8} | {float(r[4]):9.0f} | {ratio:5.2f}x | {spread(groups[(rate,name)],4)} | {r[7]} ({r[8]}) | {r[9]} | {per}")
        for name in ["yun","yun-untraced"]:
            p=paired(rate,name,4)
            wins=sum(1 for y,h in p if y>=h)
            print(f"per run, {name}/haproxy req/s: median {statistics.median(y/h for y,h in p):.2f}, at least HAProxy's in {wins} of {len(p)} runs")
    else:
        print(f"{rate} req/s | p50 µs | p99 µs | p99 range | added p50 | added p99 | ok/total | RSS MiB (peak) | CPU %")
        for name in ["direct","yun","yun-untraced","haproxy","nginx"]:
            r=by[(rate,name)]
            a50=float(r[2])-float(d[2]); a99=float(r[3])-float(d[3])
            print(f"{name:8} | {float(r[2]):7.0f} | {float(r[3]):7.0f} | {spread(groups[(rate,name)],3)} | {a50:+7.0f} | {a99:+7.0f} | {float(r[5]):.0f}/{float(r[6]):.0f} | {r[7]} ({r[8]}) | {r[9]}")
        h=by[(rate,'haproxy')]
        ah=float(h[3])-float(d[3])
        for name in ["yun","yun-untraced"]:
            ay=float(by[(rate,name)][3])-float(d[3])
            print(f"added p99 {name}/haproxy: {ay/ah:.2f}" if ah>0 else "added p99 haproxy <= 0")
            diffs=[y-h for y,h in paired(rate,name,3)]
            wins=sum(1 for x in diffs if x<=0)
            print(f"  per run, {name} p99 minus HAProxy's: median {statistics.median(diffs):+.0f} µs, mean {statistics.mean(diffs):+.0f}, no worse in {wins} of {len(diffs)} runs")
EOF

#!/usr/bin/env bash
# Signals, log files and the Istio bootstrap golden as pilot-agent starts skiff.
. "$(dirname "$0")/lib.sh"
DEMO=$SRCDIR/tools/examples/demo-bootstrap.yaml

# SIGTERM: a graceful exit with status 0.
start_skiff -c "$DEMO" --config-yaml "$ADMIN_PORT0" --concurrency 3 || exit 1
check "3 workers start" bash -c "curl -sS '$ADMIN/stats?filter=workers_started' | grep -qx 'listener_manager.workers_started: 1'"
check "the process has 3 worker threads besides main" [ "$(ls /proc/$SKIFF_PID/task | wc -l)" -ge 4 ]
stop_skiff TERM
check "SIGTERM exits 0" [ "$SKIFF_RC" = 0 ]

# SIGINT too.
start_skiff -c "$DEMO" --config-yaml "$ADMIN_PORT0" || exit 1
stop_skiff INT
check "SIGINT exits 0" [ "$SKIFF_RC" = 0 ]

# SIGUSR1 reopens --log-path (what logrotate relies on).
start_skiff -c "$DEMO" --config-yaml "$ADMIN_PORT0" --log-path "$WORK/a.log" -l debug || exit 1
check "the log goes to --log-path" grep -q 'admin address' "$WORK/a.log"
mv "$WORK/a.log" "$WORK/a.log.1"
kill -USR1 "$SKIFF_PID"
for _ in $(seq 30); do [ -s "$WORK/a.log" ] && break; sleep 0.1; done
curl -sS -X POST "$ADMIN/logging?level=debug" >/dev/null
check "SIGUSR1 reopens the log file" [ -s "$WORK/a.log" ]
check "the reopened file gets new lines" grep -q 'SIGUSR1' "$WORK/a.log.1"
stop_skiff TERM
check "exit 0 after the log was reopened" [ "$SKIFF_RC" = 0 ]

# Istio's bootstrap golden, admin moved to a free port: it names ADS, so the server waits for
# its first CDS and LDS (INITIALIZING, /ready 503) exactly as Envoy's init manager does.
start_skiff -c "$SHARED/istio/04-bootstrap/all_golden.json" --config-yaml "$ADMIN_PORT0" \
  --allow-unknown-static-fields --drain-time-s 45 --drain-strategy immediate \
  --local-address-ip-version v4 --file-flush-interval-msec 1000 --disable-hot-restart \
  -l warning --component-log-level misc:error || exit 1
check "golden: /ready is 503 before xDS" [ "$(http_code "$ADMIN/ready")" = 503 ]
check "golden: /ready names the state" [ "$(curl -sS "$ADMIN/ready")" = INITIALIZING ]
check "golden: server.state is 3 (INITIALIZING)" bash -c "curl -sS --globoff '$ADMIN/stats?usedonly&filter=^(server\.state|listener_manager\.workers_started)' | grep -qx 'server.state: 3'"
check "golden: /server_info carries Istio's node metadata" bash -c "curl -sS '$ADMIN/server_info' | jq -e '.node.metadata.ISTIO_VERSION != null' >/dev/null"
check "golden: Istio's stats_tags extract cluster_name" bash -c "curl -sS '$ADMIN/config_dump?mask=bootstrap.stats_config' | jq -e '.configs[0].bootstrap.stats_config.stats_tags | length > 5' >/dev/null"
curl -sS "$ADMIN/stats/prometheus" >"$WORK/prom.txt"
check "golden: /stats/prometheus passes promtool" "$(dirname "$0")/promcheck.sh" "$WORK/prom.txt"
stop_skiff TERM
check "golden: SIGTERM exits 0" [ "$SKIFF_RC" = 0 ]

# The golden's application_log_config (Istio's text format) shapes every log line.
"$SKIFF" --mode init_only --allow-unknown-static-fields -l info \
  -c "$SHARED/istio/04-bootstrap/default_golden.json" --config-yaml "$ADMIN_PORT0" 2>"$WORK/fmt.log"
check "golden: its application_log_config shapes the log lines" grep -Pq '^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z\tinfo\tenvoy main agent/server\.c:\d+\tadmin address: .*\tthread=\d+$' "$WORK/fmt.log"

# --config-yaml merges over the file as protobuf's MergeFrom does: the admin port changes and
# its address stays, node.cluster is replaced, and a static cluster is appended.
start_skiff -c "$SHARED/istio/04-bootstrap/default_golden.json" --allow-unknown-static-fields \
  --config-yaml '{admin: {address: {socket_address: {port_value: 0}}}, node: {cluster: merged.ns},
    static_resources: {clusters: [{name: extra, type: STATIC, load_assignment: {cluster_name: extra,
    endpoints: [{lb_endpoints: [{endpoint: {address: {socket_address: {address: 127.0.0.2, port_value: 1}}}}]}]}}]}}' || exit 1
check "merge: the admin address keeps the file's IP" grep -q '^127\.0\.0\.1:[0-9]' "$WORK/admin"
check "merge: node.cluster is replaced, node.id kept" bash -c "curl -sS '$ADMIN/server_info' | jq -e '.node.cluster == \"merged.ns\" and (.node.id | startswith(\"sidecar~\"))' >/dev/null"
check "merge: the static cluster is appended to the file's" bash -c "curl -sS '$ADMIN/clusters' | grep -q '^extra::127.0.0.2:1::health_flags' && curl -sS '$ADMIN/clusters' | grep -q '^xds-grpc::'"
stop_skiff TERM

# --mode init_only: initializes, then exits 0.
"$SKIFF" --mode init_only -c "$DEMO" --config-yaml "$ADMIN_PORT0" 2>"$WORK/init.log"; rc=$?
check "--mode init_only exits 0" [ $rc -eq 0 ]

# A port already taken: start-up fails with a clear message and exit 1.
/usr/bin/python3 -c 'import socket,time,sys
s=socket.socket(); s.bind(("127.0.0.1",0)); s.listen(1)
open(sys.argv[1],"w").write(str(s.getsockname()[1])); time.sleep(20)' "$WORK/port" &
holder=$!
for _ in $(seq 50); do [ -s "$WORK/port" ] && break; sleep 0.1; done
taken=$(cat "$WORK/port")
"$SKIFF" -c "$DEMO" --config-yaml "{admin: {address: {socket_address: {address: 127.0.0.1, port_value: $taken}}}}" 2>"$WORK/taken.log"; rc=$?
kill "$holder" 2>/dev/null; wait "$holder" 2>/dev/null
check "a taken admin port exits 1" [ $rc -eq 1 ]
check "a taken admin port is named in the log" grep -q "127.0.0.1:$taken" "$WORK/taken.log"
finish

#!/usr/bin/env bash
# The admin API over real HTTP/1.1 with curl: what pilot-agent, istioctl and Prometheus call.
. "$(dirname "$0")/lib.sh"
DEMO=$SRCDIR/tools/examples/demo-bootstrap.yaml
C="curl -sS --globoff"

start_skiff -c "$DEMO" --config-yaml "$ADMIN_PORT0" --concurrency 2 -l debug \
  --drain-time-s 45 --drain-strategy immediate || exit 1

# /ready
check "/ready is 200 when LIVE" [ "$(http_code "$ADMIN/ready")" = 200 ]
check "/ready says LIVE" [ "$($C "$ADMIN/ready")" = LIVE ]

# pilot-agent's readiness queries, sent raw and unescaped as it sends them
body=$($C "$ADMIN/stats?usedonly&filter=^(server\.state|listener_manager\.workers_started)")
check "readiness query returns server.state: 0" grep -qx 'server.state: 0' <<<"$body"
check "readiness query returns listener_manager.workers_started: 1" grep -qx 'listener_manager.workers_started: 1' <<<"$body"
check "readiness query returns nothing else" [ "$(wc -l <<<"$body")" -eq 2 ]
body=$($C "$ADMIN/stats?usedonly&filter=^(cluster_manager\.cds|listener_manager\.lds)\.(update_success|update_rejected)\$")
check "config query answers 200 (empty without xDS)" [ "$(http_code --globoff "$ADMIN/stats?usedonly&filter=^(cluster_manager\.cds|listener_manager\.lds)\.(update_success|update_rejected)\$")" = 200 ]
body=$($C "$ADMIN/stats")
for s in server.state server.live server.uptime server.concurrency server.memory_allocated \
         server.memory_heap_size listener_manager.workers_started; do
  check "/stats has $s" grep -q "^$s: [0-9]" <<<"$body"
done
check "server.concurrency is --concurrency" grep -qx 'server.concurrency: 2' <<<"$body"
check "server.live is 1" grep -qx 'server.live: 1' <<<"$body"
check "/stats with a bad regex is 400" [ "$(http_code --globoff "$ADMIN/stats?filter=(unclosed")" = 400 ]
check "/stats?format=json is JSON with a stats array" bash -c "$C '$ADMIN/stats?format=json' | jq -e '.stats | length > 5' >/dev/null"

# Prometheus
$C "$ADMIN/stats/prometheus" >"$WORK/prom.txt"
check "/stats/prometheus passes promtool check metrics" "$(dirname "$0")/promcheck.sh" "$WORK/prom.txt"
check "/stats/prometheus has envoy_server_state" grep -q '^envoy_server_state{} 0$' "$WORK/prom.txt"
check "/stats/prometheus has a TYPE line per family" grep -qx '# TYPE envoy_server_live gauge' "$WORK/prom.txt"
check "/stats/prometheus has Envoy's content type" bash -c "curl -sSI '$ADMIN/stats/prometheus' | grep -qi '^content-type: text/plain; version=0.0.4'"
check "/stats?format=prometheus is the same format" bash -c "$C '$ADMIN/stats?format=prometheus' | grep -q '^# TYPE envoy_server_state gauge'"

# /server_info
$C "$ADMIN/server_info" >"$WORK/si.json"
check "/server_info state is LIVE" jq -e '.state == "LIVE"' "$WORK/si.json"
check "/server_info version has Envoy's shape" jq -e '.version | test("^[0-9a-f]{40}/[0-9.]+/(Clean|Modified)/(RELEASE|DEBUG)/OpenSSL$")' "$WORK/si.json"
check "/server_info has the node" jq -e '.node.id == "sidecar~127.0.0.1~demo-v1-0.default~default.svc.cluster.local"' "$WORK/si.json"
check "/server_info node metadata is plain JSON" jq -e '.node.metadata.LABELS.app == "demo"' "$WORK/si.json"
check "/server_info command_line_options.concurrency" jq -e '.command_line_options.concurrency == 2' "$WORK/si.json"
check "/server_info command_line_options.drain_time" jq -e '.command_line_options.drain_time == "45s"' "$WORK/si.json"
check "/server_info command_line_options.drain_strategy" jq -e '.command_line_options.drain_strategy == "Immediate"' "$WORK/si.json"
check "/server_info uptime is a duration" jq -e '.uptime_current_epoch | test("^[0-9]+s$")' "$WORK/si.json"
check "/server_info hot_restart_version" jq -e '.hot_restart_version == "disabled"' "$WORK/si.json"

# /config_dump
$C "$ADMIN/config_dump" >"$WORK/cd.json"
check "/config_dump has the BootstrapConfigDump" jq -e '.configs[0]["@type"] == "type.googleapis.com/envoy.admin.v3.BootstrapConfigDump"' "$WORK/cd.json"
check "/config_dump echoes the bootstrap node" jq -e '.configs[0].bootstrap.node.cluster == "demo.default"' "$WORK/cd.json"
check "/config_dump echoes typed_config with @type" jq -e '.configs[0].bootstrap.static_resources.listeners[0].filter_chains[0].filters[0].typed_config["@type"] | endswith("HttpConnectionManager")' "$WORK/cd.json"
check "/config_dump durations are strings" jq -e '.configs[0].bootstrap.static_resources.clusters[0].connect_timeout == "0.250s"' "$WORK/cd.json"
check "/config_dump has last_updated" jq -e '.configs[0].last_updated | test("^[0-9-]+T[0-9:.]+Z$")' "$WORK/cd.json"
check "/config_dump sections come in Envoy's order" jq -e '[.configs[]["@type"] | sub(".*\\.";"")] == ["BootstrapConfigDump","ClustersConfigDump","ListenersConfigDump","ScopedRoutesConfigDump","RoutesConfigDump","SecretsConfigDump"]' "$WORK/cd.json"
check "/config_dump static_clusters carry their @type" jq -e '.configs[1].static_clusters[0].cluster["@type"] == "type.googleapis.com/envoy.config.cluster.v3.Cluster" and .configs[1].static_clusters[0].cluster.name == "prometheus_stats"' "$WORK/cd.json"
check "/config_dump static_listeners" jq -e '.configs[2].static_listeners[0].listener.name == "0.0.0.0_15090"' "$WORK/cd.json"
check "/config_dump?include_eds adds the EndpointsConfigDump" jq -e '.configs[2]["@type"] == "type.googleapis.com/envoy.admin.v3.EndpointsConfigDump" and .configs[2].static_endpoint_configs[0].endpoint_config.cluster_name == "prometheus_stats"' <($C "$ADMIN/config_dump?include_eds")
check "/config_dump?resource=static_clusters lists clusters one by one" jq -e '(.configs | length) == 2 and .configs[0]["@type"] == "type.googleapis.com/envoy.admin.v3.ClustersConfigDump.StaticCluster"' <($C "$ADMIN/config_dump?resource=static_clusters")
check "/config_dump?mask=bootstrap.node keeps only the node" jq -e '(.configs[0].bootstrap | keys) == ["node"]' <($C "$ADMIN/config_dump?mask=bootstrap.node")
check "/config_dump?mask=dynamic_active_clusters trims the bootstrap away" jq -e '(.configs[0] | keys) == ["@type"]' <($C "$ADMIN/config_dump?mask=dynamic_active_clusters")

# /clusters and /listeners
body=$($C "$ADMIN/clusters")
check "/clusters lists the static cluster's host" grep -qx 'prometheus_stats::127.0.0.1:15000::health_flags::healthy' <<<"$body"
check "/clusters shows circuit-breaker defaults" grep -qx 'agent::default_priority::max_connections::1024' <<<"$body"
check "/clusters?format=json has host addresses" jq -e '.cluster_statuses[] | select(.name == "agent") | .host_statuses[0].address.socket_address.port_value == 15020' <($C "$ADMIN/clusters?format=json")
check "/listeners lists 0.0.0.0_15090" grep -qx '0.0.0.0_15090::0.0.0.0:15090' <($C "$ADMIN/listeners")
check "/listeners?format=json" jq -e '.listener_statuses[0].local_address.socket_address.port_value == 15090' <($C "$ADMIN/listeners?format=json")

# /logging
body=$($C -X POST "$ADMIN/logging")
check "POST /logging lists active loggers" grep -qx 'active loggers:' <<<"$body"
check "POST /logging shows upstream at debug" grep -qx '  upstream: debug' <<<"$body"
body=$($C -X POST "$ADMIN/logging?upstream=trace")
check "POST /logging?upstream=trace changes one logger" bash -c "grep -qx '  upstream: trace' <<<\"\$0\" && grep -qx '  router: debug' <<<\"\$0\"" "$body"
body=$($C -X POST "$ADMIN/logging?level=warning")
check "POST /logging?level=warning changes all loggers" bash -c "grep -qx '  upstream: warning' <<<\"\$0\" && grep -qx '  admin: warning' <<<\"\$0\"" "$body"
check "POST /logging?level=bogus is 404 as in Envoy" [ "$(http_code -X POST "$ADMIN/logging?level=bogus")" = 404 ]
check "POST /logging?nosuch=debug is 404" [ "$(http_code -X POST "$ADMIN/logging?nosuch=debug")" = 404 ]
check "GET /logging lists loggers" grep -qx 'active loggers:' <($C "$ADMIN/logging")

# health checks, methods, unknown paths
check "POST /healthcheck/fail" [ "$($C -X POST "$ADMIN/healthcheck/fail")" = OK ]
check "server.live is 0 after /healthcheck/fail" grep -qx 'server.live: 0' <($C "$ADMIN/stats?filter=^server\.live\$")
check "POST /healthcheck/ok" [ "$($C -X POST "$ADMIN/healthcheck/ok")" = OK ]
check "server.live is 1 after /healthcheck/ok" grep -qx 'server.live: 1' <($C "$ADMIN/stats?filter=^server\.live\$")
check "GET /quitquitquit is refused with 400" [ "$(http_code "$ADMIN/quitquitquit")" = 400 ]
check "an unknown path is 404" [ "$(http_code "$ADMIN/nosuch")" = 404 ]
check "/help lists /config_dump" grep -q '/config_dump' <($C "$ADMIN/help")
check "DELETE is 405" [ "$(http_code -X DELETE "$ADMIN/ready")" = 405 ]
check "keep-alive: two requests on one connection" bash -c "curl -sS -v '$ADMIN/ready' '$ADMIN/ready' 2>&1 | grep -q 'Re-using existing connection'"
big=$(head -c 70000 /dev/zero | tr '\0' a)
check "a 70 KB header is 431" [ "$(http_code -H "x-big: $big" "$ADMIN/ready")" = 431 ]
raw() { # raw BYTES: sends them on one connection, prints the status line of the answer
  /usr/bin/python3 -c '
import socket, sys
host, port = sys.argv[1].rsplit(":", 1)
s = socket.create_connection((host.split("//")[1], int(port)), timeout=5)
s.sendall(sys.argv[2].encode().decode("unicode_escape").encode("latin-1"))
print(s.recv(4096).split(b"\r\n")[0].decode())' "$ADMIN" "$1"
}
check "duplicate Content-Length is 400" grep -q ' 400 ' <(raw 'POST /ready HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nab')
check "garbage is 400" grep -q ' 400 ' <(raw 'HELLO\r\n\r\n')
check "a body over 1 MiB by its Content-Length is 413" grep -q ' 413 ' <(raw 'POST /ready HTTP/1.1\r\nHost: x\r\nContent-Length: 1048577\r\n\r\n')
check "a chunked body over 1 MiB is 413" bash -c "head -c 1100000 /dev/zero | curl -sS -o /dev/null -w '%{http_code}' -H 'transfer-encoding: chunked' --data-binary @- '$ADMIN/ready' | grep -qx 413"
check "an upgrade is 400" grep -q ' 400 ' <(raw 'GET /ready HTTP/1.1\r\nHost: x\r\nConnection: upgrade\r\nUpgrade: websocket\r\n\r\n')
check "a body within the limit is read, and the answer comes" grep -q ' 200 ' <(raw 'POST /ready HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello')

# /quitquitquit ends the process cleanly
check "POST /quitquitquit answers OK" [ "$($C -X POST "$ADMIN/quitquitquit")" = OK ]
wait_exit
check "skiff exits 0 after /quitquitquit" [ "$SKIFF_RC" = 0 ]
check "the log has Envoy-like lines" grep -Eq '^\[[0-9]{4}-[0-9]{2}-[0-9]{2} [0-9:.]+\]\[[0-9]+\]\[info\]\[main\] ' "$WORK/skiff.log"
finish

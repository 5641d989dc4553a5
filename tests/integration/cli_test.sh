#!/usr/bin/env bash
# The command line and --mode validate, as pilot-agent and users run them.
. "$(dirname "$0")/lib.sh"
DEMO=$SRCDIR/tools/examples/demo-bootstrap.yaml

out=$("$SKIFF" --help); rc=$?
check "--help exits 0" [ $rc -eq 0 ]
check "--help lists --config-path and --drain-time-s" grep -q -- '--drain-time-s' <<<"$out"

out=$("$SKIFF" --version); rc=$?
check "--version exits 0" [ $rc -eq 0 ]
check "--version has Envoy's shape" grep -Eq '^skiff +version: [0-9a-f]{40}/[0-9]+\.[0-9]+\.[0-9]+/(Clean|Modified)/(RELEASE|DEBUG)/OpenSSL$' <<<"$out"

out=$("$SKIFF" --mode validate -c "$DEMO" --drian-time-s 5 2>&1); rc=$?
check "a misspelt flag exits 1" [ $rc -eq 1 ]
check "a misspelt flag is named, on one line" [ "$out" = "skiff: unknown flag '--drian-time-s' (see --help)" ]

for bad in "--concurrency x" "--concurrency 0" "--mode serv" "--drain-strategy sudden" \
           "--local-address-ip-version v5" "--drain-time-s -1" "-l verbose" \
           "--component-log-level upstream" "--component-log-level nosuch:debug"; do
  # shellcheck disable=SC2086
  out=$("$SKIFF" --mode validate -c "$DEMO" $bad 2>&1); rc=$?
  flag=${bad%% *}
  check "bad value '$bad' exits 1" [ $rc -eq 1 ]
  check "bad value '$bad' names the flag" grep -q -- "${flag#-}" <<<"$out"
  check "bad value '$bad' is one line" [ "$(wc -l <<<"$out")" -eq 1 ]
done
out=$("$SKIFF" --mode validate -c "$DEMO" --log-format '%q' 2>&1); rc=$?
check "a bad --log-format fails naming the flag" bash -c "[ $rc -eq 1 ] && grep -q -- '--log-format.*%q' <<<\"\$0\"" "$out"
out=$("$SKIFF" --mode validate --allow-unknown-static-fields -c "$SHARED/istio/04-bootstrap/default_golden.json" --log-format '%v' 2>&1); rc=$?
check "--log-format with the bootstrap's application_log_config fails, as in Envoy" bash -c "[ $rc -eq 1 ] && grep -q 'only one of application_log_config' <<<\"\$0\"" "$out"
out=$("$SKIFF" -c 2>&1); rc=$?
check "a flag without its value exits 1" [ $rc -eq 1 ]

# Istio's bootstrap goldens, exactly as pilot-agent passes them.
for g in all_golden default_golden; do
  out=$("$SKIFF" --mode validate --allow-unknown-static-fields -c "$SHARED/istio/04-bootstrap/$g.json" 2>&1); rc=$?
  check "$g.json validates" [ $rc -eq 0 ]
  check "$g.json prints OK" grep -q "configuration '.*$g.json' OK" <<<"$out"
done
out=$("$SKIFF" --mode validate -c "$DEMO" --drain-time-s 45 --drain-strategy immediate \
      --local-address-ip-version v4 --file-flush-interval-msec 1000 --disable-hot-restart \
      --allow-unknown-static-fields -l warning --component-log-level misc:error \
      --skip-deprecated-logs --concurrency 2 --parent-shutdown-time-s 60 \
      --service-node n --service-cluster c --log-format '%v' 2>&1); rc=$?
check "pilot-agent's full flag set is accepted" [ $rc -eq 0 ]
out=$("$SKIFF" --mode=validate --config-path="$DEMO" --concurrency=2 -lwarning 2>&1); rc=$?
check "--flag=value and -lvalue forms are accepted" [ $rc -eq 0 ]

# A bootstrap with a wrong field: the message names the file, the line and the field.
sed 's/connect_timeout: 0.250s/connect_timeuot: 0.250s/' "$DEMO" >"$WORK/bad.yaml"
line=$(grep -n connect_timeuot "$WORK/bad.yaml" | head -n1 | cut -d: -f1)
out=$("$SKIFF" --mode validate -c "$WORK/bad.yaml" 2>&1); rc=$?
check "a wrong field fails validation" [ $rc -eq 1 ]
check "the error is file:line and names the field" grep -q "bad.yaml:$line:.*connect_timeuot" <<<"$out"
check "the error gives the field path" grep -q "static_resources.clusters\[0\]" <<<"$out"
out=$("$SKIFF" --mode validate --allow-unknown-static-fields -c "$WORK/bad.yaml" 2>&1); rc=$?
check "--allow-unknown-static-fields makes it a warning" [ $rc -eq 0 ]
check "the warning still names the field" grep -q "connect_timeuot" <<<"$out"

# The same in JSON: every error is reported, not just the first.
/usr/bin/python3 - "$SHARED/istio/04-bootstrap/default_golden.json" "$WORK/bad.json" <<'PY'
import json, sys
b = json.load(open(sys.argv[1]))
b["admin"]["adress"] = b["admin"].pop("address")
b["static_resources"]["clusters"][0]["lb_polcy"] = "ROUND_ROBIN"
json.dump(b, open(sys.argv[2], "w"), indent=2)
PY
out=$("$SKIFF" --mode validate -c "$WORK/bad.json" 2>&1); rc=$?
check "a JSON bootstrap with two wrong fields fails" [ $rc -eq 1 ]
check "the first wrong field is reported" grep -q "bad.json:[0-9]*:.*adress" <<<"$out"
check "the second wrong field is reported" grep -q "bad.json:[0-9]*:.*lb_polcy" <<<"$out"

printf 'admin: {address: {socket_address: {address: 127.0.0.1, port_value: "x"}}}\n' >"$WORK/badval.yaml"
out=$("$SKIFF" --mode validate -c "$WORK/badval.yaml" 2>&1); rc=$?
check "a bad value fails validation with file:line" bash -c "[ $rc -eq 1 ] && grep -q 'badval.yaml:1:' <<<\"\$0\"" "$out"

printf 'static_resources:\n  clusters:\n  - name: a\n  - name: a\n' >"$WORK/dup.yaml"
out=$("$SKIFF" --mode validate -c "$WORK/dup.yaml" 2>&1); rc=$?
check "duplicate cluster names fail validation" bash -c "[ $rc -eq 1 ] && grep -q 'duplicate cluster name' <<<\"\$0\"" "$out"

# Istio's bootstrap sets the global connection limit; one of 0 is refused, as Envoy does
out=$("$SKIFF" --mode validate -c "$SHARED/istio/04-bootstrap/default_golden.json" 2>&1); rc=$?
check "Istio's bootstrap with its global connection limit validates" [ $rc -eq 0 ]
printf 'overload_manager:\n  resource_monitors:\n  - name: envoy.resource_monitors.global_downstream_max_connections\n    typed_config:\n      "@type": type.googleapis.com/envoy.extensions.resource_monitors.downstream_connections.v3.DownstreamConnectionsConfig\n      max_active_downstream_connections: 0\n' >"$WORK/gcx.yaml"
out=$("$SKIFF" --mode validate -c "$WORK/gcx.yaml" 2>&1); rc=$?
check "a global connection limit of 0 fails validation" bash -c "[ $rc -eq 1 ] && grep -q 'resource_monitors\[0\].*max_active_downstream_connections above 0' <<<\"\$0\"" "$out"

out=$("$SKIFF" --mode validate -c "$WORK/nonexistent.yaml" 2>&1); rc=$?
check "a missing file fails with its name" bash -c "[ $rc -eq 1 ] && grep -q 'nonexistent.yaml' <<<\"\$0\"" "$out"

out=$("$SKIFF" --mode validate --config-yaml "$ADMIN_PORT0" 2>&1); rc=$?
check "--config-yaml alone is a bootstrap" [ $rc -eq 0 ]
finish

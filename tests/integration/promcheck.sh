#!/usr/bin/env bash
# promcheck FILE: `promtool check metrics` on an exposition, passing when promtool finds no
# error. Its lints (exit 3) are accepted only when each is one Envoy's own output has:
# Envoy prints no HELP lines, its counters have no _total suffix, and some of its stat names
# carry units promtool frowns on
# (server.initialization_time_ms, server.days_until_first_cert_expiring).
out=$(promtool check metrics <"$1" 2>&1); rc=$?
[ $rc -eq 0 ] && exit 0
if [ $rc -ne 3 ]; then echo "$out"; exit 1; fi
bad=$(grep -v -E ' no help text$|counter metrics should have "_total" suffix$|should not contain abbreviated units$|use base unit "[a-z]+" instead of "[a-z]+"$' <<<"$out")
if [ -n "$bad" ]; then echo "$bad"; exit 1; fi
exit 0

#!/usr/bin/env bash
# soak.sh runs mixed load against a fresh `keybroker dev` cluster for
# SOAKTIME and reports throughput and the process's resident memory and
# goroutines every SOAK_INTERVAL. It fails when any call failed or when
# resident memory grew more than SOAK_RSS_GROWTH percent from the first
# period to the last. `make soak` runs it.
#
#   SOAKTIME          how long to run the load (default 10m)
#   SOAK_INTERVAL     reporting period (default 30s)
#   SOAK_CONCURRENCY  concurrent callers (default 32)
#   SOAK_RSS_GROWTH   allowed growth of resident memory, percent (default 25)
#   SOAK_PORT         the dev cluster's first port (default 7900; it takes
#                     three gRPC ports and their ops ports 10 above)
#   SOAK_JSON         a file to write the full report to, as JSON
set -euo pipefail
cd "$(dirname "$0")/.."

soaktime=${SOAKTIME:-10m}
interval=${SOAK_INTERVAL:-30s}
concurrency=${SOAK_CONCURRENCY:-32}
growth=${SOAK_RSS_GROWTH:-25}
port=${SOAK_PORT:-7900}

work=$(mktemp -d)
bin=$work/keybroker
go build -o "$bin" ./cmd/keybroker

"$bin" dev --data "$work/dev" --port "$port" >"$work/dev.log" 2>&1 &
dev=$!
cleanup() {
	kill -INT "$dev" 2>/dev/null || true
	wait "$dev" 2>/dev/null || true
	rm -rf "$work"
}
trap cleanup EXIT

for _ in $(seq 1 120); do
	[ -f "$work/dev/env" ] && break
	if ! kill -0 "$dev" 2>/dev/null; then
		echo "soak: keybroker dev exited:" >&2
		cat "$work/dev.log" >&2
		exit 1
	fi
	sleep 0.5
done
if [ ! -f "$work/dev/env" ]; then
	echo "soak: keybroker dev was not ready after 60s:" >&2
	cat "$work/dev.log" >&2
	exit 1
fi
# shellcheck disable=SC1091
. "$work/dev/env"
"$bin" key create soak-mac --type hmac-sha256 --mode derive >/dev/null
"$bin" key create soak-sign --type ecdsa-p256 --mode wrap >/dev/null

echo "soak: $soaktime of mixed load, $concurrency callers, at the us edge of a keybroker dev cluster (pid $dev)"
args=(bench --op encrypt:40,decrypt:30,datakey:10,mac:10,sign:5,lookup:5
	--key demo --mac-key soak-mac --sign-key soak-sign --size 1KiB
	-c "$concurrency" --duration "$soaktime" --warmup 10s --interval "$interval"
	--metrics "https://127.0.0.1:$((port + 10))/metrics" --max-rss-growth "$growth")
if [ -n "${SOAK_JSON:-}" ]; then
	"$bin" "${args[@]}" --output json >"$SOAK_JSON"
	echo "soak: report written to $SOAK_JSON"
else
	"$bin" "${args[@]}"
fi

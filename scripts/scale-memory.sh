#!/usr/bin/env bash
# scale-memory.sh runs the central node and the edge of a cluster that
# BenchmarkScale grew and kept (KEYBROKER_SCALE_DIR) as two keybroker
# processes, each in a cgroup (v1) with a memory limit, and reports each
# node's time to ready, that the edge serves keys chosen at random and a
# 10 s encrypt load, and each cgroup's peak memory and each process's
# resident memory. An etcd cluster's member (DIR/etcd/m0) is started
# first, untimed. Run as root on Linux with the cgroup v1 memory
# controller; the binary is built from this checkout.
#
#   DIR         the kept cluster, e.g. /work/scale1m/centrals=1-bbolt (required)
#   LIMIT       each cgroup's memory limit in bytes (default 1.5 GiB)
#   DROP        1 (default): drop the page cache first (a cold start);
#               0: read the data files first (a warm one)
#   KEYS        keys encrypted with one CLI call each (default 200)
#   GOMEMLIMIT  passed to both processes (e.g. 1000MiB: see docs/deploy.md)
set -uo pipefail
cd "$(dirname "$0")/.."
D=${DIR:?DIR must name a kept BenchmarkScale cluster}
LIMIT=${LIMIT:-$((1536 * 1024 * 1024))}
KB=$(mktemp -d)/keybroker
go build -o "$KB" ./cmd/keybroker || exit 1
cd "$D" || exit 1
sed -e 's/^listen: .*/listen: "127.0.0.1:27801"/' -e 's/^ops_listen: .*/ops_listen: "127.0.0.1:27811"/' central.yaml >central-cg.yaml
sed -e 's/^listen: .*/listen: "127.0.0.1:27802"/' -e 's/^ops_listen: .*/ops_listen: "127.0.0.1:27812"/' \
	-e 's/^central: .*/central: {address: "127.0.0.1:27801", server_name: "127.0.0.1"}/' edge-00.yaml >edge-cg.yaml
ETCDP=
if [ -d etcd/m0 ]; then
	etcd --name m0 --data-dir etcd/m0 --listen-client-urls http://127.0.0.1:23790 --advertise-client-urls http://127.0.0.1:23790 \
		--listen-peer-urls http://127.0.0.1:23800 --initial-advertise-peer-urls http://127.0.0.1:23800 --log-level warn \
		--auto-compaction-mode periodic --auto-compaction-retention 1h >/tmp/kb-etcd.log 2>&1 &
	ETCDP=$!
	until ETCDCTL_API=3 etcdctl --endpoints http://127.0.0.1:23790 endpoint health >/dev/null 2>&1; do sleep 0.1; done
	sed -i 's#endpoints: .*#endpoints: ["http://127.0.0.1:23790"]#' central-cg.yaml
fi
for n in central edge; do
	cg=/sys/fs/cgroup/memory/kb-$n
	[ -d "$cg" ] && rmdir "$cg"
	mkdir "$cg" && echo "$LIMIT" >"$cg/memory.limit_in_bytes" || exit 1
done
if [ "${DROP:-1}" = 1 ]; then
	sync && echo 3 >/proc/sys/vm/drop_caches && echo "page cache dropped"
else
	cat edge-00/replica.db central/registry.db >/dev/null 2>&1
	echo "page cache warm"
fi
ops() { curl -sf --cacert ca.crt --cert certs/admin.crt --key certs/admin.key "https://$1"; }
ready() { until ops "$1/readyz" >/dev/null; do sleep 0.05; done; }
t0=$(date +%s.%N)
sh -c "echo \$\$ >/sys/fs/cgroup/memory/kb-central/cgroup.procs; exec $KB central --config central-cg.yaml" >/tmp/kb-central.log 2>&1 &
CP=$!
sh -c "echo \$\$ >/sys/fs/cgroup/memory/kb-edge/cgroup.procs; exec $KB edge --config edge-cg.yaml" >/tmp/kb-edge.log 2>&1 &
EP=$!
ready 127.0.0.1:27811
t1=$(date +%s.%N)
ready 127.0.0.1:27812
t2=$(date +%s.%N)
echo "central ready after $(echo "$t1 - $t0" | bc) s, edge ready after $(echo "$t2 - $t0" | bc) s"
export KEYBROKER_CA=$D/ca.crt KEYBROKER_CERT=$D/certs/app.crt KEYBROKER_KEY=$D/certs/app.key KEYBROKER_ADDR=127.0.0.1:27802
fail=0
n=$(cat scale-keys)
for i in $(shuf -i 0-$((n - 1)) -n "${KEYS:-200}"); do
	echo -n x | "$KB" encrypt --key "scale-$i" >/dev/null || fail=$((fail + 1))
done
echo "encrypts on ${KEYS:-200} random keys through the edge: $fail failed"
"$KB" bench --op encrypt --key scale-4242 --size 1KiB -c 64 --duration 10s 2>&1 | tail -2
for n in central edge; do
	cg=/sys/fs/cgroup/memory/kb-$n
	pid=$CP
	[ $n = edge ] && pid=$EP
	echo "$n: cgroup peak $(($(cat $cg/memory.max_usage_in_bytes) / 1048576)) MiB of $((LIMIT / 1048576)),"\
		"anonymous $(awk '/^total_rss /{print int($2/1048576)}' $cg/memory.stat) MiB, page cache $(awk '/^total_cache /{print int($2/1048576)}' $cg/memory.stat) MiB;"\
		"VmRSS $(awk '/VmRSS/{print int($2/1024)}' /proc/$pid/status) MiB, VmHWM $(awk '/VmHWM/{print int($2/1024)}' /proc/$pid/status) MiB"
done
ops 127.0.0.1:27812/metrics | grep -E '^go_memstats_heap_alloc_bytes' | sed 's/^/edge /'
ops 127.0.0.1:27811/metrics | grep -E '^go_memstats_heap_alloc_bytes' | sed 's/^/central /'
kill $EP $CP
wait $EP $CP
[ -n "$ETCDP" ] && kill $ETCDP && wait $ETCDP
rmdir /sys/fs/cgroup/memory/kb-central /sys/fs/cgroup/memory/kb-edge
rm -f central-cg.yaml edge-cg.yaml

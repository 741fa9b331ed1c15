#!/usr/bin/env bash
# Time from an empty admin directory to the first key delivered across hosts, by the commands of docs/network.md
# "Deploying one node per host": eleven network namespaces (the controller and the example network's ten nodes) on a
# bridge, 10.201.X.0/24, the admin machine (this one) at .1. Run as root: bash benchmarks/across_hosts.sh
# Prints one line per step with the seconds since the start; removes the namespaces and the bridge at the end.
set -euo pipefail
QKDSEG=${QKDSEG:-qkdseg}
CLIENT=${CLIENT:-qkd014-client}
RUN=$(printf '%04x' $((RANDOM % 65536)))
X=$((RANDOM % 250 + 2))
NET=10.201.$X
WORK=$(mktemp -d)
BR=qab$RUN
NS=()
PIDS=()
cleanup() {
  for p in "${PIDS[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
  for p in "${PIDS[@]}"; do wait "$p" 2>/dev/null || true; done
  for ns in "${NS[@]}"; do ip netns del "$ns" 2>/dev/null || true; done
  ip link del "$BR" 2>/dev/null || true
  rm -rf "$WORK"
}
trap cleanup EXIT
ip link add "$BR" type bridge && ip addr add "$NET.1/24" dev "$BR" && ip link set "$BR" up
for i in $(seq 0 10); do  # host 0: the controller; host 1 + k: node k
  ns=qa${RUN}h$i; NS+=("$ns"); ip netns add "$ns"
  ip link add qa${RUN}v$i type veth peer name eth0 netns "$ns"
  ip link set qa${RUN}v$i master "$BR" && ip link set qa${RUN}v$i up
  ip -n "$ns" addr add "$NET.$((2 + i))/24" dev eth0 && ip -n "$ns" link set eth0 up && ip -n "$ns" link set lo up
done
cd "$WORK"
{ echo '[controller]'; echo "address = \"$NET.2:8443\""; echo '[nodes]'
  for k in $(seq 0 9); do echo "\"$k\" = \"$NET.$((3 + k)):8443\""; done; } > hosts.toml
mkdir admin && cd admin
T0=$(date +%s.%N)
step() { printf '%6.2f s  %s\n' "$(echo "$(date +%s.%N) - $T0" | bc)" "$1"; }
# 2. the admin machine
$QKDSEG net init DIR --network example --sae A=0 --sae B=7 --inventory ../hosts.toml --enroll \
  --ca-key-out ../ca.key --security-level 0.5 > /dev/null
$QKDSEG net bundle DIR --all -o bundles > /dev/null
step "net init --enroll, net bundle --all"
# 3. each host (in its namespace, all hosts at once as their operators would): unpack, keygen
for i in $(seq 0 10); do
  kind=node; name=node-$((i - 1)); [ "$i" = 0 ] && { kind=controller; name=controller; }
  mkdir -p "../host$i"
  ( tar -xzf "bundles/$name.tar.gz" -C "../host$i" && ip netns exec "qa${RUN}h$i" $QKDSEG $kind keygen "../host$i/$kind" > /dev/null
    cp "../host$i/$kind/$kind.csr" "$name.csr" ) &
done
wait
step "bundles unpacked and keygen on every host"
# 4. back on the admin machine: sign, SAE certificates; the certificates to the hosts
$QKDSEG net sign DIR ./*.csr --ca-key ../ca.key > /dev/null
$QKDSEG net sae cert DIR A --ca-key ../ca.key > /dev/null
$QKDSEG net sae cert DIR B --ca-key ../ca.key > /dev/null
step "net sign (11 CSRs), net sae cert A and B"
for i in $(seq 0 10); do  # each certificate back to its host
  kind=node; name=node-$((i - 1)); [ "$i" = 0 ] && { kind=controller; name=controller; }
  cp "$name.crt" "../host$i/$kind/$kind.crt"
done
# 5. start each process on its host
for i in $(seq 0 10); do
  kind=node; [ "$i" = 0 ] && kind=controller
  ip netns exec "qa${RUN}h$i" $QKDSEG $kind serve "../host$i/$kind" > "../host$i.log" 2>&1 &
  PIDS+=($!)
done
until $QKDSEG net status DIR --format json | python3 -c 'import json,sys; r=json.load(sys.stdin); sys.exit(0 if all(x["healthy"] for x in r) else 1)'; do
  sleep 0.2
done
step "every process healthy (net status)"
OUT=$($CLIENT -H "$NET.3:8443" -c DIR/pki/A.crt -k DIR/pki/A.key -r DIR/pki/ca.crt get_key B)
grep -q "Response code : 200" <<< "$OUT" || { echo "get_key: $OUT"; exit 1; }
ID=$(grep -oE '[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}' <<< "$OUT" | head -1)
OUT=$($CLIENT -H "$NET.10:8443" -c DIR/pki/B.crt -k DIR/pki/B.key -r DIR/pki/ca.crt get_key_with_id "$ID" A)
grep -q "Response code : 200" <<< "$OUT" || { echo "get_key_with_id $ID: $OUT"; exit 1; }
step "first key: A at node 0 (host $NET.3) -> B at node 7 (host $NET.10)"

#!/usr/bin/env bash
# The single-node test cluster (see e2e/README.md, "Node cluster"): containerd, runc and CNI
# from Debian; the testenv binary as API server (etcd embedded); kube-controller-manager,
# kube-scheduler, kubelet, kube-proxy and the LoadBalancer address helper from the node
# binary (e2e/node). Everything it makes is named qi-* or lives under DIR, so `down` can
# remove all of it: processes, mounts, network namespaces, the bridge and dummy
# interfaces, iptables chains, cgroups, containerd state and CNI caches.
#
#   scripts/node-cluster.sh up   DIR NODE_BIN TESTENV_BIN IMAGE_DIR
#   scripts/node-cluster.sh down DIR NODE_BIN
#   scripts/node-cluster.sh status DIR NODE_BIN     # exit 0 when it runs
#
# Addresses, all on this machine: pods 10.244.0.0/24 on bridge qi-cni0 (10.244.0.1 is the
# node: API server, kubelet); Services 10.0.0.0/24 (virtual, kube-proxy's NAT only);
# LoadBalancer addresses 10.250.0.10-254 routed to interface qi-lb0 (a dummy, or a
# port-less bridge where the kernel has no dummy driver). Pods get routes
# to those three ranges only, and a FORWARD guard drops anything else they send, so no pod
# traffic leaves through the machine's own interfaces.
set -euo pipefail

cmd=${1:-}
DIR=${2:?usage: $0 up|down|status DIR NODE_BIN [TESTENV_BIN IMAGE_DIR]}
NODE_BIN=${3:?node binary}
mkdir -p "$DIR"
DIR=$(cd "$DIR" && pwd)

NODE_NAME=qi-node
BRIDGE=qi-cni0
NODE_IP=10.244.0.1
POD_CIDR=10.244.0.0/24
SVC_CIDR=10.0.0.0/24
LB_IF=qi-lb0
LB_CIDR=10.250.0.0/24
LB_IF_ADDR=10.250.0.1/24
CNI_NET=qi-pods
SOCK=$DIR/containerd/containerd.sock
KUBECONFIG_FILE=$DIR/kubeconfig
# Sysctls the node changes (kubelet sets the kernel/vm ones itself); `down` restores them.
SYSCTLS=(net.ipv4.ip_forward net.bridge.bridge-nf-call-iptables net.bridge.bridge-nf-call-ip6tables
  vm.overcommit_memory vm.panic_on_oom kernel.panic kernel.panic_on_oops kernel.keys.root_maxkeys
  kernel.keys.root_maxbytes)
COMPONENTS=(lb-addresses kube-proxy kubelet kube-scheduler kube-controller-manager)

log() { echo "cluster: $*" >&2; }
kubectl() { "$DIR/bin/kubectl" --kubeconfig "$KUBECONFIG_FILE" "$@"; }
# A pid runs when it exists and is not a zombie: the components are reparented to this
# machine's init, which may not reap them promptly, and kill -0 succeeds on a zombie.
running() { [ -r "/proc/$1/stat" ] && ! awk '{ exit ($3 == "Z") ? 0 : 1 }' "/proc/$1/stat" 2>/dev/null; }
alive() { [ -f "$DIR/pids/$1" ] && running "$(cat "$DIR/pids/$1")"; }

# start NAME CMD...: in its own session, log in logs/NAME.log, pid in pids/NAME.
start() {
  local name=$1; shift
  setsid "$@" >"$DIR/logs/$name.log" 2>&1 </dev/null &
  echo $! >"$DIR/pids/$name"
}

# wait_for WHAT SECONDS CMD...: poll CMD every 0.2 s until it succeeds or time runs out.
wait_for() {
  local what=$1 secs=$2; shift 2
  local deadline=$(( $(date +%s) + secs ))
  until "$@" >/dev/null 2>&1; do
    if [ "$(date +%s)" -ge "$deadline" ]; then log "$what: not ready after ${secs}s"; return 1; fi
    sleep 0.2
  done
}

node_ready() {
  [ "$(kubectl get node "$NODE_NAME" -o jsonpath='{.status.conditions[?(@.type=="Ready")].status}')" = True ]
}
# Exited containers stay listed until kubelet collects them; running tasks are what matter.
no_running_tasks() { ! ctr -a "$SOCK" -n k8s.io tasks ls 2>/dev/null | grep -qw RUNNING; }

stop_pid() { # stop_pid NAME SECS: SIGTERM, then SIGKILL after SECS
  local name=$1 secs=$2 pid
  [ -f "$DIR/pids/$name" ] || return 0
  pid=$(cat "$DIR/pids/$name")
  if running "$pid"; then
    kill -TERM "$pid" 2>/dev/null || true
    local i=0
    while running "$pid"; do
      i=$((i + 1)); if [ $i -gt $((secs * 10)) ]; then kill -KILL "$pid" 2>/dev/null || true; sleep 0.2; break; fi
      sleep 0.1
    done
    log "stopped $name (pid $pid)"
  fi
  rm -f "$DIR/pids/$name"
}

ensure_packages() {
  local script_dir; script_dir=$(dirname "$0")
  "$script_dir/ensure-packages.sh" containerd runc iptables conntrack openssl
  [ -x /usr/lib/cni/bridge ] || {
    log "installing: containernetworking-plugins"
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq containernetworking-plugins; }
}

write_configs() {
  mkdir -p "$DIR"/{containerd/root,containerd/state,cni/net.d,cni/ipam,kubelet,pod-logs,logs,pids,pki,bin}
  cat >"$DIR/containerd/config.toml" <<EOF
# containerd of the node cluster: its own root, state and socket, so it never meets the
# machine's default containerd (if any) and leaves nothing outside $DIR.
version = 2
root = "$DIR/containerd/root"
state = "$DIR/containerd/state"
[grpc]
  address = "$SOCK"
[ttrpc]
  address = "$SOCK.ttrpc"
[debug]
  address = ""
[metrics]
  address = ""
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "$PAUSE_IMAGE"
  # Pod network namespaces under the state directory, not /run/netns.
  netns_mounts_under_state_dir = true
  disable_apparmor = true
  # This sandbox withholds CAP_SYS_RESOURCE, so no process may lower its oom_score_adj
  # (the pause container's -998 fails with "runc create failed: unable to start container
  # process: can't get final child's PID from pipe: EOF"). Restricted, scores are clamped
  # to containerd's own (0) instead; raising them (BestEffort's 1000) still works.
  restrict_oom_score_adj = true
  enable_selinux = false
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        SystemdCgroup = false
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "/usr/lib/cni"
    conf_dir = "$DIR/cni/net.d"
  [plugins."io.containerd.grpc.v1.cri".registry]
    config_path = ""
EOF
  # No default route in pods: only the pod range (on the bridge), the Service range and
  # the LoadBalancer range (through the node) are reachable.
  cat >"$DIR/cni/net.d/10-$CNI_NET.conflist" <<EOF
{
  "cniVersion": "1.0.0",
  "name": "$CNI_NET",
  "plugins": [
    {
      "type": "bridge",
      "bridge": "$BRIDGE",
      "isGateway": true,
      "ipMasq": false,
      "hairpinMode": true,
      "ipam": {
        "type": "host-local",
        "dataDir": "$DIR/cni/ipam",
        "ranges": [[{"subnet": "$POD_CIDR", "gateway": "$NODE_IP"}]],
        "routes": [{"dst": "$SVC_CIDR"}, {"dst": "$LB_CIDR"}]
      }
    },
    {"type": "portmap", "capabilities": {"portMappings": true}}
  ]
}
EOF
  cat >"$DIR/kubelet/config.yaml" <<EOF
apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
address: $NODE_IP
port: 10250
readOnlyPort: 0
healthzBindAddress: 127.0.0.1
healthzPort: 10248
authentication:
  anonymous: {enabled: false}
  webhook: {enabled: true}
  x509: {clientCAFile: $DIR/pki/kubelet-client-ca.crt}
authorization: {mode: Webhook}
cgroupDriver: cgroupfs
containerRuntimeEndpoint: unix://$SOCK
failSwapOn: false
podLogsDir: $DIR/pod-logs
resolvConf: ""
clusterDomain: cluster.local
maxPods: 40
# The images were imported, not pulled: garbage collection must never delete them, and
# the shared machine's disk use (other builds fill and free gigabytes) must not evict or
# keep out test pods: absolute floors only, and a DiskPressure condition (with its
# NoSchedule taint) lifts 10 s after the disk recovers, not after the default 5 min.
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
evictionHard: {memory.available: 100Mi, nodefs.available: 256Mi, imagefs.available: 256Mi, nodefs.inodesFree: 1%, imagefs.inodesFree: 1%}
evictionPressureTransitionPeriod: 10s
serializeImagePulls: false
shutdownGracePeriod: 0s
# Not -999: lowering a score needs CAP_SYS_RESOURCE, which this sandbox lacks.
oomScoreAdj: 0
EOF
  cat >"$DIR/kube-proxy.yaml" <<EOF
apiVersion: kubeproxy.config.k8s.io/v1alpha1
kind: KubeProxyConfiguration
clientConnection: {kubeconfig: $KUBECONFIG_FILE}
hostnameOverride: $NODE_NAME
mode: iptables
clusterCIDR: $POD_CIDR
bindAddress: $NODE_IP
healthzBindAddress: 127.0.0.1:10256
metricsBindAddress: 127.0.0.1:10249
# NodePorts only on the node's bridge address, never on the machine's own interfaces.
nodePortAddresses: ["$NODE_IP/32"]
iptables: {localhostNodePorts: false, masqueradeAll: false}
# Leave the machine's conntrack table size alone.
conntrack: {maxPerCore: 0, min: 0}
oomScoreAdj: 0
EOF
}

# The API server's client certificate for kubelet (logs, exec, port-forward), from a CA
# only kubelet trusts; group system:masters so kubelet's webhook authorization allows it.
write_kubelet_pki() {
  local p=$DIR/pki
  [ -f "$p/apiserver-kubelet-client.crt" ] && return 0
  openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 30 \
    -subj /CN=qi-node-kubelet-client-ca -keyout "$p/kubelet-client-ca.key" -out "$p/kubelet-client-ca.crt" 2>/dev/null
  openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes \
    -subj "/O=system:masters/CN=kube-apiserver-kubelet-client" \
    -keyout "$p/apiserver-kubelet-client.key" -out "$p/apiserver-kubelet-client.csr" 2>/dev/null
  openssl x509 -req -days 30 -in "$p/apiserver-kubelet-client.csr" -CA "$p/kubelet-client-ca.crt" \
    -CAkey "$p/kubelet-client-ca.key" -CAcreateserial -out "$p/apiserver-kubelet-client.crt" 2>/dev/null
}

import_images() {
  local archive
  [ -f "$1/pause.oci.tar" ] || { log "$1/pause.oci.tar missing: run make image"; return 1; }
  for archive in "$1"/*.oci.tar; do
    ctr -a "$SOCK" -n k8s.io images import --all-platforms "$archive" >/dev/null
  done
  log "images: $(ctr -a "$SOCK" -n k8s.io images ls -q | grep -v '^sha256:' | tr '\n' ' ')"
}

setup_network() {
  [ -f "$DIR/sysctl.orig" ] || for s in "${SYSCTLS[@]}"; do
    echo "$s=$(sysctl -n "$s")"
  done >"$DIR/sysctl.orig"
  # Pod to Service to pod is routed through the node; bridged packets must meet kube-proxy's
  # iptables rules.
  sysctl -qw net.ipv4.ip_forward=1 net.bridge.bridge-nf-call-iptables=1 net.bridge.bridge-nf-call-ip6tables=1
  ip link show "$BRIDGE" >/dev/null 2>&1 || ip link add "$BRIDGE" type bridge
  ip addr replace "$NODE_IP/24" dev "$BRIDGE"
  ip link set "$BRIDGE" up
  # A dummy interface would do, but this kernel has no CONFIG_DUMMY (`ip link add qi-lb0
  # type dummy`: "Error: Unknown device type."): a bridge without ports is just as much a
  # dead end for anything kube-proxy does not DNAT to a pod.
  if ! ip link show "$LB_IF" >/dev/null 2>&1; then
    ip link add "$LB_IF" type dummy 2>/dev/null || ip link add "$LB_IF" type bridge
  fi
  ip addr replace "$LB_IF_ADDR" dev "$LB_IF"
  ip link set "$LB_IF" up
  # The guard: forwarding is on while the cluster runs, but only between pods (and to
  # Service and LoadBalancer addresses, which are DNATed to pods before this chain).
  iptables -N QI-NODE-GUARD 2>/dev/null || iptables -F QI-NODE-GUARD
  iptables -A QI-NODE-GUARD -s "$POD_CIDR" ! -d "$POD_CIDR" -j DROP
  iptables -A QI-NODE-GUARD -d "$POD_CIDR" ! -i "$BRIDGE" -j DROP
  iptables -C FORWARD -j QI-NODE-GUARD 2>/dev/null || iptables -I FORWARD 1 -j QI-NODE-GUARD
}

up() {
  local testenv_bin=${1:?testenv binary} image_dir=${2:?image dir}
  PAUSE_IMAGE=${PAUSE_IMAGE:-localhost/quic-ingress-pause:1}
  if alive kubelet && alive apiserver && alive containerd; then
    # Images rebuilt since: the same tags now name the new ones.
    import_images "$image_dir"
    log "already running (kubeconfig $KUBECONFIG_FILE)"; return 0
  fi
  # Leftovers of a run that did not end with `down` (a crash, a reboot): clean them first,
  # so this run starts from nothing (old etcd data would bring back old pods).
  if [ -d "$DIR/pids" ]; then log "cleaning up after an earlier run"; down; fi
  # One node cluster per machine: the interface names, node ports and kubelet ports are fixed.
  if ip link show "$BRIDGE" >/dev/null 2>&1; then
    log "$BRIDGE exists: another node cluster runs on this machine (make cluster-down in its checkout)"
    return 1
  fi
  local t0; t0=$(date +%s.%N)
  ensure_packages
  write_configs
  write_kubelet_pki
  ln -sf "$testenv_bin" "$DIR/bin/kubectl"
  # Directories kubelet and CNI make outside DIR whatever they are told; `down` removes
  # the ones that did not exist before.
  for d in /var/lib/cni /var/log/containers; do
    [ -e "$d" ] || echo "$d" >>"$DIR/created-dirs"
  done
  # iptables-nft makes the nftables tables it needs; `down` removes the ones that were not
  # there before and are empty again.
  [ -f "$DIR/nft-tables.before" ] || nft list tables 2>/dev/null >"$DIR/nft-tables.before" || true
  setup_network

  start containerd containerd --config "$DIR/containerd/config.toml"
  wait_for containerd 30 ctr -a "$SOCK" version
  import_images "$image_dir"

  rm -f "$DIR/ready"
  start apiserver "$testenv_bin" --data-dir "$DIR/apiserver" --out-dir "$DIR" --address "$NODE_IP" -- \
    --kubelet-client-certificate="$DIR/pki/apiserver-kubelet-client.crt" \
    --kubelet-client-key="$DIR/pki/apiserver-kubelet-client.key" \
    --kubelet-preferred-address-types=InternalIP
  wait_for apiserver 120 test -f "$DIR/ready" || { tail -20 "$DIR/logs/apiserver.log" >&2; return 1; }
  local pki=$DIR/apiserver/pki kc=$KUBECONFIG_FILE
  start kube-controller-manager "$NODE_BIN" kube-controller-manager --kubeconfig="$kc" \
    --authentication-kubeconfig="$kc" --authorization-kubeconfig="$kc" \
    --service-account-private-key-file="$pki/sa.key" --root-ca-file="$pki/ca.crt" \
    --leader-elect=false --bind-address=127.0.0.1 --secure-port=0 --service-cluster-ip-range="$SVC_CIDR"
  start kube-scheduler "$NODE_BIN" kube-scheduler --kubeconfig="$kc" \
    --authentication-kubeconfig="$kc" --authorization-kubeconfig="$kc" \
    --leader-elect=false --bind-address=127.0.0.1 --secure-port=0
  start kubelet "$NODE_BIN" kubelet --config="$DIR/kubelet/config.yaml" --kubeconfig="$kc" \
    --root-dir="$DIR/kubelet" --cert-dir="$DIR/kubelet/pki" --hostname-override="$NODE_NAME" \
    --node-ip="$NODE_IP" --v=1
  start kube-proxy "$NODE_BIN" kube-proxy --config="$DIR/kube-proxy.yaml"
  start lb-addresses "$NODE_BIN" lb-addresses --kubeconfig="$kc" --range="$LB_CIDR"

  if ! wait_for "node $NODE_NAME" 180 node_ready; then
    for c in kubelet kube-proxy kube-controller-manager kube-scheduler; do
      alive "$c" || { log "$c exited; last lines of $DIR/logs/$c.log:"; tail -n 20 "$DIR/logs/$c.log" >&2; }
    done
    return 1
  fi
  wait_for "default ServiceAccount" 60 kubectl get serviceaccount default -n default
  local secs; secs=$(awk -v a="$t0" -v b="$(date +%s.%N)" 'BEGIN { print b - a }')
  log "node $NODE_NAME Ready, $(printf %.1f "$secs") s after cluster-up started"
  echo "{\"kubeconfig\":\"$KUBECONFIG_FILE\",\"node\":\"$NODE_NAME\",\"up_seconds\":$(printf %.1f "$secs")}" >"$DIR/cluster-ready"
  echo "Use it with:"
  echo "  export KUBECONFIG=$KUBECONFIG_FILE"
  echo "  export PATH=$DIR/bin:\$PATH    # kubectl of the API server's version"
  echo "Stop it with 'make cluster-down'."
}

# remove_rules IPTABLES: drop every chain and rule of kube-proxy, kubelet, CNI and the guard.
remove_rules() {
  local ipt=$1 table saved
  command -v "$ipt-save" >/dev/null 2>&1 || return 0
  for table in filter nat mangle raw; do
    saved=$("$ipt-save" -t "$table" 2>/dev/null) || continue
    grep -qE 'KUBE-|CNI-|QI-NODE-' <<<"$saved" || continue
    grep -vE 'KUBE-|CNI-|QI-NODE-' <<<"$saved" | "$ipt-restore" -T "$table"
  done
}

down() {
  if [ ! -d "$DIR/pids" ]; then log "not running"; fi
  # Pods first, while kubelet and containerd still run, so CNI tears down each pod's
  # network namespace, veth and address the regular way.
  if alive kubelet && alive apiserver; then
    kubectl cordon "$NODE_NAME" >/dev/null 2>&1 || true
    kubectl delete pods --all --all-namespaces --grace-period=1 --wait=true --timeout=60s >/dev/null 2>&1 || true
    wait_for "pods stopped" 30 no_running_tasks || true
  fi
  for c in "${COMPONENTS[@]}"; do stop_pid "$c" 10; done
  # kube-proxy's own cleanup of its iptables and nftables rules.
  [ -x "$NODE_BIN" ] && "$NODE_BIN" kube-proxy --cleanup >/dev/null 2>&1 || true
  # A containerd that died left its shims and their containers running: start it again so
  # it reconnects to them and they can be stopped the regular way.
  if ! alive containerd && [ -f "$DIR/containerd/config.toml" ] && pgrep -f "containerd-shim.*$DIR" >/dev/null; then
    mkdir -p "$DIR/logs" "$DIR/pids"
    start containerd containerd --config "$DIR/containerd/config.toml"
    wait_for containerd 30 ctr -a "$SOCK" version || true
  fi
  # Whatever containers remain (a kubelet that died early): kill and delete them.
  if alive containerd; then
    for id in $(ctr -a "$SOCK" -n k8s.io tasks ls -q 2>/dev/null); do
      ctr -a "$SOCK" -n k8s.io tasks kill -s SIGKILL "$id" >/dev/null 2>&1 || true
    done
    sleep 0.5
    for id in $(ctr -a "$SOCK" -n k8s.io containers ls -q 2>/dev/null); do
      ctr -a "$SOCK" -n k8s.io tasks delete -f "$id" >/dev/null 2>&1 || true
      ctr -a "$SOCK" -n k8s.io containers delete "$id" >/dev/null 2>&1 || true
    done
  fi
  stop_pid containerd 15
  # Shims outlive containerd by design; ours are the ones whose address is under DIR.
  for pid in $(pgrep -f containerd-shim-runc-v2 || true); do
    grep -qF "$DIR" "/proc/$pid/cmdline" 2>/dev/null && kill -KILL "$pid" 2>/dev/null || true
  done
  stop_pid apiserver 30
  # Mounts under DIR, deepest first: pod volumes, overlay rootfs, netns bind mounts.
  local m
  for m in $(findmnt -rn -o TARGET | grep -F "$DIR/" | sort -r); do
    umount "$m" 2>/dev/null || umount -l "$m" 2>/dev/null || log "could not unmount $m"
  done
  # Cgroups kubelet made (kubepods) and containerd made for pods, in every hierarchy.
  for root in /sys/fs/cgroup/*/ /sys/fs/cgroup/; do
    [ -d "$root/kubepods" ] && find "$root/kubepods" -depth -type d -exec rmdir {} + 2>/dev/null || true
  done
  remove_rules iptables
  remove_rules ip6tables
  for fam in ip ip6; do nft delete table "$fam" kube-proxy 2>/dev/null || true; done
  if [ -f "$DIR/nft-tables.before" ]; then
    local fam name
    nft list tables 2>/dev/null | while read -r _ fam name; do
      grep -qx "table $fam $name" "$DIR/nft-tables.before" && continue
      # Only base chains left (no rule of anyone's): the table came with the cluster.
      if [ -z "$(nft list table "$fam" "$name" | grep -vE '^[[:space:]]*(table |chain |type |\}|$)')" ]; then
        nft delete table "$fam" "$name" 2>/dev/null || true
      fi
    done
  fi
  ip link del "$BRIDGE" 2>/dev/null || true
  ip link del "$LB_IF" 2>/dev/null || true
  command -v conntrack >/dev/null && {
    conntrack -D -s "$POD_CIDR" >/dev/null 2>&1; conntrack -D -d "$POD_CIDR" >/dev/null 2>&1
    conntrack -D -d "$LB_CIDR" >/dev/null 2>&1; conntrack -D -d "$SVC_CIDR" >/dev/null 2>&1; } || true
  rm -f /var/lib/cni/results/"$CNI_NET"-* 2>/dev/null || true
  find /var/log/containers -maxdepth 1 -type l -lname "$DIR/*" -delete 2>/dev/null || true
  if [ -f "$DIR/created-dirs" ]; then
    while IFS= read -r d; do
      find "$d" -depth -type d -empty -delete 2>/dev/null || true
    done <"$DIR/created-dirs"
  fi
  if [ -f "$DIR/sysctl.orig" ]; then
    while IFS= read -r line; do sysctl -qw "$line" || true; done <"$DIR/sysctl.orig"
    rm -f "$DIR/sysctl.orig"
  fi
  # Keep the logs for reading; everything else goes.
  find "$DIR" -mindepth 1 -maxdepth 1 ! -name logs -exec rm -rf {} + 2>/dev/null || true
  log "down; logs kept in $DIR/logs"
}

case $cmd in
  up) up "${4:-}" "${5:-}" ;;
  down) down ;;
  # Exit 0 when the cluster is running (containerd, API server and kubelet alive).
  status) alive containerd && alive apiserver && alive kubelet ;;
  *) echo "usage: $0 up|down|status DIR NODE_BIN [TESTENV_BIN IMAGE_DIR]" >&2; exit 2 ;;
esac

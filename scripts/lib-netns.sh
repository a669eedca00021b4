# Shared by the demo and the benchmarks: throwaway network namespaces that stand in for a node
# and its pods. Nothing here touches the real host's interfaces, routes or sysctls.

# make_node NAME: a netns acting as the host, with an uplink veth (both ends stay inside it: this
# kernel has no dummy links), an address on it, default routes and forwarding on.
make_node() {
  local node=$1
  ip netns add "$node"
  ip -n "$node" link set lo up
  ip -n "$node" link add uplink0 type veth peer name uplink1
  ip -n "$node" link set uplink0 up
  ip -n "$node" link set uplink1 up
  ip -n "$node" addr add 192.0.2.10/24 dev uplink0
  ip -n "$node" addr add 2001:db8::10/64 dev uplink0 nodad
  ip -n "$node" route add default via 192.0.2.1 dev uplink0
  ip -n "$node" -6 route add default via 2001:db8::1 dev uplink0
  ip netns exec "$node" sysctl -qw net.ipv4.ip_forward=1 net.ipv6.conf.all.forwarding=1
}

# make_pod NAME: an empty pod netns with loopback up.
make_pod() {
  ip netns add "$1"
  ip -n "$1" link set lo up
}

# drop_netns NAME...: delete namespaces that exist; quiet.
drop_netns() {
  local ns
  for ns in "$@"; do
    ip netns del "$ns" 2>/dev/null || true
  done
}

# plugin_conf CONFLIST INDEX: the stdin libcni gives plugin INDEX of a conflist (name and
# cniVersion injected from the list).
plugin_conf() {
  jq -c --argjson i "$2" '.plugins[$i] + {name: .name, cniVersion: .cniVersion}' "$1"
}

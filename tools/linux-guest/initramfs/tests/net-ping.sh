# virtio-net: bring the interface up and ping a peer.
# Parameters: tsvmm.ip=ADDR/PREFIX tsvmm.peer=ADDR [tsvmm.if=eth0]
ifc=${tsvmm_if:-eth0}
[ -n "$tsvmm_ip" ] || fail "missing tsvmm.ip=ADDR/PREFIX on the command line"
[ -n "$tsvmm_peer" ] || fail "missing tsvmm.peer=ADDR on the command line"
[ -e "/sys/class/net/$ifc" ] || fail "no network interface $ifc"
driver_of "/sys/class/net/$ifc/device"
read -r mac <"/sys/class/net/$ifc/address"
note "$ifc driver=$drv mac=$mac"
ip link set "$ifc" up || fail "ip link set $ifc up failed"
ip addr add "$tsvmm_ip" dev "$ifc" || fail "ip addr add $tsvmm_ip failed"
ping -c 3 -W 2 "$tsvmm_peer" || fail "ping $tsvmm_peer got no reply"
# tsvmm.hold=N: keep the link up N seconds so the host can ping us back.
if [ -n "$tsvmm_hold" ]; then
	echo "linux-guest: holding seconds=$tsvmm_hold"
	sleep "$tsvmm_hold"
fi
pass "peer=$tsvmm_peer"

# virtio-net: driver bound, bring the interface up, ping a peer; optionally
# hold the link up so the host can ping back.
# Parameters: tsvmm.ip=ADDR/PREFIX tsvmm.peer=ADDR [tsvmm.if=eth0]
#   [tsvmm.hold=SECONDS [tsvmm.pings=N]]: after our own pings, print
#   "linux-guest: holding seconds=S pings=N" and wait up to S seconds; with
#   pings=N the wait ends as soon as N ICMP echo requests have arrived
#   (/proc/net/snmp Icmp InEchos), and fewer than N by then is a failure.
ifc=${tsvmm_if:-eth0}
[ -n "$tsvmm_ip" ] || fail "missing tsvmm.ip=ADDR/PREFIX on the command line"
[ -n "$tsvmm_peer" ] || fail "missing tsvmm.peer=ADDR on the command line"
[ -e "/sys/class/net/$ifc" ] || fail "no network interface $ifc"
driver_of "/sys/class/net/$ifc/device"
read -r mac <"/sys/class/net/$ifc/address"
note "$ifc driver=$drv mac=$mac"
[ "$drv" = virtio_net ] || fail "$ifc driver is $drv, not virtio_net"
ip link set "$ifc" up || fail "ip link set $ifc up failed"
ip addr add "$tsvmm_ip" dev "$ifc" || fail "ip addr add $tsvmm_ip failed"
ping -c 3 -W 2 "$tsvmm_peer" || fail "ping $tsvmm_peer got no reply"

# Sets $echos to the Icmp InEchos counter (builtins only: no fork).
in_echos() {
	echos=0
	_names=
	while read -r _tag _rest; do
		[ "$_tag" = Icmp: ] || continue
		if [ -z "$_names" ]; then
			_names=$_rest
			continue
		fi
		set -- $_rest
		for _n in $_names; do
			[ "$_n" = InEchos ] && echos=$1 && break
			shift
		done
		break
	done </proc/net/snmp
}

if [ -n "$tsvmm_hold" ]; then
	in_echos
	echos0=$echos
	want=${tsvmm_pings:-0}
	echo "linux-guest: holding seconds=$tsvmm_hold pings=$want"
	waited=0
	while [ "$waited" -lt "$tsvmm_hold" ]; do
		if [ "$want" -gt 0 ]; then
			in_echos
			[ $((echos - echos0)) -ge "$want" ] && break
		fi
		sleep 1
		waited=$((waited + 1))
	done
	in_echos
	note "echo-requests=$((echos - echos0)) after ${waited}s"
	[ $((echos - echos0)) -ge "$want" ] || fail "only $((echos - echos0)) of $want echo requests arrived in ${tsvmm_hold}s"
fi
read -r rxp <"/sys/class/net/$ifc/statistics/rx_packets"
read -r txp <"/sys/class/net/$ifc/statistics/tx_packets"
note "$ifc rx_packets=$rxp tx_packets=$txp"
sed -n '/virtio/s/^ */linux-guest: irq /p' /proc/interrupts
pass "peer=$tsvmm_peer${tsvmm_hold:+ echo-requests=$((echos - echos0))}"

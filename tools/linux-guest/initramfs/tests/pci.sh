# List PCI functions with vendor/device ids, class and bound driver.
n=0
for d in /sys/bus/pci/devices/*; do
	[ -e "$d/vendor" ] || continue
	read -r v <"$d/vendor"
	read -r dv <"$d/device"
	read -r cls <"$d/class"
	driver_of "$d"
	echo "linux-guest: pci ${d##*/} vendor=$v device=$dv class=$cls driver=$drv"
	n=$((n + 1))
done
[ "$n" -gt 0 ] || fail "no PCI devices in /sys/bus/pci/devices"
pass "devices=$n"

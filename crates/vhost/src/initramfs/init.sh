#!/bin/sh
# /init of the ukci virtual host (busybox sh, PID 1).
# Loads the modules listed in /etc/ukci/modules, mounts the host root (9p tag
# hostroot, read-only) at /host and the results folder (9p tag results) at
# /results, loads KVM (/etc/ukci/modules.kvm, logged to /results/kvm-modules.log),
# reads the agent settings from /results/ukci-agent.conf, runs the
# agent and powers off. Every outcome ends in a UKCI-VHOST: marker line and a
# power-off; the supervisor on the host reads the markers.
export PATH=/bin:/sbin:/usr/bin:/usr/sbin
up() { read -r t _ < /proc/uptime; echo "$t"; }
halt() { sync; poweroff -f; sleep 60; }
fail() {
	echo "UKCI-VHOST: init-error $*"
	mountpoint -q /results && echo "init-error $*" > /results/agent-exit
	halt
}

mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev 2>/dev/null
mkdir -p /dev/pts /dev/shm
mount -t devpts devpts /dev/pts
watchdog="hung_task_timeout_secs=$(cat /proc/sys/kernel/hung_task_timeout_secs 2>/dev/null) hung_task_panic=$(cat /proc/sys/kernel/hung_task_panic 2>/dev/null)"
echo "UKCI-VHOST: init kernel=$(uname -r) $watchdog uptime=$(up)"

while read -r name params; do
	[ -n "$name" ] || continue
	# shellcheck disable=SC2086 # params are separate key=value words
	insmod "/lib/modules/$name.ko" $params || fail "insmod $name $params failed"
done < /etc/ukci/modules

# cache=loose keeps what was read from the host root in this kernel's page
# cache. Without it every read and every page fault of a mapped file is a 9p
# round trip: starting QEMU (a 28 MB binary, ~50 libraries, ~250,000
# relocations) took 3-5 s instead of 0.3-0.8 s. Loose caches are not checked
# against the host again; the host root is read-only here, and everything the
# agent reads from it (itself, QEMU, the guest images, the manifests) is in
# place before boot. Per-run files live in the results share, which caches
# nothing.
mount -t 9p -o trans=virtio,version=9p2000.L,ro,msize=262144,cache=loose hostroot /host ||
	fail "cannot mount the host root (9p tag hostroot)"
mount -t 9p -o trans=virtio,version=9p2000.L,msize=262144 results /results ||
	fail "cannot mount the results folder (9p tag results)"
[ -f /results/ukci-agent.conf ] || fail "no ukci-agent.conf in the results folder"

# KVM where the CPU model has it. A module that does not load leaves the host
# without KVM (the agent says why), not without its agent. Under TCG every
# process costs tens of milliseconds: the CPU flags are read once, and
# insmod's error goes through a file rather than a subshell.
: > /results/kvm-modules.log
cpu_flags=
while read -r line; do
	case "$line" in flags*) cpu_flags=" ${line#*:} " && break ;; esac
done < /proc/cpuinfo
while read -r flag name params; do
	[ -n "$name" ] || continue
	if [ "$flag" = absent ]; then
		echo "$name: absent: this kernel has no such module" >> /results/kvm-modules.log
	elif [ "$flag" != - ] && [ "${cpu_flags#* "$flag" }" = "$cpu_flags" ]; then
		echo "$name: skipped: the CPU model has no $flag" >> /results/kvm-modules.log
	# shellcheck disable=SC2086 # params are separate key=value words
	elif insmod "/lib/modules/$name.ko" $params 2> /tmp/insmod.err; then
		echo "$name: loaded" >> /results/kvm-modules.log
	else
		echo "$name: insmod failed: $(cat /tmp/insmod.err)" >> /results/kvm-modules.log
	fi
done < /etc/ukci/modules.kvm
echo "UKCI-VHOST: kvm $(tr '\n' ';' < /results/kvm-modules.log) uptime=$(up)"
# Sets UKCI_CHROOT, UKCI_RESULTS_HOST and the agent's argv ("set -- ...").
. /results/ukci-agent.conf

if [ "$UKCI_CHROOT" = 1 ]; then
	# The agent sees the host's own filesystem at its usual paths (read-only),
	# with this kernel's /dev, /proc, /sys, a fresh /run (TMPDIR points into
	# it), and the results folder writable at its host path. /tmp stays the
	# host's own: a checkout or a results folder under /tmp must stay visible.
	for d in dev dev/pts proc sys; do
		mount --bind "/$d" "/host/$d" || fail "cannot bind /$d into the host root"
	done
	mount -t tmpfs tmpfs /host/run || fail "cannot mount tmpfs on /run"
	mkdir -p /host/run/tmp
	export TMPDIR=/run/tmp
	mkdir -p "/host$UKCI_RESULTS_HOST" && mount --bind /results "/host$UKCI_RESULTS_HOST" ||
		fail "cannot bind the results folder at $UKCI_RESULTS_HOST"
	export UKCI_RESULTS="$UKCI_RESULTS_HOST"
	echo "UKCI-VHOST: agent-ready uptime=$(up)"
	chroot /host "$@"
	status=$?
else
	# The agent runs in the initramfs; host paths are under /host.
	export UKCI_RESULTS=/results
	prog="/host$1"
	shift
	echo "UKCI-VHOST: agent-ready uptime=$(up)"
	"$prog" "$@"
	status=$?
fi
echo "$status" > /results/agent-exit
echo "UKCI-VHOST: agent-exit status=$status uptime=$(up)"
halt

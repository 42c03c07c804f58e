#!/usr/bin/env bash
# Build the tiny Linux guest (kernel + busybox initramfs) for tsvmm tests.
#
#   bash tools/linux-guest/build.sh            # build or reuse the cached build
#   VMM_LINUX_CACHE=/some/dir bash ...          # cache elsewhere (default /var/cache/tsvmm-linux)
#   JOBS=4 bash ...                             # make -j (default: nproc)
#
# Outputs live OUTSIDE the work tree, keyed by a hash of the inputs:
#   $CACHE/kernel-<khash>/{bzImage,vmlinux,config,build.log}
#   $CACHE/initramfs-<ihash>/initramfs.cpio
#   $CACHE/<hash>/{bzImage,vmlinux,initramfs.cpio,config}   (hard links; hash = khash+ihash)
# and tools/linux-guest/build/{bzImage,vmlinux,initramfs.cpio,config} are symlinks
# into $CACHE/<hash>/.  A second run with unchanged inputs does no work.
# The kernel and the initramfs are cached separately, so editing a test script
# only rebuilds the (sub-second) initramfs.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
SELF="$HERE/build.sh"
CACHE="${VMM_LINUX_CACHE:-/var/cache/tsvmm-linux}"
JOBS="${JOBS:-$(nproc 2>/dev/null || echo 2)}"
KSRC_PKG=linux-source-6.1
KSRC_TAR=/usr/src/linux-source-6.1.tar.xz

log() { printf 'linux-guest build: %s\n' "$*" >&2; }
die() { printf 'linux-guest build: ERROR: %s\n' "$*" >&2; exit 1; }

# Kernel options that must be =y in the final .config, and ones that must be off.
REQUIRED_Y=(
  PVH VIRTIO_PCI VIRTIO_BLK VIRTIO_NET SCSI_VIRTIO BLK_DEV_SD PCI_MSI
  SERIAL_8250_CONSOLE BLK_DEV_INITRD DEVTMPFS INET UNIX
  BLK_DEV BLOCK PCI PROC_FS SYSFS PRINTK TTY BINFMT_ELF BINFMT_SCRIPT
  SERIAL_8250 NET PACKET SCSI 64BIT EXT2_FS
)
REQUIRED_OFF=( SMP MODULES ACPI JUMP_LABEL LEGACY_PTYS PTP_1588_CLOCK_KVM )

# ---------------------------------------------------------------- packages ---
APT_PKGS=( "$KSRC_PKG" bc bison flex libelf-dev libssl-dev busybox-static cpio
           make gcc patch xz-utils )

pkg_installed() {
  [ "$(dpkg-query -W -f='${Status}' "$1" 2>/dev/null || true)" = "install ok installed" ]
}

ensure_packages() {
  local missing=() p installed
  # One dpkg-query for all packages (keeps the cached path fast).
  installed="$(dpkg-query -W -f='${Package} ${Status}\n' "${APT_PKGS[@]}" 2>/dev/null || true)"
  for p in "${APT_PKGS[@]}"; do
    grep -qE "^${p}(:[a-z0-9]+)? install ok installed\$" <<<"$installed" || missing+=("$p")
  done
  [ ${#missing[@]} -eq 0 ] && return 0
  log "installing: ${missing[*]}"
  local sudo=()
  [ "$(id -u)" -eq 0 ] || sudo=(sudo)
  export DEBIAN_FRONTEND=noninteractive
  if ! "${sudo[@]}" apt-get install -y --no-install-recommends "${missing[@]}" >&2; then
    log "apt-get install failed; running apt-get update and retrying"
    "${sudo[@]}" apt-get update >&2
    "${sudo[@]}" apt-get install -y --no-install-recommends "${missing[@]}" >&2
  fi
  for p in "${missing[@]}"; do pkg_installed "$p" || die "package $p did not install"; done
}

# ------------------------------------------------------------------ hashes ---
# Hash of a list of files (names relative to $HERE + contents) plus extra strings.
hash_inputs() {
  local extra="$1"; shift
  {
    printf '%s\n' "$extra"
    local f
    for f in "$@"; do
      if [ -x "$f" ]; then printf '== %s x\n' "${f#"$HERE"/}"; else printf '== %s\n' "${f#"$HERE"/}"; fi
      cat "$f"
    done
  } | sha256sum | cut -c1-16
}

# ------------------------------------------------------------------ kernel ---
PROGRESS_SECONDS="${PROGRESS_SECONDS:-30}"

# While make (PID) runs, prints every PROGRESS_SECONDS how far it got: the
# build log's kbuild lines ("  CC kernel/fork.o") against the count of the
# last cached build's log (about 1500 for this config).
make_progress() {
  local pid="$1" blog="$2" before="$3" t1="$4" expected=0 f n
  for f in "$CACHE"/kernel-*/build.log; do
    [ -f "$f" ] || continue
    n=$(grep -cE '^  [A-Z]' "$f" || true)
    if [ "$n" -gt "$expected" ]; then expected=$n; fi
  done
  [ "$expected" -gt 0 ] || expected=1500
  local next=$((SECONDS + PROGRESS_SECONDS)) done_ last pct
  while kill -0 "$pid" 2>/dev/null; do
    sleep 1
    [ "$SECONDS" -ge "$next" ] || continue
    next=$((SECONDS + PROGRESS_SECONDS))
    done_=$(tail -n +"$((before + 1))" "$blog" | grep -cE '^  [A-Z]' || true)
    last="$(tail -n 5 "$blog" | grep -E '^  [A-Z]' | tail -n 1 | sed 's/^ *//; s/  */ /g' | cut -c1-70 || true)"
    pct=$((done_ * 100 / expected)); if [ "$pct" -gt 99 ]; then pct=99; fi
    log "make bzImage: ~${pct}% (${done_} of ~${expected} build steps) after $((SECONDS - t1)) s${last:+; last: $last}"
  done
}

check_config() {
  local cfg="$1" bad=() o
  for o in "${REQUIRED_Y[@]}"; do
    grep -qx "CONFIG_${o}=y" "$cfg" || bad+=("CONFIG_${o} is not =y")
  done
  for o in "${REQUIRED_OFF[@]}"; do
    grep -qE "^CONFIG_${o}=[ym]" "$cfg" && bad+=("CONFIG_${o} must be off")
  done
  if [ ${#bad[@]} -ne 0 ]; then
    printf 'linux-guest build: ERROR: kernel .config check failed (%s):\n' "$cfg" >&2
    printf '    %s\n' "${bad[@]}" >&2
    return 1
  fi
}

build_kernel() {
  local out="$1" work
  work="$(mktemp -d "$CACHE/tmp.kernel.XXXXXX")"
  local blog="$work/build.log"
  # shellcheck disable=SC2064
  trap "rm -rf '$work'" EXIT
  log "building kernel in $work (log: $blog)"
  local t0=$SECONDS
  log "extracting $KSRC_TAR (about half a minute)"
  tar -C "$work" -xJf "$KSRC_TAR"
  local src
  src="$(find "$work" -mindepth 1 -maxdepth 1 -type d -name 'linux-source-*' | head -n1)"
  [ -n "$src" ] || die "no linux-source-* directory in $KSRC_TAR"
  log "extracted $(basename "$src") in $((SECONDS - t0)) s"

  local p
  for p in "$HERE"/patches/*.patch; do
    [ -e "$p" ] || continue
    log "applying $(basename "$p")"
    patch -d "$src" -p1 --forward --batch <"$p" >>"$blog" 2>&1 \
      || { tail -n 30 "$blog" >&2; die "patch $(basename "$p") does not apply"; }
  done

  # tiny.config, then the tsvmm fragment (later assignments win), then olddefconfig.
  cat "$HERE/config/tiny.config" "$HERE"/config/*.fragment >"$src/.config"
  local -a mk=( make -C "$src" ARCH=x86_64
                KBUILD_BUILD_USER=tsvmm KBUILD_BUILD_HOST=tsvmm
                "KBUILD_BUILD_TIMESTAMP=Thu Jan  1 00:00:00 UTC 2024" )
  "${mk[@]}" olddefconfig >>"$blog" 2>&1 || { tail -n 30 "$blog" >&2; die "olddefconfig failed"; }
  check_config "$src/.config" || die "fix config/tiny.config or config/tsvmm.fragment"

  log "make -j$JOBS bzImage: 8-11 min on 2 busy cores, ~2.5 min on an idle machine; progress every ${PROGRESS_SECONDS} s"
  local t1=$SECONDS
  local before
  before=$(wc -l <"$blog")
  "${mk[@]}" -j"$JOBS" bzImage >>"$blog" 2>&1 &
  local mpid=$!
  make_progress "$mpid" "$blog" "$before" "$t1"
  wait "$mpid" \
    || { tail -n 40 "$blog" >&2; cp "$blog" "$CACHE/failed-kernel.log" || true
         log "rerun with: bash tools/linux-guest/build.sh   (or: npx nx run linux-guest:build)"
         die "kernel build failed (make's last 40 lines above; full log copied to $CACHE/failed-kernel.log)"; }
  log "kernel compiled in $((SECONDS - t1)) s"

  # The PVH entry point is an ELF note in vmlinux: check that it is there.
  if command -v readelf >/dev/null; then
    local notes
    notes="$(readelf -n "$src/vmlinux")"
    grep -q 'Xen' <<<"$notes" || die "vmlinux has no Xen/PVH ELF note (XEN_ELFNOTE_PHYS32_ENTRY)"
  fi

  local stage="$out.tmp.$$"
  rm -rf "$stage"; mkdir -p "$stage"
  cp "$src/arch/x86/boot/bzImage" "$stage/bzImage"
  cp "$src/vmlinux" "$stage/vmlinux"
  cp "$src/.config" "$stage/config"
  "${mk[@]}" -s kernelrelease >"$stage/kernelrelease" 2>/dev/null || true
  cp "$blog" "$stage/build.log"
  mv -T "$stage" "$out"
  rm -rf "$work"
  trap - EXIT
  log "kernel done in $((SECONDS - t0)) s"
}

# --------------------------------------------------------------- initramfs ---
# /pattern: 64 KiB, byte i = (i + (i >> 8) * 37 + 0x5a) & 0xff.  Every 256-byte
# run is a distinct rotation, so swapped or shifted sectors are detected.
# Host-side check, e.g. in TypeScript: buf[i] === ((i + (i >>> 8) * 37 + 0x5a) & 0xff).
write_pattern() {
  if command -v python3 >/dev/null; then
    python3 -c 'import sys; sys.stdout.buffer.write(bytes((i + (i >> 8) * 37 + 0x5a) & 0xff for i in range(65536)))' >"$1"
  else
    perl -e 'binmode STDOUT; print chr(($_ + ($_ >> 8) * 37 + 0x5a) & 0xff) for 0..65535' >"$1"
  fi
  [ "$(stat -c %s "$1")" -eq 65536 ] || die "pattern generation failed"
}

build_initramfs() {
  local out="$1" root
  root="$(mktemp -d "$CACHE/tmp.initramfs.XXXXXX")"
  # shellcheck disable=SC2064
  trap "rm -rf '$root'" EXIT
  local bb=/bin/busybox
  [ -x "$bb" ] || die "/bin/busybox missing (busybox-static)"
  if command -v file >/dev/null && file -L "$bb" | grep -q "dynamically linked"; then die "$bb is not static"; fi

  mkdir -p "$root"/{bin,sbin,usr/bin,usr/sbin,dev,proc,sys,tmp,run,etc,root,tests,lib,mnt}
  chmod 1777 "$root/tmp"
  cp "$bb" "$root/bin/busybox"
  # Build-time applet links (saves the guest a --install at boot).
  local a
  while read -r a; do
    [ -n "$a" ] && [ "$a" != bin/busybox ] || continue
    mkdir -p "$root/$(dirname "$a")"
    [ -e "$root/$a" ] || ln -s /bin/busybox "$root/$a"
  done < <("$bb" --list-full)
  [ -e "$root/bin/sh" ] || ln -s /bin/busybox "$root/bin/sh"

  install -m 0755 "$HERE/initramfs/init" "$root/init"
  install -m 0644 "$HERE/initramfs/tsvmm-lib.sh" "$root/lib/tsvmm-lib.sh"
  install -m 0644 "$HERE/initramfs/fstab" "$root/etc/fstab"
  local t
  for t in "$HERE"/initramfs/tests/*.sh; do install -m 0755 "$t" "$root/tests/"; done
  # Guest helpers (initramfs/src/NAME.c -> /bin/NAME): freestanding, raw
  # syscalls, no libc, so each is a few KiB (the guest unpacks the initramfs
  # at ~10 s per MB; a static glibc binary would add ~0.8 MB).
  local c
  for c in "$HERE"/initramfs/src/*.c; do
    [ -e "$c" ] || continue
    gcc -Os -static -nostdlib -ffreestanding -fno-stack-protector -fno-pie -no-pie \
        -fno-asynchronous-unwind-tables -fno-builtin -mno-red-zone -Wall -Werror -s \
        -Wl,--build-id=none -o "$root/bin/$(basename "$c" .c)" "$c" \
      || die "compiling $(basename "$c") failed"
  done
  write_pattern "$root/pattern"
  "$bb" --list >"$root/etc/busybox.applets"
  printf 'root:x:0:0:root:/root:/bin/sh\n' >"$root/etc/passwd"
  printf 'root:x:0:\n' >"$root/etc/group"
  # Console and null nodes, so /init has stdio even before devtmpfs is mounted.
  if [ "$(id -u)" -eq 0 ]; then
    mknod -m 600 "$root/dev/console" c 5 1
    mknod -m 666 "$root/dev/null" c 1 3
  fi

  local stage="$out.tmp.$$"
  rm -rf "$stage"; mkdir -p "$stage"
  # Uncompressed newc: gzip would cost ~15 s of emulated inflate in the guest.
  (cd "$root" && find . -mindepth 1 | LC_ALL=C sort \
     | cpio -o -H newc -R 0:0 --reproducible --quiet) >"$stage/initramfs.cpio"
  mv -T "$stage" "$out"
  rm -rf "$root"
  trap - EXIT
}

# -------------------------------------------------------------------- main ---
main() {
  local t_start=$SECONDS f
  mkdir -p "$CACHE" || die "cannot create cache dir $CACHE (set VMM_LINUX_CACHE)"
  exec 9>"$CACHE/.lock"
  if ! flock -n 9; then
    log "another build holds $CACHE/.lock; waiting"
    flock 9
  fi
  # Leftovers of an interrupted run (safe: we hold the lock).
  rm -rf "$CACHE"/tmp.* "$CACHE"/*.tmp.*

  ensure_packages
  [ -f "$KSRC_TAR" ] || die "$KSRC_TAR missing (package $KSRC_PKG)"

  local ksrc_ver bb_ver gcc_ver
  ksrc_ver="$(dpkg-query -W -f='${Package} ${Version}' "$KSRC_PKG")"
  bb_ver="$(dpkg-query -W -f='${Package} ${Version}' busybox-static)"
  gcc_ver="$(gcc -dumpfullversion 2>/dev/null || gcc -dumpversion)"

  local kfiles=( "$SELF" "$HERE"/config/tiny.config "$HERE"/config/*.fragment "$HERE"/patches/*.patch )
  local ifiles
  mapfile -t ifiles < <(find "$HERE/initramfs" -type f | LC_ALL=C sort)
  ifiles=( "$SELF" "${ifiles[@]}" )
  local khash ihash hash
  khash="$(hash_inputs "kernel|$ksrc_ver|gcc $gcc_ver" "${kfiles[@]}")"
  ihash="$(hash_inputs "initramfs|$bb_ver|gcc $gcc_ver" "${ifiles[@]}")"
  hash="$(printf '%s %s\n' "$khash" "$ihash" | sha256sum | cut -c1-16)"

  local kdir="$CACHE/kernel-$khash" idir="$CACHE/initramfs-$ihash" odir="$CACHE/$hash"
  # Initramfs first: it takes a second, and is then usable with an older kernel.
  if [ -f "$idir/initramfs.cpio" ]; then log "initramfs cached: $idir"
  else build_initramfs "$idir"; log "initramfs built: $idir"; fi
  if [ -f "$kdir/bzImage" ]; then log "kernel cached: $kdir"; else build_kernel "$kdir"; fi

  if [ ! -f "$odir/initramfs.cpio" ]; then
    local stage="$odir.tmp.$$"
    rm -rf "$stage"; mkdir -p "$stage"
    for f in bzImage vmlinux config kernelrelease; do
      [ -e "$kdir/$f" ] && { ln "$kdir/$f" "$stage/$f" 2>/dev/null || cp "$kdir/$f" "$stage/$f"; }
    done
    ln "$idir/initramfs.cpio" "$stage/initramfs.cpio" 2>/dev/null || cp "$idir/initramfs.cpio" "$stage/"
    printf 'kernel=%s\ninitramfs=%s\nlinux-source=%s\nbusybox=%s\ngcc=%s\n' \
      "$kdir" "$idir" "$ksrc_ver" "$bb_ver" "$gcc_ver" >"$stage/inputs.txt"
    rm -rf "$odir"; mv -T "$stage" "$odir"
  fi

  mkdir -p "$HERE/build"
  for f in bzImage vmlinux initramfs.cpio config; do
    ln -sfn "$odir/$f" "$HERE/build/$f.new.$$" && mv -Tf "$HERE/build/$f.new.$$" "$HERE/build/$f"
  done
  ln -sfn "$odir" "$HERE/build/out.new.$$" && mv -Tf "$HERE/build/out.new.$$" "$HERE/build/out"

  log "done in $((SECONDS - t_start)) s"
  printf 'dir=%s\n' "$odir"
  printf 'bzImage=%s\n' "$odir/bzImage"
  printf 'vmlinux=%s\n' "$odir/vmlinux"
  printf 'initramfs=%s\n' "$odir/initramfs.cpio"
  printf 'config=%s\n' "$odir/config"
}

main "$@"

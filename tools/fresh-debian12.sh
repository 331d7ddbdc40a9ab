#!/usr/bin/env bash
# The README's two commands on a fresh Debian 12, as a new user would run them:
#   tools/fresh-debian12.sh [ARGS for tools/check.sh, e.g. -x or a test path]
#
# 1. A Debian 12 root made by debootstrap (nothing else installed), cached in
#    /var/tmp/tether-fresh/base; each run starts from a copy of it.
# 2. This repository's HEAD cloned into it (/tether).
# 3. `tools/bootstrap.sh && tools/check.sh` run there, as root, in private
#    namespaces (mount, pid, net, uts, ipc): its PostgreSQL, MariaDB,
#    RabbitMQ, tgtd, libvirtd and QEMU are its own, on its own 127.0.0.1, and
#    all die with the run.  The network namespace reaches the outside (the
#    Debian mirror, PyPI) through slirp4netns, not the host's loopback.
#    /dev is a tmpfs with device nodes of its own (null, zero, random,
#    urandom, tty, ptmx, kvm, net/tun): nothing done in the root (the
#    packages' chgrp of /dev/kvm) touches the host's nodes.
#
# Prints pass/fail and the duration of each command; everything goes to
# /var/tmp/tether-fresh/run-<time>.log.  Downloads (apt's .debs, pip's
# wheels, the tiny image's packages) are kept in /var/tmp/tether-fresh/cache
# across runs; FRESH_NO_CACHE=1 starts without them (every download again).
# FRESH_KEEP=1 keeps the run's root; FRESH_ONLY='COMMAND' runs that instead
# of the two commands (to look at the root: FRESH_ONLY='apt-get update').  Needs: debootstrap, slirp4netns,
# unshare (util-linux), git; run as root.
set -euo pipefail
REPO=$(cd "$(dirname "$0")/.." && pwd)
BASE=${FRESH_DIR:-/var/tmp/tether-fresh}
MIRROR=${FRESH_MIRROR:-http://deb.debian.org/debian}
STAMP=$(date -u +%Y%m%dT%H%M%SZ)
RUN=$BASE/run-$STAMP
LOG=$BASE/run-$STAMP.log
ROOT=$RUN/root

for tool in debootstrap slirp4netns unshare git; do
  command -v "$tool" >/dev/null || { echo "fresh: $tool is needed (apt-get install debootstrap slirp4netns)" >&2; exit 1; }
done
[ "$(id -u)" = 0 ] || { echo "fresh: run as root" >&2; exit 1; }
mkdir -p "$BASE/cache/apt" "$BASE/cache/pip" "$BASE/cache/tiny" "$BASE/debs"
exec > >(tee -a "$LOG") 2>&1
say() { echo "fresh: $*"; }
started=$(date +%s)

# -- the Debian 12 root, made once ------------------------------------------------
if [ ! -x "$BASE/base/usr/bin/apt-get" ]; then
  say "debootstrap bookworm into $BASE/base (once)"
  rm -rf "$BASE/base.tmp"
  debootstrap --cache-dir="$BASE/debs" bookworm "$BASE/base.tmp" "$MIRROR" >"$BASE/debootstrap.log" 2>&1 \
    || { tail -20 "$BASE/debootstrap.log"; exit 1; }
  mv "$BASE/base.tmp" "$BASE/base"
fi
mkdir -p "$RUN"
cp -a "$BASE/base" "$ROOT"
git clone -q --no-hardlinks "$REPO" "$ROOT/tether"
say "root $ROOT from $BASE/base; /tether at $(git -C "$ROOT/tether" log -1 --format='%h %s' | cut -c1-72)"
if [ "${FRESH_NO_CACHE:-}" != 1 ]; then
  mkdir -p "$ROOT/root/.cache/pip" "$ROOT/var/cache/tether-tests/tiny"
fi
# the host's trusted CAs, for pip: on a network whose TLS proxy the host trusts
# through its own CA (as a new machine there would be set up), PyPI only
# verifies with it; the Debian mirror is plain HTTP with signed lists
if [ -f /etc/ssl/certs/ca-certificates.crt ]; then
  cp /etc/ssl/certs/ca-certificates.crt "$ROOT/etc/fresh-host-ca.crt"
fi

# -- what runs inside the namespaces ----------------------------------------------
cat >"$RUN/inside.sh" <<'INSIDE'
#!/bin/bash
# PID 1 of the run's pid namespace, in its own mount, net, uts and ipc namespaces
set -euo pipefail
ROOT=$1 BASE=$2 RUN=$3; shift 3
mount --make-rprivate /
# the root a mount point of its own, as on a machine: libvirt makes "/" a slave
# mount in each QEMU's namespace, which fails (EINVAL) on a plain chroot folder
mount --bind "$ROOT" "$ROOT"
hostname tether-fresh
for i in $(seq 200); do ip link show tap0 >/dev/null 2>&1 && break; sleep 0.05; done
ip link set lo up
mount -t proc proc "$ROOT/proc"
mount -t sysfs sysfs "$ROOT/sys"
mount -t tmpfs -o mode=0755,nosuid tmpfs "$ROOT/dev"
mkdev() { mknod -m "$1" "$ROOT/dev/$2" c "$3" "$4"; }
mkdev 0666 null 1 3; mkdev 0666 zero 1 5; mkdev 0666 full 1 7
mkdev 0666 random 1 8; mkdev 0666 urandom 1 9; mkdev 0666 tty 5 0
mkdev 0660 kvm 10 232
mkdir -m 0755 "$ROOT/dev/net"; mkdev 0666 net/tun 10 200
mkdir -m 0755 "$ROOT/dev/pts" "$ROOT/dev/shm"
mount -t devpts -o newinstance,ptmxmode=0666,mode=0620 devpts "$ROOT/dev/pts"
ln -s pts/ptmx "$ROOT/dev/ptmx"
mount -t tmpfs -o mode=1777 tmpfs "$ROOT/dev/shm"
ln -s /proc/self/fd "$ROOT/dev/fd"
for n in 0:stdin 1:stdout 2:stderr; do ln -s "/proc/self/fd/${n%%:*}" "$ROOT/dev/${n#*:}"; done
mount -t tmpfs -o mode=0755 tmpfs "$ROOT/run"
if [ "${FRESH_NO_CACHE:-}" != 1 ]; then
  mount --bind "$BASE/cache/apt" "$ROOT/var/cache/apt/archives"
  mount --bind "$BASE/cache/pip" "$ROOT/root/.cache/pip"
  mount --bind "$BASE/cache/tiny" "$ROOT/var/cache/tether-tests/tiny"
fi
echo "nameserver 10.0.2.3" >"$ROOT/etc/resolv.conf"
printf '127.0.0.1 localhost\n127.0.1.1 tether-fresh\n::1 localhost\n' >"$ROOT/etc/hosts"
echo tether-fresh >"$ROOT/etc/hostname"
step() {  # NAME COMMAND: run it in the root, time it, record pass/fail
  local name=$1 t0 rc; shift
  t0=$(date +%s)
  echo "fresh: == $name: $*"
  set +e
  local ca=()
  [ -f "$ROOT/etc/fresh-host-ca.crt" ] && ca=(PIP_CERT=/etc/fresh-host-ca.crt)
  chroot "$ROOT" /usr/bin/env -i HOME=/root TERM=dumb LANG=C.UTF-8 "${ca[@]}" \
    PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    /bin/bash -c "cd /tether && $*"
  rc=$?
  set -e
  echo "$name $rc $(( $(date +%s) - t0 ))" >>"$RUN/results"
  return $rc
}
if [ -n "${FRESH_ONLY:-}" ]; then  # one command instead (a quick look at the root)
  step only "$FRESH_ONLY"
else
  step bootstrap tools/bootstrap.sh && step check "tools/check.sh $*"
fi
INSIDE
chmod +x "$RUN/inside.sh"

# -- run ------------------------------------------------------------------------------
: >"$RUN/results"
unshare --mount --pid --net --uts --ipc --fork --kill-child \
  env FRESH_NO_CACHE="${FRESH_NO_CACHE:-}" FRESH_ONLY="${FRESH_ONLY:-}" "$RUN/inside.sh" "$ROOT" "$BASE" "$RUN" "$@" &
inside=$!
# stopped (^C, kill): the namespace's first process dies, and with it every
# process of the run (unshare itself does not pass the signal on)
trap 'pkill -KILL -P "$inside" 2>/dev/null || true' INT TERM
# unshare itself is in the new network namespace: give it a way out
for i in $(seq 100); do
  [ "$(readlink "/proc/$inside/ns/net")" != "$(readlink /proc/self/ns/net)" ] && break
  sleep 0.05
done
slirp4netns --configure --mtu=65520 --disable-host-loopback "$inside" tap0 \
  >"$RUN/slirp4netns.log" 2>&1 &
slirp=$!
set +e
wait "$inside"
rc=$?
set -e
kill "$slirp" 2>/dev/null || true
wait "$slirp" 2>/dev/null || true

# -- report ----------------------------------------------------------------------------
say "---- results ($(uname -r), $(nproc) cores; log $LOG)"
for name in only bootstrap check; do
  [ "$name" = only ] && [ -z "${FRESH_ONLY:-}" ] && continue
  [ "$name" != only ] && [ -n "${FRESH_ONLY:-}" ] && continue
  line=$(grep "^$name " "$RUN/results" || true)
  if [ -z "$line" ]; then
    say "$(printf '%-10s' "$name") not run"
  else
    read -r _ code secs <<<"$line"
    say "$(printf '%-10s' "$name") $([ "$code" = 0 ] && echo PASS || echo "FAIL (exit $code)")  $(( secs / 60 ))m$(printf '%02d' $(( secs % 60 )))s"
  fi
done
say "total $(( ($(date +%s) - started) / 60 ))m$(printf '%02d' $(( ($(date +%s) - started) % 60 )))s"
if [ "${FRESH_KEEP:-}" != 1 ]; then
  rm -rf "$ROOT"
fi
exit "$rc"

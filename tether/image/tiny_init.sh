#!/bin/sh
# /init of Tether's tiny image: a busybox userland that loads the virtio and
# SCSI modules, says READY on the console (ttyS0) and then serves the guest
# agent on the second serial port (ttyS1), which the host reaches through a
# unix socket.  One request per line, "<id> <command> [args]", one answer per
# line, "<id> ok <result>" or "<id> err <message>".  Commands:
#   ping                   -> pong
#   disks                  -> name=serial ...  (every sdX / vdX disk)
#   write VOLUME_ID MIB    -> sha256 of MIB MiB of fresh random data written at
#                             the start of the volume's disk (O_DIRECT, then
#                             fsync); needs MIB MiB of free guest memory
#   read VOLUME_ID MIB     -> sha256 of the first MIB MiB of the disk (O_DIRECT)
# A volume's disk is the one whose serial the volume id starts with
# (virtio-scsi: VPD page 0x80, the whole id; virtio-blk: its first 20 chars).
/bin/busybox mkdir -p /proc /sys /dev /tmp /sbin /usr/bin /usr/sbin
/bin/busybox --install -s
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev 2>/dev/null
for m in $(cat /etc/modules); do
  insmod "/lib/modules/$m.ko" || echo "tether-tiny: insmod $m failed" > /dev/console
done

serial_of() {  # the serial of block device $1 (sda, vdb ...), or nothing
  if [ -r "/sys/block/$1/serial" ]; then
    cat "/sys/block/$1/serial"
  elif [ -r "/sys/block/$1/device/vpd_pg80" ]; then
    tail -c +5 "/sys/block/$1/device/vpd_pg80" | tr -d '\000 '
  fi
}

disks() {
  out=""
  for path in /sys/block/sd* /sys/block/vd*; do
    [ -e "$path" ] || continue
    name=${path##*/}
    out="$out $name=$(serial_of "$name")"
  done
  echo "${out# }"
}

device_of() {  # /dev/X of the disk whose serial volume id $1 starts with
  for path in /sys/block/sd* /sys/block/vd*; do
    [ -e "$path" ] || continue
    name=${path##*/}
    serial=$(serial_of "$name")
    [ -n "$serial" ] || continue
    case "$1" in "$serial"*) echo "/dev/$name"; return 0 ;; esac
  done
  return 1
}

write_random() {  # $1 device, $2 MiB: sha256 of what went to the disk
  # generated into RAM first: a pipe through tee costs far more syscalls
  # than the guest (emulated, one CPU) can afford
  dd if=/dev/urandom of=/tmp/data bs=1M count="$2" iflag=fullblock 2>/dev/null || {
    echo "cannot hold $2 MiB in memory"; rm -f /tmp/data; return 1; }
  sum=$(sha256sum < /tmp/data | cut -d' ' -f1)
  dd if=/tmp/data of="$1" bs=1M oflag=direct conv=fsync 2>/tmp/dd.err
  status=$?
  rm -f /tmp/data
  [ "$status" = 0 ] || { tr '\n' ' ' < /tmp/dd.err; return 1; }
  echo "$sum"
}

read_sum() {  # $1 device, $2 MiB
  sum=$(dd if="$1" bs=1M count="$2" iflag=direct 2>/tmp/dd.err | sha256sum | cut -d' ' -f1)
  grep -q "^$2+0 records in" /tmp/dd.err || { tr '\n' ' ' < /tmp/dd.err; return 1; }
  echo "$sum"
}

handle() {  # $1 id, $2 command, $3 $4 arguments
  case "$2" in
    ping) echo "$1 ok pong" ;;
    disks) echo "$1 ok $(disks)" ;;
    write|read)
      dev=$(device_of "$3") || { echo "$1 err no disk with a serial matching $3"; return; }
      if [ "$2" = write ]; then result=$(write_random "$dev" "$4")
      else result=$(read_sum "$dev" "$4"); fi
      if [ $? = 0 ]; then echo "$1 ok $result"; else echo "$1 err $result"; fi ;;
    *) echo "$1 err unknown command $2" ;;
  esac
}

stty -F /dev/ttyS1 raw -echo 115200
echo "TETHER-TINY-READY $(uname -r)" > /dev/console
exec 3<>/dev/ttyS1
while true; do
  read -r id cmd a1 a2 <&3 || continue
  id=$(echo "$id" | tr -d '\r')
  [ -n "$cmd" ] || continue
  handle "$id" "$cmd" "$a1" "$a2" >&3
done

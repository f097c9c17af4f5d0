#!/usr/bin/env bash
# Writes a busybox root filesystem into DIR: Debian's busybox-static with a link per
# applet, /etc/passwd and /etc/group with root and nobody, and the dirs a container mounts
# over. The base layer of the demo images (build-images.sh) and of critest's
# (scripts/critest-images.sh).
#
#   examples/busybox-rootfs.sh DIR
set -euo pipefail
base="${1:?usage: busybox-rootfs.sh DIR}"
if [ ! -x /bin/busybox ] || ! /bin/busybox --list >/dev/null 2>&1; then
  DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends busybox-static
fi
if ! file -L /bin/busybox | grep -q 'statically linked'; then
  echo "busybox-rootfs.sh: /bin/busybox is not static; install busybox-static" >&2
  exit 1
fi
mkdir -p "$base/bin" "$base/etc" "$base/tmp" "$base/proc" "$base/sys" "$base/dev" "$base/root"
cp /bin/busybox "$base/bin/busybox"
for applet in $(/bin/busybox --list); do
  [ "$applet" = busybox ] || ln -s busybox "$base/bin/$applet"
done
# Debian's busybox-static is built without pgrep, which the upstream busybox image has
# (critest looks for leftover processes with `pgrep sleep`): the same lookup over /proc,
# matching process names against an extended regular expression as pgrep does.
if [ ! -e "$base/bin/pgrep" ]; then
  cat > "$base/bin/pgrep" <<'SCRIPT'
#!/bin/sh
# pgrep PATTERN: the pids of the processes whose name matches PATTERN (an ERE).
[ $# -eq 1 ] || { echo "usage: pgrep PATTERN" >&2; exit 2; }
found=1
for dir in /proc/[0-9]*; do
  # A process may end while the list is read: its name is then gone, silently.
  name=$(cat "$dir/comm" 2>/dev/null) || continue
  if echo "$name" | grep -qE -- "$1"; then
    echo "${dir#/proc/}"
    found=0
  fi
done
exit $found
SCRIPT
  chmod 755 "$base/bin/pgrep"
fi
printf 'root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/:/bin/false\n' > "$base/etc/passwd"
printf 'root:x:0:\nnobody:x:65534:\n' > "$base/etc/group"
chmod 1777 "$base/tmp"

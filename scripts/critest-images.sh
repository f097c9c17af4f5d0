#!/usr/bin/env bash
# Builds, offline, the images critest v1.26.1 runs (../shared/tools/README.md lists them),
# under the names its sources give, and imports them into an image store. Every image is
# busybox-static with what the specs look for:
#
#   registry.k8s.io/e2e-test-images/busybox:1.29-2   busybox, its sh Debian's dynamic one
#                                                    (which looks commands up in PATH), plus
#                                                    ipcs as a script, and the base's pgrep
#                                                    (examples/busybox-rootfs.sh)
#   …/nginx:1.14-2, …/hostnet-nginx-amd64            hostname-server named nginx, on 80 or 12003,
#                                                    titled as nginx's master process, its
#                                                    pid in /var/run/nginx.pid
#   …/httpd:2.4.39-4                                  hostname-server on 80, logging as httpd does
#   …/nonewprivs:1.3                                  a setuid-root program printing its euid
#   …/test-image-user-*, …/test-image-predefined-group   USER as critest expects, with
#                                                    /etc/passwd and /etc/group to match
#   …/test-image-{1,2,3}, test-image-tags:{1,2,3}, test-image-latest, test-image-tag:*
#
#   scripts/critest-images.sh --store DIR      (binaries from $SANDBOXD_BIN_DIR, default
#                                               target/release; gcc for nonewprivs)
set -euo pipefail
cd "$(dirname "$0")/.."
store=
while [ $# -gt 0 ]; do
  case "$1" in
    --store) store="$2"; shift 2 ;;
    *) echo "critest-images.sh: unknown argument $1" >&2; exit 2 ;;
  esac
done
[ -n "$store" ] || { echo "critest-images.sh: --store DIR is required" >&2; exit 2; }
bin="${SANDBOXD_BIN_DIR:-target/release}"
e2e=registry.k8s.io/e2e-test-images
cri=gcr.io/k8s-staging-cri-tools

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
base="$work/base"
examples/busybox-rootfs.sh "$base"

# ipcs: the System V IPC objects of this ipc namespace, from /proc/sysvipc.
# (busybox sh runs its own applets before any file in PATH, so only names busybox lacks
# can be given this way; the httpd script below execs its server by path for that reason.)
cat > "$base/bin/ipcs" <<'SH'
#!/bin/sh
for kind in shm msg sem; do
  echo "------ $kind ------"
  tail -n +2 "/proc/sysvipc/$kind" 2>/dev/null
done
SH
chmod 755 "$base/bin/ipcs"

pack() {
  local name="$1"; shift
  local out
  out="$work/img-$(echo "$name" | tr '/:' '--')"
  "$bin/oci-pack" --gzip --env PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    --label "org.opencontainers.image.title=$name" --name "$name" --out "$out" "$@" >/dev/null
  "$bin/sandboxctl" image import "$out" --store "$store" >/dev/null
  echo "$name"
}

# The e2e busybox's shell looks commands up in PATH (a masked /bin/ls is "Permission
# denied"); busybox-static's runs its own applets first, so this image's /bin/sh is
# Debian's dynamic busybox (unpacked by install-deps.sh) with the libraries it loads, and
# every other command is still busybox-static's.
dynamic=/usr/local/lib/sandboxd/busybox-dynamic/busybox
[ -x "$dynamic" ] || { echo "critest-images.sh: $dynamic is missing; run scripts/install-deps.sh" >&2; exit 1; }
shell="$work/shell"
mkdir -p "$shell/bin"
cp "$dynamic" "$shell/bin/sh"
for lib in $(ldd "$dynamic" | grep -o '/[^ ]*'); do
  mkdir -p "$shell$(dirname "$lib")"
  cp -L "$lib" "$shell$lib"
done
pack "$e2e/busybox:1.29-2" --layer "$base" --layer "$shell" --cmd sh

# Web servers: hostname-server answers 200 on /, named as the real servers are.
web="$work/web"
mkdir -p "$web/usr/sbin" "$web/usr/local/bin" "$web/var/run"
cp "$bin/hostname-server" "$web/usr/sbin/nginx"
cp "$bin/hostname-server" "$web/usr/local/bin/httpd"
cat > "$web/usr/local/bin/httpd-foreground" <<'SH'
#!/bin/sh
echo "AH00094: Command line: 'httpd -D FOREGROUND'"
exec /usr/local/bin/httpd --port 80
SH
chmod 755 "$web/usr/local/bin/httpd-foreground"
nginx_title=(--cmd --title --cmd "nginx: master process nginx -g daemon off;"
  --cmd --pid-file --cmd /var/run/nginx.pid)
pack "$e2e/nginx:1.14-2" --layer "$base" --layer "$web" --cmd nginx --cmd --port --cmd 80 \
  "${nginx_title[@]}" --port 80/tcp
pack "$cri/hostnet-nginx-amd64:latest" --layer "$base" --layer "$web" \
  --cmd nginx --cmd --port --cmd 12003 "${nginx_title[@]}" --port 12003/tcp
pack "$e2e/httpd:2.4.39-4" --layer "$base" --layer "$web" --cmd httpd-foreground --port 80/tcp

# nonewprivs: setuid root; with no_new_privs the kernel runs it with the caller's euid.
nnp="$work/nonewprivs"
mkdir -p "$nnp/usr/local/bin"
cat > "$work/nnp.c" <<'C'
#include <stdio.h>
#include <unistd.h>
int main(void) { printf("Effective uid: %d\n", (int)geteuid()); return 0; }
C
gcc -static -O2 -o "$nnp/usr/local/bin/nnp" "$work/nnp.c"
chmod 4755 "$nnp/usr/local/bin/nnp"
pack "$e2e/nonewprivs:1.3" --layer "$base" --layer "$nnp" --cmd /usr/local/bin/nnp

# Users and groups, with the files that name them.
users="$work/users"
mkdir -p "$users/etc"
cp "$base/etc/passwd" "$base/etc/group" "$users/etc/"
cat >> "$users/etc/passwd" <<'TXT'
www-data:x:33:33:www-data:/var/www:/bin/sh
user:x:1000:1000:user:/home/user:/bin/sh
TXT
cat >> "$users/etc/group" <<'TXT'
www-data:x:33:
user:x:1000:
predefined:x:50000:user
TXT
for spec in user-uid:1002 user-username:www-data user-uid-group:1003:1004 \
  user-username-group:www-data:1004 predefined-group:1000; do
  name="${spec%%:*}"; user="${spec#*:}"
  pack "$cri/test-image-$name:latest" --layer "$base" --layer "$users" --user "$user" --cmd sh
done

# Image references: three different images, one image under three tags, and the
# reference forms.
for i in 1 2 3; do
  pack "$cri/test-image-$i:latest" --layer "$base" --cmd sh
done
for ref in test-image-latest:latest test-image-tag:test test-image-tag:all; do
  pack "$cri/$ref" --layer "$base" --cmd sh
done
tags="$work/img-tags"
"$bin/oci-pack" --gzip --label "org.opencontainers.image.title=$cri/test-image-tags" \
  --name "$cri/test-image-tags:1" --out "$tags" --layer "$base" --cmd sh >/dev/null
for tag in 1 2 3; do
  "$bin/sandboxctl" image import "$tags" --name "$cri/test-image-tags:$tag" --store "$store" >/dev/null
  echo "$cri/test-image-tags:$tag"
done

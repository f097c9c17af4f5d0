#!/usr/bin/env bash
# The CRI validation suite as sandboxd's conformance measure: builds the images critest
# needs (offline, scripts/critest-images.sh), starts a sandboxd on a node namespace of its
# own, runs critest (from $CRITEST, else ../shared/tools/critest: cri-tools v1.26.1) inside
# that namespace (so it reaches pod IPs and host ports as a kubelet on the node would),
# and prints passed/failed/skipped and the spec of each failure.
#
# Exits non-zero only if sandboxd crashed or something leaked: a pod, process, veth, IP
# lease, CNI cache entry, netns pin or mount left once critest is done and what is still
# listed is removed. Failing specs are the measure, not an error. Run as root after
# `cargo build --release --workspace`.
#
#   scripts/conformance.sh [--focus REGEX] [--keep DIR]
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)
critest="${CRITEST:-$root/../shared/tools/critest}"
bin="$root/${SANDBOXD_BIN_DIR:-target/release}"
focus=
keep=
while [ $# -gt 0 ]; do
  case "$1" in
    --focus) focus="$2"; shift 2 ;;
    --keep) keep="$2"; shift 2 ;;
    *) echo "conformance.sh: unknown argument $1" >&2; exit 2 ;;
  esac
done
if [ ! -x "$critest" ]; then
  echo "conformance.sh: critest not found at $critest; set CRITEST to cri-tools v1.26.1's critest" >&2
  exit 2
fi

work=$(mktemp -d /tmp/sandboxd-conformance.XXXXXX)
# The node: a network namespace pinned in the work dir (not /run/netns, so nothing of the
# machine's changes; enter it with nsenter --net=$node).
node="$work/node"
socket="$work/sandboxd.sock"
daemon=
ctl() { "$bin/sandboxctl" --runtime-endpoint "unix://$socket" "$@"; }
cleanup() {
  if [ -n "$daemon" ] && kill -0 "$daemon" 2>/dev/null; then
    ctl rm -f --all >/dev/null 2>&1 || true
    ctl rmp --all >/dev/null 2>&1 || true
    kill "$daemon" 2>/dev/null || true
    wait "$daemon" 2>/dev/null || true
  fi
  # Whatever a crash left: this daemon's pods are tagged with ids in its state dir.
  for dir in "$work"/state/sandboxes/*/; do
    [ -d "$dir" ] || continue
    id=$(basename "$dir")
    for pid in $(grep -l "SANDBOXD_SANDBOX_ID=$id" /proc/[0-9]*/environ 2>/dev/null | cut -d/ -f3); do
      kill -9 "$pid" 2>/dev/null || true
    done
  done
  grep " $work" /proc/mounts | awk '{print $2}' | sort -r | xargs -r -n1 umount -l 2>/dev/null || true
  umount "$node" 2>/dev/null || true
  if [ -n "$keep" ]; then mkdir -p "$keep" && cp -r "$work"/*.log "$work"/report.json "$keep"/ 2>/dev/null || true; fi
  rm -rf "$work"
}
trap cleanup EXIT

echo "== images (scripts/critest-images.sh, offline)"
SANDBOXD_BIN_DIR="${SANDBOXD_BIN_DIR:-target/release}" scripts/critest-images.sh --store "$work/state/images" | wc -l | xargs echo "images:"

echo "== sandboxd on node namespace $node"
touch "$node"
unshare --net="$node" true
nsenter --net="$node" ip link set lo up
"$bin/sandboxd" --node-netns "$node" --node-name critest-node \
  --state-dir "$work/state" --netns-dir "$work/netns" --cni-conf-dir "$work/net.d" \
  --runtime-root "$work/runtime" --socket "$socket" --proxy-mode none \
  >"$work/sandboxd.log" 2>&1 &
daemon=$!
for _ in $(seq 100); do ctl version >/dev/null 2>&1 && break; sleep 0.1; done
ctl version >/dev/null

printf 'defaultTestContainerImage: registry.k8s.io/e2e-test-images/busybox:1.29-2\nwebServerTestImage: registry.k8s.io/e2e-test-images/nginx:1.14-2\n' >"$work/images.yaml"
echo "== critest $("$critest" --version 2>/dev/null | head -n 1)"
args=(-runtime-endpoint "unix://$socket" -image-endpoint "unix://$socket"
  -test-images-file "$work/images.yaml" --ginkgo.no-color
  --ginkgo.json-report "$work/report.json")
[ -n "$focus" ] && args+=(--ginkgo.focus "$focus")
started=$(date +%s)
nsenter --net="$node" "$critest" "${args[@]}" >"$work/critest.log" 2>&1 || true
echo "critest ran for $(( $(date +%s) - started )) s"

status=0
if ! kill -0 "$daemon" 2>/dev/null; then
  echo "conformance.sh: sandboxd crashed during critest:" >&2
  tail -n 30 "$work/sandboxd.log" >&2
  status=1
fi

python3 - "$work/report.json" <<'PY'
import json, sys
suites = json.load(open(sys.argv[1]))
counts = {}
failed = []
for suite in suites:
    for spec in suite.get("SpecReports") or []:
        if spec.get("LeafNodeType") != "It":
            continue
        state = spec["State"]
        counts[state] = counts.get(state, 0) + 1
        if state not in ("passed", "skipped", "pending"):
            name = " ".join(spec.get("ContainerHierarchyTexts") or []) + " " + spec["LeafNodeText"]
            reason = (spec.get("Failure") or {}).get("Message", "").strip().splitlines()
            failed.append((name, reason[0][:160] if reason else state))
total = sum(counts.values())
print(f"critest: {counts.get('passed', 0)} passed, {total - counts.get('passed', 0) - counts.get('skipped', 0) - counts.get('pending', 0)} failed, "
      f"{counts.get('skipped', 0) + counts.get('pending', 0)} skipped, of {total} specs")
for name, reason in sorted(failed):
    print(f"  FAIL {name}\n       {reason}")
PY

if [ "$status" = 0 ]; then
  echo "== what critest left"
  ctl rm -f --all >/dev/null 2>&1 || true
  ctl rmp --all >/dev/null 2>&1 || true
  # Each probe may find nothing (grep exits 1 then): only what they print counts.
  left=$(
    set +e +o pipefail
    ctl pods -q | sed 's/^/pod /'
    grep -l "SANDBOXD_SANDBOX_ID=" /proc/[0-9]*/environ 2>/dev/null | while read -r f; do
      pid=$(echo "$f" | cut -d/ -f3)
      id=$(tr '\0' '\n' <"$f" 2>/dev/null | sed -n 's/^SANDBOXD_SANDBOX_ID=//p')
      if [ -d "$work/state/sandboxes/$id" ] || [ -e "$work/netns/$id" ]; then echo "pause process $pid"; fi
    done
    nsenter --net="$node" ip -o link show type veth | awk -F': ' '{print "veth " $2}'
    find "$work/state/cni" -type f -path '*/results/*' 2>/dev/null | sed 's/^/CNI cache entry /'
    find "$work/state/cni/ipam" -type f -name '10.*' 2>/dev/null | sed 's/^/IP lease /'
    find "$work/netns" -mindepth 1 2>/dev/null | sed 's/^/netns pin /'
    grep " $work/" /proc/mounts | grep -v -e " $work/netns " -e " $node " | awk '{print "mount " $2}'
  )
  if [ -n "$left" ]; then
    echo "conformance.sh: left behind after critest:" >&2
    echo "$left" >&2
    status=1
  else
    echo "nothing left"
  fi
fi
exit "$status"

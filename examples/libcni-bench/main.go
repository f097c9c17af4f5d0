// libcni-bench: the same ADD/DEL cycles as cni-bench, through upstream libcni, so both
// runtimes are measured in one run. Our harness; libcni itself comes from Debian's
// golang-github-appc-cni-dev. Built by scripts/bench.sh (GOPATH mode, offline).
//
//	libcni-bench <conf dir> <network> <pod netns path> <cache dir> <cycles> [<portMappings JSON>]
//
// Plugins are looked for in CNI_PATH (default /usr/lib/cni:/opt/cni/bin).
// Prints {"add_ns": [...], "del_ns": [...], "add_del_ns": [...]}.
package main

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"time"

	"github.com/containernetworking/cni/libcni"
)

func fail(err error) {
	fmt.Fprintln(os.Stderr, "libcni-bench:", err)
	os.Exit(1)
}

func main() {
	if len(os.Args) < 6 {
		fail(fmt.Errorf("usage: libcni-bench <conf dir> <network> <netns> <cache dir> <cycles> [<portMappings JSON>]"))
	}
	list, err := libcni.LoadConfList(os.Args[1], os.Args[2])
	if err != nil {
		fail(err)
	}
	cycles, err := strconv.Atoi(os.Args[5])
	if err != nil {
		fail(err)
	}
	var portMappings interface{}
	if len(os.Args) > 6 {
		if err := json.Unmarshal([]byte(os.Args[6]), &portMappings); err != nil {
			fail(err)
		}
	}
	path := os.Getenv("CNI_PATH")
	if path == "" {
		path = "/usr/lib/cni:/opt/cni/bin"
	}
	cni := libcni.NewCNIConfigWithCacheDir(filepath.SplitList(path), os.Args[4], nil)
	ctx := context.Background()
	runtime := func(cycle int) *libcni.RuntimeConf {
		id := fmt.Sprintf("bench-%d", cycle)
		rt := &libcni.RuntimeConf{
			ContainerID: id,
			NetNS:       os.Args[3],
			IfName:      "eth0",
			Args: [][2]string{
				{"IgnoreUnknown", "1"}, {"K8S_POD_NAMESPACE", "default"},
				{"K8S_POD_NAME", id}, {"K8S_POD_INFRA_CONTAINER_ID", id},
			},
		}
		if portMappings != nil {
			rt.CapabilityArgs = map[string]interface{}{"portMappings": portMappings}
		}
		return rt
	}
	// One warm-up cycle, as cni-bench does.
	if _, err := cni.AddNetworkList(ctx, list, runtime(-1)); err != nil {
		fail(err)
	}
	if err := cni.DelNetworkList(ctx, list, runtime(-1)); err != nil {
		fail(err)
	}
	out := map[string][]int64{}
	for cycle := 0; cycle < cycles; cycle++ {
		rt := runtime(cycle)
		start := time.Now()
		if _, err := cni.AddNetworkList(ctx, list, rt); err != nil {
			fail(fmt.Errorf("ADD %d: %w", cycle, err))
		}
		added := time.Now()
		if err := cni.DelNetworkList(ctx, list, rt); err != nil {
			fail(fmt.Errorf("DEL %d: %w", cycle, err))
		}
		done := time.Now()
		out["add_ns"] = append(out["add_ns"], added.Sub(start).Nanoseconds())
		out["del_ns"] = append(out["del_ns"], done.Sub(added).Nanoseconds())
		out["add_del_ns"] = append(out["add_del_ns"], done.Sub(start).Nanoseconds())
	}
	if err := json.NewEncoder(os.Stdout).Encode(out); err != nil {
		fail(err)
	}
}

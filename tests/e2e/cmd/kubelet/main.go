// Command kubelet is the upstream kubelet, built from the published
// k8s.io/kubernetes module pinned in ../../go.mod for the e2e tests
// (tests/e2e/kubelet.py runs it against the fake CRI runtime of ../fake-cri).
package main

import (
	"context"
	"os"

	"k8s.io/component-base/cli"
	_ "k8s.io/component-base/logs/json/register"          // JSON log format
	_ "k8s.io/component-base/metrics/prometheus/clientgo" // client-go metrics
	_ "k8s.io/component-base/metrics/prometheus/version"  // version metric
	"k8s.io/kubernetes/cmd/kubelet/app"
)

func main() {
	os.Exit(cli.Run(app.NewKubeletCommand(context.Background())))
}

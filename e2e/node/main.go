// Command node runs the Kubernetes node and controller components of the single-node test
// cluster (see e2e/README.md, "Node cluster"): kube-controller-manager, kube-scheduler,
// kubelet and kube-proxy, all from the same k8s.io/kubernetes release as the testenv API
// server, in one binary chosen by its first argument (or by the name of a link to it, as
// k3s and busybox do). `node lb-addresses` is the LoadBalancer address helper (lb.go).
package main

import (
	"context"
	"fmt"
	"os"
	"path/filepath"

	"github.com/spf13/cobra"
	"k8s.io/component-base/cli"
	_ "k8s.io/component-base/logs/json/register"
	_ "k8s.io/component-base/metrics/prometheus/clientgo"
	_ "k8s.io/component-base/metrics/prometheus/version"
	"k8s.io/component-base/version"
	kcm "k8s.io/kubernetes/cmd/kube-controller-manager/app"
	proxy "k8s.io/kubernetes/cmd/kube-proxy/app"
	scheduler "k8s.io/kubernetes/cmd/kube-scheduler/app"
	kubelet "k8s.io/kubernetes/cmd/kubelet/app"
)

// components maps a subcommand to the constructor of the upstream command. Only the chosen
// one is constructed: each installs flags and signal handlers of its own.
var components = map[string]func() *cobra.Command{
	"kube-controller-manager": kcm.NewControllerManagerCommand,
	"kube-scheduler":          func() *cobra.Command { return scheduler.NewSchedulerCommand() },
	"kubelet":                 func() *cobra.Command { return kubelet.NewKubeletCommand(context.Background()) },
	"kube-proxy":              proxy.NewProxyCommand,
}

func main() {
	name := filepath.Base(os.Args[0])
	args := os.Args[1:]
	if _, ok := components[name]; !ok {
		if len(args) == 0 {
			usage()
			os.Exit(2)
		}
		name, args = args[0], args[1:]
	}
	switch name {
	case "version", "--version":
		fmt.Println(version.Get().GitVersion)
		return
	case "lb-addresses":
		if err := runLB(args); err != nil {
			fmt.Fprintf(os.Stderr, "lb-addresses: %v\n", err)
			os.Exit(1)
		}
		return
	}
	newCommand, ok := components[name]
	if !ok {
		usage()
		os.Exit(2)
	}
	// The upstream commands read os.Args through cobra; argv[0] names the component in
	// their help and logs.
	os.Args = append([]string{name}, args...)
	os.Exit(cli.Run(newCommand()))
}

func usage() {
	fmt.Fprintln(os.Stderr, "usage: node kube-controller-manager|kube-scheduler|kubelet|kube-proxy|lb-addresses|version [FLAGS...]")
}

package main

// The other Kubernetes components, linked into the launcher so that one `go build` compiles
// their shared packages once, at the apiserver's k8s.io/kubernetes version (as hyperkube and
// k3s do). Each runs its upstream command exactly as its own main() would.

import (
	"context"
	"os"

	"k8s.io/component-base/cli"
	"k8s.io/component-base/logs"
	"k8s.io/kubectl/pkg/cmd"
	"k8s.io/kubectl/pkg/cmd/util"
	controllermanager "k8s.io/kubernetes/cmd/kube-controller-manager/app"
	scheduler "k8s.io/kubernetes/cmd/kube-scheduler/app"
	kubelet "k8s.io/kubernetes/cmd/kubelet/app"

	_ "time/tzdata" // CronJob time zones (the controller-manager's main imports it too)
)

// components: subcommand (or argv[0] base name) -> runner taking the component's own arguments
// and returning its exit code.
var components = map[string]func(args []string) int{
	"kube-scheduler": func(args []string) int {
		c := scheduler.NewSchedulerCommand()
		c.SetArgs(args)
		return cli.Run(c)
	},
	"kube-controller-manager": func(args []string) int {
		c := controllermanager.NewControllerManagerCommand()
		c.SetArgs(args)
		return cli.Run(c)
	},
	"kubelet": func(args []string) int {
		c := kubelet.NewKubeletCommand(context.Background())
		c.SetArgs(args)
		return cli.Run(c)
	},
	// kubectl reads os.Args itself (plugins, -v before flag parsing): it gets a kubectl argv.
	"kubectl": func(args []string) int {
		os.Args = append([]string{"kubectl"}, args...)
		logs.GlogSetter(cmd.GetLogVerbosity(os.Args)) // nolint:errcheck
		if err := cli.RunNoErrOutput(cmd.NewDefaultKubectlCommand()); err != nil {
			util.CheckErr(err) // prints as kubectl does and exits non-zero
		}
		return 0
	},
}

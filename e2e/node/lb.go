package main

// The LoadBalancer address helper of the node cluster, in the role MetalLB or
// cloud-provider-kind play elsewhere: it gives every Service of type LoadBalancer an
// address from a range routed to a local dummy interface (the cluster script sets that up),
// and writes it to status.loadBalancer.ingress. kube-proxy then forwards the address's
// ports (UDP and TCP alike) to the Service's pods.

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"net/netip"
	"os"
	"os/signal"
	"slices"
	"syscall"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	corelisters "k8s.io/client-go/listers/core/v1"
	"k8s.io/client-go/tools/cache"
	"k8s.io/client-go/tools/clientcmd"
	"k8s.io/client-go/util/workqueue"
	"k8s.io/klog/v2"
)

type lbOptions struct {
	kubeconfig string
	pool       netip.Prefix
	first      int // addresses below pool base + first are left for the interface itself
}

func runLB(args []string) error {
	fs := flag.NewFlagSet("lb-addresses", flag.ContinueOnError)
	var o lbOptions
	var pool string
	fs.StringVar(&o.kubeconfig, "kubeconfig", "", "kubeconfig of the cluster")
	fs.StringVar(&pool, "range", "10.250.0.0/24", "addresses to hand out (routed to a local dummy interface)")
	fs.IntVar(&o.first, "first", 10, "offset of the first address handed out within the range")
	if err := fs.Parse(args); err != nil {
		return err
	}
	p, err := netip.ParsePrefix(pool)
	if err != nil || !p.Addr().Is4() {
		return fmt.Errorf("--range %q: not an IPv4 prefix", pool)
	}
	o.pool = p.Masked()
	cfg, err := clientcmd.BuildConfigFromFlags("", o.kubeconfig)
	if err != nil {
		return err
	}
	client, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		return err
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()

	factory := informers.NewSharedInformerFactory(client, 0)
	services := factory.Core().V1().Services()
	lister := services.Lister()
	queue := workqueue.NewTypedRateLimitingQueue(workqueue.DefaultTypedControllerRateLimiter[string]())
	defer queue.ShutDown()
	enqueue := func(obj any) {
		if key, err := cache.DeletionHandlingMetaNamespaceKeyFunc(obj); err == nil {
			queue.Add(key)
		}
	}
	if _, err := services.Informer().AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc:    enqueue,
		UpdateFunc: func(_, obj any) { enqueue(obj) },
		// A deleted Service frees its address: nothing to write, only to forget.
		DeleteFunc: enqueue,
	}); err != nil {
		return err
	}
	factory.Start(ctx.Done())
	if !cache.WaitForCacheSync(ctx.Done(), services.Informer().HasSynced) {
		return errors.New("service cache did not sync")
	}
	fmt.Fprintf(os.Stderr, "lb-addresses: handing out %s from offset %d\n", o.pool, o.first)
	go func() {
		<-ctx.Done()
		queue.ShutDown()
	}()
	// The addresses handed out, by Service: the informer's cache shows a status written a
	// moment ago only once its watch event arrives, so two Services created together would
	// otherwise both be given the lowest free address. One worker: no lock.
	assigned := map[string]netip.Addr{}
	for {
		key, shutdown := queue.Get()
		if shutdown {
			return nil
		}
		if err := reconcileLB(ctx, client, lister, o, assigned, key); err != nil {
			klog.ErrorS(err, "lb-addresses: retrying", "service", key)
			queue.AddRateLimited(key)
		} else {
			queue.Forget(key)
		}
		queue.Done(key)
	}
}

// wantsAddress: LoadBalancer Services that no other implementation claims.
func wantsAddress(svc *corev1.Service) bool {
	return svc.Spec.Type == corev1.ServiceTypeLoadBalancer && svc.Spec.LoadBalancerClass == nil
}

// ownAddress returns the address of the pool a Service's status already holds.
func ownAddress(svc *corev1.Service, pool netip.Prefix) (netip.Addr, bool) {
	for _, ing := range svc.Status.LoadBalancer.Ingress {
		if a, err := netip.ParseAddr(ing.IP); err == nil && pool.Contains(a) {
			return a, true
		}
	}
	return netip.Addr{}, false
}

// pickAddress keeps a Service's address, else honours spec.loadBalancerIP when it is free
// and in the pool, else takes the lowest free one.
func pickAddress(svc *corev1.Service, used map[netip.Addr]bool, o lbOptions) (netip.Addr, error) {
	if a, ok := ownAddress(svc, o.pool); ok {
		return a, nil
	}
	if a, err := netip.ParseAddr(svc.Spec.LoadBalancerIP); err == nil && o.pool.Contains(a) && !used[a] {
		return a, nil
	}
	a := o.pool.Addr()
	for range o.first {
		a = a.Next()
	}
	for ; o.pool.Contains(a); a = a.Next() {
		if !used[a] && a != lastAddress(o.pool) {
			return a, nil
		}
	}
	return netip.Addr{}, fmt.Errorf("no free address left in %s", o.pool)
}

func lastAddress(p netip.Prefix) netip.Addr {
	b := p.Addr().As4()
	host := uint32(1)<<(32-p.Bits()) - 1
	v := (uint32(b[0])<<24 | uint32(b[1])<<16 | uint32(b[2])<<8 | uint32(b[3])) | host
	return netip.AddrFrom4([4]byte{byte(v >> 24), byte(v >> 16), byte(v >> 8), byte(v)})
}

func reconcileLB(ctx context.Context, client kubernetes.Interface, lister corelisters.ServiceLister, o lbOptions, assigned map[string]netip.Addr, key string) error {
	ns, name, err := cache.SplitMetaNamespaceKey(key)
	if err != nil {
		return nil
	}
	svc, err := lister.Services(ns).Get(name)
	if err != nil {
		delete(assigned, key)
		return nil // deleted
	}
	var want []corev1.LoadBalancerIngress
	if wantsAddress(svc) {
		all, err := lister.List(everything)
		if err != nil {
			return err
		}
		used := map[netip.Addr]bool{}
		for _, other := range all {
			if other.Namespace == ns && other.Name == name || !wantsAddress(other) {
				continue
			}
			if a, ok := ownAddress(other, o.pool); ok {
				used[a] = true
			}
		}
		for other, a := range assigned {
			if other != key {
				used[a] = true
			}
		}
		addr, err := pickAddress(svc, used, o)
		if err != nil {
			return err
		}
		vip := corev1.LoadBalancerIPModeVIP
		want = []corev1.LoadBalancerIngress{{IP: addr.String(), IPMode: &vip}}
	} else if _, ok := ownAddress(svc, o.pool); !ok {
		return nil // not ours, never was
	}
	remember := func() {
		if a, err := netip.ParseAddr(firstIP(want)); err == nil {
			assigned[key] = a
		} else {
			delete(assigned, key)
		}
	}
	if slices.EqualFunc(svc.Status.LoadBalancer.Ingress, want, func(a, b corev1.LoadBalancerIngress) bool {
		return a.IP == b.IP && a.Hostname == b.Hostname
	}) {
		remember()
		return nil
	}
	updated := svc.DeepCopy()
	updated.Status.LoadBalancer.Ingress = want
	uctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	if _, err := client.CoreV1().Services(ns).UpdateStatus(uctx, updated, metav1.UpdateOptions{}); err != nil {
		return err
	}
	remember()
	fmt.Fprintf(os.Stderr, "lb-addresses: %s -> %v\n", key, want)
	return nil
}

var everything = labels.Everything()

func firstIP(ing []corev1.LoadBalancerIngress) string {
	if len(ing) == 0 {
		return ""
	}
	return ing[0].IP
}

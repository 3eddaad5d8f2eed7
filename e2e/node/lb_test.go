package main

import (
	"net/netip"
	"testing"

	corev1 "k8s.io/api/core/v1"
)

func lbService(name, requested string, status ...string) *corev1.Service {
	svc := &corev1.Service{}
	svc.Name = name
	svc.Spec.Type = corev1.ServiceTypeLoadBalancer
	svc.Spec.LoadBalancerIP = requested
	for _, ip := range status {
		svc.Status.LoadBalancer.Ingress = append(svc.Status.LoadBalancer.Ingress, corev1.LoadBalancerIngress{IP: ip})
	}
	return svc
}

func TestPickAddress(t *testing.T) {
	o := lbOptions{pool: netip.MustParsePrefix("10.250.0.0/24"), first: 10}
	used := map[netip.Addr]bool{netip.MustParseAddr("10.250.0.10"): true}
	cases := []struct {
		name string
		svc  *corev1.Service
		want string
	}{
		{"lowest free from the offset", lbService("a", ""), "10.250.0.11"},
		{"keeps its address", lbService("b", "", "10.250.0.42"), "10.250.0.42"},
		{"an address outside the pool is replaced", lbService("c", "", "192.0.2.1"), "10.250.0.11"},
		{"honours a free loadBalancerIP", lbService("d", "10.250.0.77"), "10.250.0.77"},
		{"a taken loadBalancerIP is not shared", lbService("e", "10.250.0.10"), "10.250.0.11"},
	}
	for _, c := range cases {
		got, err := pickAddress(c.svc, used, o)
		if err != nil || got.String() != c.want {
			t.Errorf("%s: got %v, %v; want %s", c.name, got, err, c.want)
		}
	}
}

func TestPickAddressRunsOut(t *testing.T) {
	o := lbOptions{pool: netip.MustParsePrefix("10.250.0.0/30"), first: 1}
	// .1 and .2 are usable; .3 is the broadcast address.
	used := map[netip.Addr]bool{netip.MustParseAddr("10.250.0.1"): true, netip.MustParseAddr("10.250.0.2"): true}
	if got, err := pickAddress(lbService("a", ""), used, o); err == nil {
		t.Fatalf("got %v from a full pool", got)
	}
}

func TestWantsAddress(t *testing.T) {
	other := "example.com/other"
	svc := lbService("a", "")
	if !wantsAddress(svc) {
		t.Error("a plain LoadBalancer Service wants an address")
	}
	svc.Spec.LoadBalancerClass = &other
	if wantsAddress(svc) {
		t.Error("a Service of another loadBalancerClass is left alone")
	}
	svc = lbService("b", "")
	svc.Spec.Type = corev1.ServiceTypeClusterIP
	if wantsAddress(svc) {
		t.Error("a ClusterIP Service gets no address")
	}
}

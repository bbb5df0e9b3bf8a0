// Package freeport finds loopback ports for the servers the test kits
// start. It uses nothing of the gateway, so any kit may use it.
package freeport

import "net"

// Ports returns n distinct ports that were free on 127.0.0.1: all n are
// held open together, so none is given twice, and closed before return.
func Ports(n int) ([]int, error) {
	ports := make([]int, 0, n)
	for range n {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return nil, err
		}
		defer l.Close()
		ports = append(ports, l.Addr().(*net.TCPAddr).Port)
	}
	return ports, nil
}

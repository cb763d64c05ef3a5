// Package netns holds host-level fault tests of Aegis: real agent
// processes (cmd/aegis) in Linux network namespaces, joined through a
// bridge in a namespace of their own, while the tests pull a link, drop
// packets on every link and slow one link down, and check what the agents
// log, what a load client (aegis load) sees, and, message ID by message
// ID, that every call the load made ran as often as the delivery rules
// allow (the agents and the load write runs and calls down; see
// internal/runlog).
//
// The package has no code of its own; its tests run only as root on Linux
// with the ip command (iproute2) and, for packet loss, tc. They skip
// themselves otherwise and under go test -short. Nothing is sent anywhere
// but the addresses of the namespaces the tests create, and every
// namespace, link and process is removed when a test ends.
//
// AEGIS_NETNS_LOSS_DURATION sets how long the packet-loss test holds its
// loss (a Go duration, 30s by default).
package netns

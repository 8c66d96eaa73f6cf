// Package portstest provides in-memory fakes of every outbound port in
// package ports and the contract suites that every adapter of a port must
// pass.
//
// The fakes are for core tests: they are safe for concurrent use, keep
// copies (a caller never aliases stored state), and let a test inject
// failures through Hook functions and observe what was called.
//
// The contract suites (RunRepoContract with the rotation queue,
// RunIdentityProviderContract with secret rotation, RunSecretBoxContract, RunScheduleRepoContract, RunLeaseContract,
// RunBlobStoreContract, RunBrokerAccountsContract) assert the behaviour
// that the ports document. Each test creates its own data with unique codes and
// keys, so a suite can run against a shared database or identity provider
// that holds other data. The fakes run the same suites in this package's
// tests.
package portstest

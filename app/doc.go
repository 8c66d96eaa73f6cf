// Package app wires espmdm together with go.uber.org/fx: configuration from
// the environment, the adapters bound to the ports, the core use cases, the
// HTTP server and the background loops. New(cfg, extra...) lets an
// embedding service add or replace modules.
package app

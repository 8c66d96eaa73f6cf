// Package compose holds what the repository's compose.yaml mounts besides
// the realm import (the PostgreSQL init script, the broker's configuration
// and the script that starts it with its dynamic security plugin, which
// the stack's launchers run too) and, behind the containers build tag, the
// test that runs compose.yaml on a Docker engine (make test-containers).
package compose

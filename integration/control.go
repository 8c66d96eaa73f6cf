package integration

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"time"
)

// EnvControlSocket names the unix socket through which processes attached
// to a stack (Attach) ask its owner to stop or start a service.
const EnvControlSocket = "ESPMDM_STACK_CONTROL"

// ServeControl lets attached processes stop and start this stack's
// services through a unix socket in the stack's directory, until ctx ends.
// It returns the socket path, to pass on as $ESPMDM_STACK_CONTROL (Env
// includes it once serving).
func (s *Stack) ServeControl(ctx context.Context) (string, error) {
	path := filepath.Join(s.dir, "control.sock")
	ln, err := net.Listen("unix", path)
	if err != nil {
		return "", fmt.Errorf("stack control socket: %w", err)
	}
	if err := os.Chmod(path, 0o600); err != nil {
		ln.Close()
		return "", err
	}
	mux := http.NewServeMux()
	mux.HandleFunc("POST /services/{name}/{action}", func(w http.ResponseWriter, r *http.Request) {
		name := ServiceName(r.PathValue("name"))
		var err error
		switch r.PathValue("action") {
		case "stop":
			err = s.StopService(r.Context(), name)
		case "start":
			err = s.StartService(r.Context(), name)
		default:
			http.Error(w, "unknown action", http.StatusNotFound)
			return
		}
		if err != nil {
			http.Error(w, err.Error(), http.StatusInternalServerError)
			return
		}
		w.WriteHeader(http.StatusNoContent)
	})
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second}
	go func() { _ = srv.Serve(ln) }()
	go func() {
		<-ctx.Done()
		_ = srv.Close()
	}()
	s.control = path
	return path, nil
}

// remoteControl asks the stack's owner to run action on a service.
func (s *Stack) remoteControl(ctx context.Context, name ServiceName, action string) error {
	if s.control == "" {
		return fmt.Errorf("stack was attached from an env file without a control socket; only its owner can %s %s", action, name)
	}
	// One call per client: no idle connection (and its goroutines) stays
	// behind for goleak to find.
	client := &http.Client{Transport: &http.Transport{
		DisableKeepAlives: true,
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "unix", s.control)
		},
	}}
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, "http://stack/services/"+string(name)+"/"+action, nil)
	if err != nil {
		return err
	}
	resp, err := client.Do(req)
	if err != nil {
		return fmt.Errorf("%s %s through the stack control socket: %w", action, name, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusNoContent {
		body, _ := io.ReadAll(io.LimitReader(resp.Body, 4096))
		return fmt.Errorf("%s %s: %s", action, name, strings.TrimSpace(string(body)))
	}
	return nil
}

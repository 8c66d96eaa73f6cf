package postgres_test

import (
	"crypto/rand"
	"encoding/json"
	"errors"
	"io"
	"net"
	"sync"
	"testing"

	"github.com/espmdm/espmdm/adapters/postgres"
	"github.com/espmdm/espmdm/core/model"
)

type repos struct {
	models   *postgres.ModelRepo
	devices  *postgres.DeviceRepo
	firmware *postgres.FirmwareRepo
}

func newRepos(db *postgres.DB) repos {
	return repos{postgres.NewModelRepo(db), postgres.NewDeviceRepo(db), postgres.NewFirmwareRepo(db)}
}

func (r repos) model(t testing.TB, code string) model.DeviceModel {
	t.Helper()
	m := model.DeviceModel{Code: code, Name: "Model " + code}
	if err := r.models.CreateModel(t.Context(), &m, nil); err != nil {
		t.Fatalf("CreateModel(%s): %v", code, err)
	}
	return m
}

func (r repos) device(t testing.TB, m model.DeviceModel, config string) model.Device {
	t.Helper()
	d := model.Device{Key: randomKey(), DeviceModelID: m.ID, Config: json.RawMessage(config), Active: true, RotationState: model.RotationOK}
	if err := r.devices.CreateDevice(t.Context(), &d, nil); err != nil {
		t.Fatalf("CreateDevice: %v", err)
	}
	return d
}

const keyAlphabet = "abcdefghijklmnopqrstuvwxyz0123456789"

func randomKey() string {
	b := make([]byte, 8)
	_, _ = rand.Read(b)
	for i := range b {
		b[i] = keyAlphabet[int(b[i])%len(keyAlphabet)]
	}
	return string(b)
}

func wantErrIs(t *testing.T, what string, err, target error) {
	t.Helper()
	if !errors.Is(err, target) {
		t.Errorf("%s: got error %v, want %v", what, err, target)
	}
}

func ptr[T any](v T) *T { return &v }

// proxy forwards TCP connections to target until it is cut: a database
// that can go away under a test without touching the shared server.
type proxy struct {
	ln     net.Listener
	target string
	mu     sync.Mutex
	conns  []net.Conn
	cut    bool
}

func newProxy(t *testing.T, target string) *proxy {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatalf("proxy listen: %v", err)
	}
	p := &proxy{ln: ln, target: target}
	go p.serve()
	t.Cleanup(p.Cut)
	return p
}

func (p *proxy) Addr() string { return p.ln.Addr().String() }

func (p *proxy) serve() {
	for {
		c, err := p.ln.Accept()
		if err != nil {
			return
		}
		up, err := net.Dial("tcp", p.target)
		if err != nil {
			c.Close()
			continue
		}
		p.mu.Lock()
		if p.cut {
			p.mu.Unlock()
			c.Close()
			up.Close()
			return
		}
		p.conns = append(p.conns, c, up)
		p.mu.Unlock()
		go func() { _, _ = io.Copy(up, c); up.Close() }()
		go func() { _, _ = io.Copy(c, up); c.Close() }()
	}
}

// Cut closes the listener and every forwarded connection.
func (p *proxy) Cut() {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.cut = true
	p.ln.Close()
	for _, c := range p.conns {
		c.Close()
	}
	p.conns = nil
}

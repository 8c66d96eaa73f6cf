package mqtt_test

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"net"
	"net/url"
	"os"
	"sync"
	"testing"
	"time"

	"github.com/eclipse/paho.golang/paho"
	"go.uber.org/zap/zaptest"

	"github.com/espmdm/espmdm/adapters/mqtt"
	"github.com/espmdm/espmdm/integration"
)

// TestMain runs the tests on the shared stack and then fails the run when
// a test left a goroutine behind.
func TestMain(m *testing.M) { os.Exit(integration.VerifyNoLeaks(integration.RunTests(m))) }

func randHex(n int) string {
	b := make([]byte, n)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}

// deviceClientID is a unique, realistic device client id.
func deviceClientID() string { return "iotdevice-mqtttest-" + randHex(4) }

// modelCode is a unique, realistic model code.
func modelCode() string { return "mqtttest_" + randHex(4) }

func ctxT(t *testing.T, d time.Duration) context.Context {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), d)
	t.Cleanup(cancel)
	return ctx
}

// startNotifier creates and starts a Notifier with an app-lifetime context
// that ends with the test, and stops it when the test ends.
func startNotifier(t *testing.T, cfg mqtt.Config) *mqtt.Notifier {
	t.Helper()
	if cfg.ClientID == "" {
		cfg.ClientID = "espmdm-test-" + randHex(4)
	}
	if cfg.Logger == nil {
		cfg.Logger = zaptest.NewLogger(t)
	}
	n, err := mqtt.New(cfg)
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	appCtx, cancel := context.WithCancel(context.Background())
	if err := n.Start(appCtx); err != nil {
		cancel()
		t.Fatalf("Start: %v", err)
	}
	t.Cleanup(func() {
		defer cancel()
		ctx, stop := context.WithTimeout(context.Background(), 30*time.Second)
		defer stop()
		if err := n.Stop(ctx); err != nil {
			t.Errorf("Stop: %v", err)
		}
	})
	return n
}

// subscriber is a plain paho MQTT v5 client that records what it receives.
type subscriber struct {
	cli  *paho.Client
	msgs chan *paho.Publish
}

// subscribe connects a new client to the broker (with the URL's account)
// and subscribes to topics
// with QoS 1, asking the broker to forward the retain flag as published.
func subscribe(t *testing.T, ctx context.Context, brokerURL string, topics ...string) *subscriber {
	t.Helper()
	u, err := url.Parse(brokerURL)
	if err != nil {
		t.Fatal(err)
	}
	conn, err := (&net.Dialer{}).DialContext(ctx, "tcp", u.Host)
	if err != nil {
		t.Fatalf("subscriber: dial broker: %v", err)
	}
	s := &subscriber{msgs: make(chan *paho.Publish, 100)}
	id := "sub-" + randHex(4)
	s.cli = paho.NewClient(paho.ClientConfig{ClientID: id, Conn: conn,
		OnPublishReceived: []func(paho.PublishReceived) (bool, error){func(pr paho.PublishReceived) (bool, error) {
			s.msgs <- pr.Packet
			return true, nil
		}}})
	cp := &paho.Connect{ClientID: id, CleanStart: true, KeepAlive: 30}
	if u.User != nil { // the broker lets in only those with an account
		pw, _ := u.User.Password()
		cp.Username, cp.UsernameFlag, cp.Password, cp.PasswordFlag = u.User.Username(), true, []byte(pw), true
	}
	ack, err := s.cli.Connect(ctx, cp)
	if err != nil {
		t.Fatalf("subscriber: connect: %v", err)
	}
	if ack.ReasonCode != 0 {
		t.Fatalf("subscriber: connack reason %d", ack.ReasonCode)
	}
	t.Cleanup(func() { _ = s.cli.Disconnect(&paho.Disconnect{ReasonCode: 0}) })
	var subs []paho.SubscribeOptions
	for _, topic := range topics {
		subs = append(subs, paho.SubscribeOptions{Topic: topic, QoS: 1, RetainAsPublished: true})
	}
	sa, err := s.cli.Subscribe(ctx, &paho.Subscribe{Subscriptions: subs})
	if err != nil {
		t.Fatalf("subscriber: subscribe: %v", err)
	}
	for i, rc := range sa.Reasons {
		if rc != 1 {
			t.Fatalf("subscriber: suback reason %d for %s, want 1 (granted QoS 1)", rc, topics[i])
		}
	}
	return s
}

// receive waits for n messages and returns them keyed by topic.
func (s *subscriber) receive(t *testing.T, ctx context.Context, n int) map[string]*paho.Publish {
	t.Helper()
	got := map[string]*paho.Publish{}
	for len(got) < n {
		select {
		case p := <-s.msgs:
			if _, dup := got[p.Topic]; dup {
				t.Errorf("message on %s received twice", p.Topic)
			}
			got[p.Topic] = p
		case <-ctx.Done():
			t.Fatalf("received %d of %d messages before %v: %v", len(got), n, ctx.Err(), topicsOf(got))
		}
	}
	return got
}

func topicsOf(m map[string]*paho.Publish) []string {
	var ts []string
	for k := range m {
		ts = append(ts, k)
	}
	return ts
}

// gateDialer connects for real, but while closed it drops every connection
// it managed to open and fails the attempt. It lets a test decide when a
// Notifier may reach a broker that is up again.
type gateDialer struct {
	mu     sync.Mutex
	closed bool
}

var errGateClosed = errors.New("test gate closed")

func (g *gateDialer) set(closed bool) {
	g.mu.Lock()
	g.closed = closed
	g.mu.Unlock()
}

func (g *gateDialer) DialContext(ctx context.Context, network, addr string) (net.Conn, error) {
	conn, err := (&net.Dialer{}).DialContext(ctx, network, addr)
	if err != nil {
		return nil, err
	}
	g.mu.Lock()
	closed := g.closed
	g.mu.Unlock()
	if closed {
		conn.Close()
		return nil, errGateClosed
	}
	return conn, nil
}

// observations records Config.Observe calls.
type observations struct {
	mu  sync.Mutex
	ops []observed
}

type observed struct {
	op  string
	err error
}

func (o *observations) observe(op string, err error) {
	o.mu.Lock()
	o.ops = append(o.ops, observed{op, err})
	o.mu.Unlock()
}

// count returns how many times op was observed with and without an error.
func (o *observations) count(op string) (ok, failed int) {
	o.mu.Lock()
	defer o.mu.Unlock()
	for _, x := range o.ops {
		if x.op != op {
			continue
		}
		if x.err == nil {
			ok++
		} else {
			failed++
		}
	}
	return ok, failed
}

// deadPort returns a loopback address where nothing listens.
func deadPort(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	l.Close()
	return addr
}

// silentBroker accepts TCP connections and never answers, so MQTT
// connection attempts hang until they time out or are cancelled.
func silentBroker(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var mu sync.Mutex
	var conns []net.Conn
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			mu.Lock()
			conns = append(conns, c)
			mu.Unlock()
		}
	}()
	t.Cleanup(func() {
		l.Close()
		mu.Lock()
		defer mu.Unlock()
		for _, c := range conns {
			c.Close()
		}
	})
	return l.Addr().String()
}

// waitFor polls cond until it holds or ctx ends.
func waitFor(t *testing.T, ctx context.Context, what string, cond func() bool) {
	t.Helper()
	tick := time.NewTicker(20 * time.Millisecond)
	defer tick.Stop()
	for !cond() {
		select {
		case <-tick.C:
		case <-ctx.Done():
			t.Fatalf("%s: %v", what, ctx.Err())
		}
	}
}

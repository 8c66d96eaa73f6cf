package mqtt

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"net/url"
	"path/filepath"
	"sync"
	"time"

	"github.com/eclipse/paho.golang/autopaho"
	"github.com/eclipse/paho.golang/autopaho/queue"
	filequeue "github.com/eclipse/paho.golang/autopaho/queue/file"
	"github.com/eclipse/paho.golang/autopaho/queue/memory"
	"github.com/eclipse/paho.golang/packets"
	"github.com/eclipse/paho.golang/paho"
	"github.com/eclipse/paho.golang/paho/session/state"
	filestore "github.com/eclipse/paho.golang/paho/store/file"
	"go.uber.org/zap"

	"github.com/espmdm/espmdm/core/model"
	"github.com/espmdm/espmdm/ports"
)

var _ ports.Notifier = (*Notifier)(nil)

// ErrNotRunning is returned by the notification methods before Start and
// after Stop, and by AwaitConnection after Stop.
var ErrNotRunning = errors.New("mqtt: notifier is not running")

// Notifier publishes device notifications to an MQTT v5 broker through
// autopaho's publish queue. Its methods are safe for concurrent use.
type Notifier struct {
	s       settings
	queue   queue.Queue
	session *trackedSession
	cfg     autopaho.ClientConfig

	mu      sync.RWMutex // guards cm and phase; held for reading while queueing
	cm      *autopaho.ConnectionManager
	phase   int // phaseNew, phaseRunning or phaseStopped
	started chan struct{}

	link link // whether the connection is up, as OnConnectionUp/Down saw it
}

// link tracks the connection for Connected and AwaitConnection. autopaho's
// own AwaitConnection returns before OnConnectionUp has run, so it would
// disagree with Connected for a moment.
type link struct {
	mu   sync.Mutex
	isUp bool
	up   chan struct{} // closed while the connection is up
	stop chan struct{} // closed by Stop
}

func (l *link) set(isUp bool) {
	l.mu.Lock()
	defer l.mu.Unlock()
	switch {
	case isUp && !l.isUp:
		close(l.up)
	case !isUp && l.isUp:
		l.up = make(chan struct{})
	}
	l.isUp = isUp
}

func (l *link) state() (isUp bool, up <-chan struct{}) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.isUp, l.up
}

const (
	phaseNew = iota
	phaseRunning
	phaseStopped
)

// New validates cfg and prepares a Notifier (and, with QueueDir, its queue
// and session directories). It does not connect: call Start.
func New(cfg Config) (*Notifier, error) {
	s, err := cfg.settings()
	if err != nil {
		return nil, err
	}
	n := &Notifier{s: s, started: make(chan struct{}),
		link: link{up: make(chan struct{}), stop: make(chan struct{})}}

	var session *state.State
	if s.queueDir == "" {
		n.queue = memory.New()
		session = state.NewInMemory()
	} else {
		q, err := filequeue.New(filepath.Join(s.queueDir, "queue"), "msg-", ".pub")
		if err != nil {
			return nil, fmt.Errorf("mqtt: queue directory: %w", err)
		}
		n.queue = q
		client, err := filestore.New(filepath.Join(s.queueDir, "session"), "client-", ".pkt")
		if err != nil {
			return nil, fmt.Errorf("mqtt: session directory: %w", err)
		}
		server, err := filestore.New(filepath.Join(s.queueDir, "session"), "server-", ".pkt")
		if err != nil {
			return nil, fmt.Errorf("mqtt: session directory: %w", err)
		}
		session = state.New(client, server)
	}
	session.SetErrorLogger(zapPrintf{s.log.Named("session")})
	n.session = newTrackedSession(session)

	n.cfg = autopaho.ClientConfig{
		ServerUrls:                    []*url.URL{s.server},
		TlsCfg:                        s.tls,
		KeepAlive:                     s.keepAlive,
		CleanStartOnInitialConnection: false, // keep the broker's session across restarts
		SessionExpiryInterval:         s.sessionExpiry,
		ReconnectBackoff:              s.backoff,
		ConnectTimeout:                s.connectTimeout,
		Queue:                         n.queue,
		ConnectUsername:               s.username,
		ConnectPassword:               []byte(s.password),
		OnConnectionUp:                n.onConnectionUp,
		OnConnectionDown:              n.onConnectionDown,
		OnConnectError:                n.onConnectError,
		Errors:                        zapPrintf{s.log},
		PahoErrors:                    zapPrintf{s.log.Named("paho")},
		ClientConfig: paho.ClientConfig{
			ClientID: s.clientID,
			Session:  n.session,
		},
	}
	if s.dialer != nil {
		n.cfg.AttemptConnection = n.dial
	}
	return n, nil
}

// Start starts the connection manager and returns at once, without waiting
// for the broker: connecting, reconnecting and sending queued notifications
// happen in the background until Stop or until ctx is cancelled. ctx must
// live as long as the application (not an fx OnStart context, which expires
// after start-up). Start can be called once.
func (n *Notifier) Start(ctx context.Context) error {
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.phase != phaseNew {
		return errors.New("mqtt: Start called twice or after Stop")
	}
	cm, err := autopaho.NewConnection(ctx, n.cfg)
	if err != nil {
		return fmt.Errorf("mqtt: start connection manager: %w", err)
	}
	n.cm, n.phase = cm, phaseRunning
	close(n.started)
	go func() {
		// The manager also ends when ctx is cancelled without Stop, and
		// OnConnectionDown is not called then.
		<-cm.Done()
		n.link.set(false)
	}()
	n.s.log.Info("mqtt notifier started", zap.String("broker", n.s.server.String()), zap.String("client_id", n.s.clientID))
	return nil
}

// Stop gives queued notifications up to DrainTimeout to be sent and
// acknowledged while the broker is connected, then disconnects cleanly and
// waits for the connection manager to finish, or for ctx to end.
// Notifications still queued stay in the queue directory (with QueueDir) or
// are dropped (in memory). Stop is idempotent; after it the notification
// methods and AwaitConnection return ErrNotRunning.
func (n *Notifier) Stop(ctx context.Context) error {
	n.mu.Lock()
	cm, phase := n.cm, n.phase
	n.phase = phaseStopped
	switch phase {
	case phaseNew:
		close(n.started)
		close(n.link.stop) // AwaitConnection callers get ErrNotRunning
	case phaseRunning:
		close(n.link.stop)
	}
	n.mu.Unlock()
	if phase != phaseRunning {
		return nil
	}
	if n.Connected() {
		n.drain(ctx)
	}
	err := cm.Disconnect(ctx)
	n.link.set(false)
	if err != nil {
		return fmt.Errorf("mqtt: disconnect: %w", err)
	}
	// autopaho does not close a session it was given; closing it answers
	// what is still in flight (it stays in the session store, in files with
	// QueueDir) and ends the goroutines waiting for those answers.
	_ = n.session.Close()
	n.s.log.Info("mqtt notifier stopped")
	return nil
}

// drain waits until the queue is empty and the broker has acknowledged
// every message sent, or DrainTimeout passes, or ctx ends.
func (n *Notifier) drain(ctx context.Context) {
	q, ok := n.queue.(interface{ WaitForEmpty() chan struct{} })
	if !ok {
		return
	}
	t := time.NewTimer(n.s.drainTimeout)
	defer t.Stop()
	wait := func(ch <-chan struct{}) bool {
		select {
		case <-ch:
			return true
		case <-t.C:
			n.s.log.Warn("mqtt: stopping with notifications not yet sent or acknowledged")
		case <-ctx.Done():
		}
		return false
	}
	// In this order: the queue is empty once its last message is in the
	// session, which then waits for the PUBACK.
	if wait(q.WaitForEmpty()) {
		wait(n.session.idle())
	}
}

// Connected reports whether the connection to the broker is up now.
func (n *Notifier) Connected() bool {
	isUp, _ := n.link.state()
	return isUp
}

// AwaitConnection waits until the connection to the broker is up (called
// before Start, it waits for Start too). It returns ctx's error when ctx
// ends first, and ErrNotRunning or another error when the notifier is
// stopped.
func (n *Notifier) AwaitConnection(ctx context.Context) error {
	select {
	case <-n.started:
	case <-ctx.Done():
		return ctx.Err()
	}
	n.mu.RLock()
	cm, phase := n.cm, n.phase
	n.mu.RUnlock()
	if phase != phaseRunning {
		return ErrNotRunning
	}
	_, up := n.link.state()
	select {
	case <-up:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	case <-n.link.stop:
		return ErrNotRunning
	case <-cm.Done():
		return errors.New("mqtt: connection manager ended (its context was cancelled)")
	}
}

// RotationNudge queues an empty message on iotsupport/<clientID>/rotation.
func (n *Notifier) RotationNudge(ctx context.Context, clientID string) error {
	topic, err := RotationTopic(clientID)
	if err != nil {
		return err
	}
	return n.publish(ctx, OpRotationNudge, &paho.Publish{Topic: topic})
}

// ConfigChanged queues an empty message on iotsupport/<clientID>/config.
func (n *Notifier) ConfigChanged(ctx context.Context, clientID string) error {
	topic, err := ConfigTopic(clientID)
	if err != nil {
		return err
	}
	return n.publish(ctx, OpConfigChanged, &paho.Publish{Topic: topic})
}

// FirmwareReleased queues {"firmware_version": version} (application/json)
// on iotsupport/<modelCode>/firmware.
func (n *Notifier) FirmwareReleased(ctx context.Context, modelCode, version string) error {
	topic, err := FirmwareTopic(modelCode)
	if err != nil {
		return err
	}
	payload, err := FirmwarePayload(version)
	if err != nil {
		return err
	}
	utf8Format := byte(1)
	return n.publish(ctx, OpFirmwareReleased, &paho.Publish{Topic: topic, Payload: payload,
		Properties: &paho.PublishProperties{ContentType: "application/json", PayloadFormat: &utf8Format}})
}

// FirmwareAssigned queues {"firmware_version": version, "sha256": sha256}
// (application/json) on iotsupport/<clientID>/firmware: a campaign's
// nudge to one device (SPEC §16).
func (n *Notifier) FirmwareAssigned(ctx context.Context, clientID, version, sha256 string) error {
	topic, err := DeviceFirmwareTopic(clientID)
	if err != nil {
		return err
	}
	payload, err := AssignedPayload(version, sha256)
	if err != nil {
		return err
	}
	utf8Format := byte(1)
	return n.publish(ctx, OpFirmwareAssigned, &paho.Publish{Topic: topic, Payload: payload,
		Properties: &paho.PublishProperties{ContentType: "application/json", PayloadFormat: &utf8Format}})
}

// publish queues p with QoS 1, not retained. It fails only when the
// notifier is not running, ctx has ended, or the queue cannot store the
// message (a full disk); a broker outage is not an error.
func (n *Notifier) publish(ctx context.Context, op string, p *paho.Publish) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	p.QoS, p.Retain = 1, false
	n.mu.RLock()
	defer n.mu.RUnlock()
	if n.phase != phaseRunning {
		return ErrNotRunning
	}
	err := n.cm.PublishViaQueue(ctx, &autopaho.QueuePublish{Publish: p})
	if err != nil {
		err = &model.UnavailableError{Service: "mqtt", Err: fmt.Errorf("queue notification: %w", err)}
		n.s.log.Error("mqtt: cannot queue notification", zap.String("topic", p.Topic), zap.Error(err))
	}
	n.s.observe(op, err)
	return err
}

func (n *Notifier) onConnectionUp(_ *autopaho.ConnectionManager, ack *paho.Connack) {
	n.s.observe(OpConnect, nil) // before Connected turns true, so waiters see it counted
	n.s.log.Info("mqtt: connected", zap.String("broker", n.s.server.String()), zap.Bool("session_present", ack.SessionPresent))
	n.link.set(true)
}

func (n *Notifier) onConnectionDown() bool {
	n.link.set(false)
	n.s.log.Warn("mqtt: connection lost; reconnecting", zap.String("broker", n.s.server.String()))
	n.s.observe(OpConnectionLost, nil)
	return true
}

func (n *Notifier) onConnectError(err error) {
	n.s.log.Warn("mqtt: connection attempt failed", zap.Error(err))
	n.s.observe(OpConnect, err)
}

// dial opens a connection with Config.Dialer (autopaho's AttemptConnection
// hook), adding TLS for mqtts. autopaho needs connections that are safe for
// concurrent writes, hence NewThreadSafeConn.
func (n *Notifier) dial(ctx context.Context, _ autopaho.ClientConfig, u *url.URL) (net.Conn, error) {
	ctx, cancel := context.WithTimeout(ctx, n.s.connectTimeout)
	defer cancel()
	conn, err := n.s.dialer.DialContext(ctx, "tcp", u.Host)
	if err != nil {
		return nil, err
	}
	if n.s.useTLS {
		tc := tls.Client(conn, n.s.tls)
		if err := tc.HandshakeContext(ctx); err != nil {
			_ = conn.Close()
			return nil, err
		}
		conn = tc
	}
	return packets.NewThreadSafeConn(conn), nil
}

// zapPrintf adapts a zap logger to paho's Println/Printf logger.
type zapPrintf struct{ l *zap.Logger }

func (z zapPrintf) Println(v ...any) { z.l.Warn(fmt.Sprint(v...)) }

func (z zapPrintf) Printf(format string, v ...any) {
	for _, a := range v {
		if err, ok := a.(error); ok && errors.Is(err, queue.ErrEmpty) {
			return // autopaho reports emptying the queue as an error; it is not one
		}
	}
	z.l.Warn(fmt.Sprintf(format, v...))
}

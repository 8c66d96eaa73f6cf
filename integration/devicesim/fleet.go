package devicesim

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/url"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/eclipse/paho.golang/autopaho"
	"github.com/eclipse/paho.golang/paho"
)

// Config configures a Fleet. The zero value of every field but BrokerURL is
// a usable default.
type Config struct {
	// BrokerURL is the MQTT v5 broker (mqtt://[user:pass@]host:port) of the
	// fleet's shared connection. Empty: no MQTT; drive devices with
	// Fleet.Deliver or their methods.
	BrokerURL string
	// MQTTClientID is the shared connection's client id; default
	// "devicesim-<random>".
	MQTTClientID string
	// DeviceAccounts: no shared connection; each device connects on its own
	// as a real one does (SPEC §19), to BrokerURL's host with its broker
	// account — client id and username its client_id, password
	// prov/mqtt_password (or the one its latest credentials fetch handed
	// out) — subscribed to its own topics and its model's firmware topic,
	// when the fleet's Connect is called for it. Without it, BrokerURL's
	// user must be allowed to read iotsupport/#.
	DeviceAccounts bool
	// Concurrency is the number of workers acting on events, and sizes
	// the HTTP keep-alive pool; default 16.
	Concurrency int
	// HTTPTimeout bounds each HTTP request; default 30 s.
	HTTPTimeout time.Duration
	// TokenSlack is how long before its expiry a cached token is renewed;
	// default 30 s.
	TokenSlack time.Duration
	// LockoutRetry is how often a locked-out device tries its secrets
	// again; default 1 s.
	LockoutRetry time.Duration
	// FirmwareVersion is the version every device runs until
	// InstallFirmware installs another (its state reports name it);
	// default DefaultFirmwareVersion.
	FirmwareVersion string
	// FollowFirmware makes devices update as the component does: on a
	// firmware notice (the model's topic or the device's own, a campaign's
	// nudge) and after Boot, Device.Update runs on the fleet's workers.
	// Without it a notice is only counted, and tests drive FetchFirmware
	// and InstallFirmware themselves.
	FollowFirmware bool
	// InstantFirmware (with FollowFirmware) has a device take an offered
	// version at once: it reports it running and confirmed without
	// downloading, installing or rebooting — for benchmarks that time the
	// server's side of a campaign, not the devices' updates.
	InstantFirmware bool
	// BadFirmware are versions that fail on every device of the fleet as
	// Behaviour.BadFirmware says: installed, then rolled back.
	BadFirmware []string
	// OnEvent, when set, is called (from a worker, keep it quick) for every
	// event of every device.
	OnEvent func(Event)
	// Logf, when set, receives one line per failed device action. Lines
	// never hold a secret or a token.
	Logf func(format string, args ...any)
}

// Fleet is a set of simulated devices sharing one HTTP client, one MQTT
// connection and one worker pool. Its methods are safe for concurrent use.
type Fleet struct {
	cfg    Config
	http   *http.Client
	ctx    context.Context
	cancel context.CancelFunc
	cm     *autopaho.ConnectionManager

	mu       sync.RWMutex
	byClient map[string]*Device
	byModel  map[string][]*Device
	devices  []*Device

	qmu     sync.Mutex
	qcond   *sync.Cond
	queue   []func(context.Context)
	closed  bool
	workers sync.WaitGroup

	unknown atomic.Int64 // messages for devices outside the fleet
}

// NewFleet starts the worker pool and, with a BrokerURL, connects to the
// broker and returns once the subscriptions are acknowledged (or ctx ends).
// ctx bounds only the start; Close stops the fleet.
func NewFleet(ctx context.Context, cfg Config) (*Fleet, error) {
	if cfg.Concurrency <= 0 {
		cfg.Concurrency = 16
	}
	if cfg.HTTPTimeout <= 0 {
		cfg.HTTPTimeout = 30 * time.Second
	}
	if cfg.TokenSlack <= 0 {
		cfg.TokenSlack = 30 * time.Second
	}
	if cfg.LockoutRetry <= 0 {
		cfg.LockoutRetry = time.Second
	}
	if cfg.FirmwareVersion == "" {
		cfg.FirmwareVersion = DefaultFirmwareVersion
	}
	if cfg.MQTTClientID == "" {
		cfg.MQTTClientID = "devicesim-" + randomHex(6)
	}
	tr := http.DefaultTransport.(*http.Transport).Clone()
	tr.MaxIdleConns = 4*cfg.Concurrency + 16
	tr.MaxIdleConnsPerHost = 2*cfg.Concurrency + 8
	tr.DialContext = (&net.Dialer{Timeout: 10 * time.Second, KeepAlive: 30 * time.Second}).DialContext
	f := &Fleet{
		cfg:      cfg,
		http:     &http.Client{Transport: tr, Timeout: cfg.HTTPTimeout},
		byClient: map[string]*Device{},
		byModel:  map[string][]*Device{},
	}
	f.qcond = sync.NewCond(&f.qmu)
	f.ctx, f.cancel = context.WithCancel(context.Background())
	for range cfg.Concurrency {
		f.workers.Add(1)
		go f.work()
	}
	if cfg.BrokerURL == "" || cfg.DeviceAccounts {
		return f, nil
	}
	if err := f.connect(ctx); err != nil {
		f.Close(context.Background())
		return nil, err
	}
	return f, nil
}

// Topics are the filters the fleet's MQTT connection subscribes to.
var Topics = []string{"iotsupport/+/rotation", "iotsupport/+/config", "iotsupport/+/firmware"}

func (f *Fleet) connect(ctx context.Context) error {
	u, err := url.Parse(f.cfg.BrokerURL)
	if err != nil || u.Host == "" {
		return fmt.Errorf("devicesim: broker URL is not a URL with a host")
	}
	subscribed := make(chan struct{})
	var once sync.Once
	subs := make([]paho.SubscribeOptions, 0, len(Topics))
	for _, t := range Topics {
		subs = append(subs, paho.SubscribeOptions{Topic: t, QoS: 1})
	}
	cc := autopaho.ClientConfig{
		ServerUrls:                    []*url.URL{u},
		KeepAlive:                     30,
		CleanStartOnInitialConnection: true,
		ConnectTimeout:                10 * time.Second,
		OnConnectionUp: func(cm *autopaho.ConnectionManager, _ *paho.Connack) {
			// Subscribe (again after a reconnect) without blocking autopaho.
			go func() {
				if _, err := cm.Subscribe(f.ctx, &paho.Subscribe{Subscriptions: subs}); err != nil {
					f.logf("devicesim: subscribe: %v", err)
					return
				}
				once.Do(func() { close(subscribed) })
			}()
		},
		OnConnectError: func(err error) { f.logf("devicesim: mqtt connect: %v", err) },
		ClientConfig: paho.ClientConfig{
			ClientID:          f.cfg.MQTTClientID,
			OnPublishReceived: []func(paho.PublishReceived) (bool, error){f.onPublish},
		},
	}
	if u.User != nil {
		pw, _ := u.User.Password()
		cc.ConnectUsername, cc.ConnectPassword = u.User.Username(), []byte(pw)
	}
	cm, err := autopaho.NewConnection(f.ctx, cc)
	if err != nil {
		return fmt.Errorf("devicesim: mqtt: %w", err)
	}
	f.cm = cm
	select {
	case <-subscribed:
		return nil
	case <-ctx.Done():
		return fmt.Errorf("devicesim: mqtt subscription not acknowledged: %w", ctx.Err())
	}
}

// Connect connects device d with its own broker account
// (Config.DeviceAccounts) and returns once its subscriptions are
// acknowledged or ctx ends; the connection comes back after a drop (with
// the device's latest password) until Close. A broker that refuses the
// account (a deactivated device, a wrong password) fails it with the
// broker's reason once ctx ends.
func (f *Fleet) Connect(ctx context.Context, d *Device) error {
	if !f.cfg.DeviceAccounts || f.cfg.BrokerURL == "" {
		return errors.New("devicesim: Connect needs Config.DeviceAccounts and a BrokerURL")
	}
	u, err := url.Parse(f.cfg.BrokerURL)
	if err != nil || u.Host == "" {
		return fmt.Errorf("devicesim: broker URL is not a URL with a host")
	}
	u.User = nil
	subs := []paho.SubscribeOptions{
		{Topic: "iotsupport/" + d.clientID + "/rotation", QoS: 1},
		{Topic: "iotsupport/" + d.clientID + "/config", QoS: 1},
		{Topic: "iotsupport/" + d.clientID + "/firmware", QoS: 1},
		{Topic: "iotsupport/" + d.modelCode + "/firmware", QoS: 1},
	}
	subscribed := make(chan error, 1)
	var lastErr atomic.Value
	cc := autopaho.ClientConfig{
		ServerUrls:                    []*url.URL{u},
		KeepAlive:                     30,
		CleanStartOnInitialConnection: true,
		ConnectTimeout:                10 * time.Second,
		ReconnectBackoff:              autopaho.NewConstantBackoff(500 * time.Millisecond),
		ConnectPacketBuilder: func(c *paho.Connect, _ *url.URL) (*paho.Connect, error) {
			d.mu.Lock()
			pw := d.mqttPassword
			d.mu.Unlock()
			c.Username, c.UsernameFlag = d.clientID, true
			c.Password, c.PasswordFlag = []byte(pw), pw != ""
			return c, nil
		},
		OnConnectionUp: func(cm *autopaho.ConnectionManager, _ *paho.Connack) {
			go func() {
				sa, err := cm.Subscribe(f.ctx, &paho.Subscribe{Subscriptions: subs})
				if err == nil {
					for _, rc := range sa.Reasons {
						if rc >= 0x80 {
							err = fmt.Errorf("subscription refused (reason 0x%02x)", rc)
						}
					}
				}
				select {
				case subscribed <- err:
				default:
				}
			}()
		},
		OnConnectError: func(err error) { lastErr.Store(err) },
		ClientConfig: paho.ClientConfig{
			ClientID: d.clientID,
			OnPublishReceived: []func(paho.PublishReceived) (bool, error){func(pr paho.PublishReceived) (bool, error) {
				f.deliverTo([]*Device{d}, pr.Packet.Topic, pr.Packet.Payload)
				return true, nil
			}},
		},
	}
	cm, err := autopaho.NewConnection(f.ctx, cc)
	if err != nil {
		return fmt.Errorf("devicesim: mqtt: %w", err)
	}
	d.mu.Lock()
	d.cm = cm
	d.mu.Unlock()
	select {
	case err := <-subscribed:
		if err != nil {
			return fmt.Errorf("devicesim: %s: %w", d.clientID, err)
		}
		return nil
	case <-ctx.Done():
		if e, _ := lastErr.Load().(error); e != nil {
			return fmt.Errorf("devicesim: %s: mqtt connect: %w", d.clientID, e)
		}
		return fmt.Errorf("devicesim: %s: mqtt subscription not acknowledged: %w", d.clientID, ctx.Err())
	}
}

func (f *Fleet) onPublish(pr paho.PublishReceived) (bool, error) {
	f.Deliver(pr.Packet.Topic, pr.Packet.Payload)
	return true, nil
}

// Deliver hands a message to the devices it is for, as the shared MQTT
// connection does: iotsupport/<client_id>/rotation, .../config and
// .../firmware (a campaign's nudge) to that device,
// iotsupport/<model_code>/firmware to every device of the model (a client
// id, iotdevice-<code>-<key>, never looks like a model code). It reports
// whether any device of the fleet took it. It never blocks on the devices'
// work.
func (f *Fleet) Deliver(topic string, payload []byte) bool {
	parts := strings.Split(topic, "/")
	if len(parts) != 3 || parts[0] != "iotsupport" {
		return false
	}
	f.mu.RLock()
	var targets []*Device
	switch parts[2] {
	case "rotation", "config":
		if d := f.byClient[parts[1]]; d != nil {
			targets = []*Device{d}
		}
	case "firmware":
		if d := f.byClient[parts[1]]; d != nil {
			targets = []*Device{d}
		} else {
			targets = f.byModel[parts[1]]
		}
	}
	f.mu.RUnlock()
	if len(targets) == 0 {
		f.unknown.Add(1)
		return false
	}
	f.deliverTo(targets, topic, payload)
	return true
}

// deliverTo hands the message on topic to targets.
func (f *Fleet) deliverTo(targets []*Device, topic string, payload []byte) {
	parts := strings.Split(topic, "/")
	if len(parts) != 3 {
		return
	}
	for _, d := range targets {
		switch parts[2] {
		case "rotation":
			d.onNudge()
		case "config":
			d.onConfigNotice()
		case "firmware":
			var v struct {
				FirmwareVersion string `json:"firmware_version"`
			}
			_ = json.Unmarshal(payload, &v)
			d.onFirmwareNotice(v.FirmwareVersion, parts[1] == d.clientID)
		}
	}
}

// Add boots a device from the bytes of its NVS provisioning partition and
// adds it to the fleet. It does not talk to the network: the device gets
// its first token when it first needs one (or on Device.Boot).
func (f *Fleet) Add(partition []byte) (*Device, error) {
	d, err := newDevice(f, partition)
	if err != nil {
		return nil, err
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.byClient[d.clientID] != nil {
		return nil, fmt.Errorf("devicesim: device %s is already in the fleet", d.clientID)
	}
	f.byClient[d.clientID] = d
	f.byModel[d.modelCode] = append(f.byModel[d.modelCode], d)
	f.devices = append(f.devices, d)
	return d, nil
}

// PartitionFromJSON returns the partition bytes of espmdm's answer to GET
// /api/devices/{id}/provisioning ({"partition","size","data":<base64>}).
func PartitionFromJSON(body []byte) ([]byte, error) {
	var p struct {
		Partition string `json:"partition"`
		Size      int    `json:"size"`
		Data      string `json:"data"`
	}
	if err := json.Unmarshal(body, &p); err != nil {
		return nil, fmt.Errorf("devicesim: provisioning answer: %w", err)
	}
	b, err := base64.StdEncoding.DecodeString(p.Data)
	if err != nil {
		return nil, fmt.Errorf("devicesim: provisioning data is not base64: %w", err)
	}
	if p.Size != 0 && len(b) != p.Size {
		return nil, fmt.Errorf("devicesim: provisioning data has %d bytes, size says %d", len(b), p.Size)
	}
	return b, nil
}

// Device returns the fleet's device with this client id, or nil.
func (f *Fleet) Device(clientID string) *Device {
	f.mu.RLock()
	defer f.mu.RUnlock()
	return f.byClient[clientID]
}

// Devices returns the fleet's devices in the order they were added.
func (f *Fleet) Devices() []*Device {
	f.mu.RLock()
	defer f.mu.RUnlock()
	return slices.Clone(f.devices)
}

// BootAll boots every device (Concurrency at a time): each gets a token
// and reports its state, as a fleet that powers on does. It returns an
// error naming how many failed and the first failure.
func (f *Fleet) BootAll(ctx context.Context) error {
	var mu sync.Mutex
	var failed, total int
	var first error
	f.forEach(ctx, func(ctx context.Context, d *Device) {
		err := d.Boot(ctx)
		mu.Lock()
		defer mu.Unlock()
		total++
		if err != nil {
			failed++
			if first == nil {
				first = fmt.Errorf("%s: %w", d.clientID, err)
			}
		}
	})
	if first != nil {
		return fmt.Errorf("devicesim: %d of %d devices failed to boot; the first: %w", failed, total, first)
	}
	return ctx.Err()
}

// Unknown is the number of messages received for no device of the fleet
// (other fleets on the same broker).
func (f *Fleet) Unknown() int64 { return f.unknown.Load() }

// Close disconnects from the broker and stops the workers; queued work is
// dropped, and work under way sees its context cancelled.
func (f *Fleet) Close(ctx context.Context) error {
	var err error
	if f.cm != nil {
		err = f.cm.Disconnect(ctx)
	}
	f.mu.RLock()
	for _, d := range f.devices {
		d.mu.Lock()
		cm := d.cm
		d.mu.Unlock()
		if cm != nil {
			if derr := cm.Disconnect(ctx); derr != nil && !errors.Is(derr, autopaho.ConnectionDownError) && err == nil {
				err = derr
			}
		}
	}
	f.mu.RUnlock()
	f.qmu.Lock()
	f.closed = true
	f.queue = nil
	f.qmu.Unlock()
	f.qcond.Broadcast()
	f.cancel()
	f.workers.Wait()
	f.mu.RLock()
	for _, d := range f.devices {
		d.stopRetry()
	}
	f.mu.RUnlock()
	f.http.CloseIdleConnections()
	if err != nil && !errors.Is(err, autopaho.ConnectionDownError) {
		return fmt.Errorf("devicesim: mqtt disconnect: %w", err)
	}
	return nil
}

// enqueue adds work for the pool; it never blocks. It reports false after
// Close.
func (f *Fleet) enqueue(job func(context.Context)) bool {
	f.qmu.Lock()
	defer f.qmu.Unlock()
	if f.closed {
		return false
	}
	f.queue = append(f.queue, job)
	f.qcond.Signal()
	return true
}

func (f *Fleet) work() {
	defer f.workers.Done()
	for {
		f.qmu.Lock()
		for len(f.queue) == 0 && !f.closed {
			f.qcond.Wait()
		}
		if f.closed {
			f.qmu.Unlock()
			return
		}
		job := f.queue[0]
		f.queue[0] = nil
		f.queue = f.queue[1:]
		f.qmu.Unlock()
		job(f.ctx)
	}
}

// Pending is the number of queued jobs not yet taken by a worker.
func (f *Fleet) Pending() int {
	f.qmu.Lock()
	defer f.qmu.Unlock()
	return len(f.queue)
}

func (f *Fleet) logf(format string, args ...any) {
	if f.cfg.Logf != nil {
		f.cfg.Logf(format, args...)
	}
}

func (f *Fleet) emit(e Event) {
	if f.cfg.OnEvent != nil {
		f.cfg.OnEvent(e)
	}
}

// forEach runs fn for every device on at most Concurrency goroutines.
func (f *Fleet) forEach(ctx context.Context, fn func(context.Context, *Device)) {
	devs := f.Devices()
	sem := make(chan struct{}, f.cfg.Concurrency)
	var wg sync.WaitGroup
	for _, d := range devs {
		if ctx.Err() != nil {
			break
		}
		sem <- struct{}{}
		wg.Add(1)
		go func() {
			defer func() { <-sem; wg.Done() }()
			fn(ctx, d)
		}()
	}
	wg.Wait()
}

package mqtt

import (
	"context"
	"crypto/rand"
	"crypto/tls"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/eclipse/paho.golang/packets"
	"github.com/eclipse/paho.golang/paho"
	"go.uber.org/zap"

	"github.com/espmdm/espmdm/core/model"
	"github.com/espmdm/espmdm/ports"
)

var _ ports.BrokerAccounts = (*DynSec)(nil)

// Defaults applied by NewDynSec to zero DynSecConfig fields.
const (
	DefaultCallTimeout = 10 * time.Second
	DefaultMaxBatch    = 100
	// DefaultDynSecClientIDPrefix starts the client id of the accounts
	// connection, followed by random hex: every process has its own.
	DefaultDynSecClientIDPrefix = "espmdm-accounts-"
)

// ErrDynSecNotRunning is returned by DynSec's methods before Start and
// after Stop.
var ErrDynSecNotRunning = errors.New("mqtt: broker accounts are not running")

// DynSecConfig configures DynSec. Only BrokerURL is required; the broker
// account (in the URL or Username and Password) must hold the plugin's
// admin role.
type DynSecConfig struct {
	// BrokerURL, Username, Password, TLS, KeepAlive, ConnectTimeout and
	// Dialer are as in Config. The user info of the URL is removed before
	// the URL can appear in a log or error.
	BrokerURL      string
	Username       string
	Password       string
	TLS            *tls.Config
	KeepAlive      time.Duration
	ConnectTimeout time.Duration
	Dialer         Dialer
	// ClientID of the connection that manages the accounts; default
	// DefaultDynSecClientIDPrefix + random hex. It must differ from the
	// notifier's and from other processes' (a second connection with the
	// same id takes the first one's place).
	ClientID string
	// CallTimeout bounds one call, from connecting (when the connection is
	// down) to the plugin's last answer (default 10 s). The plugin rewrites
	// its whole state file after every change, so a change costs more the
	// more accounts the broker holds.
	CallTimeout time.Duration
	// MaxBatch is how many commands concurrent calls may share one message
	// to the plugin with (default 100; 1 sends every call on its own). A
	// call's commands are never split.
	MaxBatch int
	// Logger receives connection events and failures; nil logs nothing.
	// Passwords are never logged (nor is anything sent to the plugin).
	Logger *zap.Logger
	// Observe, when set, is called after each port operation
	// (OpEnsureAccount, OpDisableAccount, OpEnableAccount,
	// OpDeleteAccount, OpListAccounts, OpPingAccounts) with its result. It
	// must be quick and must not block. Meant for metrics.
	Observe func(op string, err error)
}

// Operation names passed to DynSecConfig.Observe.
const (
	OpEnsureAccount  = "ensure_account"
	OpDisableAccount = "disable_account"
	OpEnableAccount  = "enable_account"
	OpDeleteAccount  = "delete_account"
	OpListAccounts   = "list_accounts"
	OpPingAccounts   = "ping_accounts"
)

// DynSec manages the devices' broker accounts over Mosquitto's dynamic
// security plugin (ports.BrokerAccounts). It keeps one MQTT v5 connection
// as the admin account, made when a call needs it and again after it drops,
// subscribed to the plugin's responses; commands are sent with QoS 0 and
// matched to their responses by correlation data. Calls made at the same
// time share messages (up to MaxBatch commands each), so making many
// accounts concurrently costs few round trips. Its methods are safe for
// concurrent use between Start and Stop.
type DynSec struct {
	s           settings
	callTimeout time.Duration
	maxBatch    int
	observe     func(string, error)
	prefix      string // of every correlation id: this instance's
	seq         atomic.Uint64

	reqs chan *dsRound

	mu      sync.Mutex
	phase   int
	ctx     context.Context // the sender's, cancelled by Stop
	cancel  context.CancelFunc
	done    chan struct{} // closed when the sender has exited
	conn    *dsConn
	pending map[string]dsWaiter // by correlation id

	watchers sync.WaitGroup // one goroutine per connection, until it ends
}

// dsConn is one connection to the broker.
type dsConn struct{ cli *paho.Client }

// dsRound is one group of commands sent together and answered in order.
type dsRound struct {
	ctx  context.Context
	cmds []dsCommand
	res  []dsResponse
	left int
	conn *dsConn // the connection it was sent on
	done chan struct{}
	err  error
	over bool // guarded by DynSec.mu
}

type dsWaiter struct {
	r *dsRound
	i int
}

// NewDynSec validates cfg. It does not connect: call Start.
func NewDynSec(cfg DynSecConfig) (*DynSec, error) {
	id := cfg.ClientID
	suffix := randomHex(6)
	if id == "" {
		id = DefaultDynSecClientIDPrefix + suffix
	}
	s, err := Config{
		BrokerURL: cfg.BrokerURL, ClientID: id, Username: cfg.Username, Password: cfg.Password, TLS: cfg.TLS,
		KeepAlive: cfg.KeepAlive, ConnectTimeout: cfg.ConnectTimeout, Dialer: cfg.Dialer, Logger: cfg.Logger,
	}.settings()
	if err != nil {
		return nil, err
	}
	d := &DynSec{
		s: s, callTimeout: orDefault(cfg.CallTimeout, DefaultCallTimeout), maxBatch: cfg.MaxBatch, observe: cfg.Observe,
		prefix: suffix + "-", reqs: make(chan *dsRound), pending: map[string]dsWaiter{},
	}
	if d.callTimeout < 0 {
		return nil, errors.New("mqtt: CallTimeout must not be negative")
	}
	switch {
	case d.maxBatch == 0:
		d.maxBatch = DefaultMaxBatch
	case d.maxBatch < 0:
		return nil, errors.New("mqtt: MaxBatch must not be negative")
	}
	if d.observe == nil {
		d.observe = func(string, error) {}
	}
	return d, nil
}

func randomHex(n int) string {
	b := make([]byte, n)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}

// Start starts the goroutine that sends commands; it connects when the
// first call needs it. ctx must live as long as the application: when it
// ends, DynSec stops as with Stop. Start can be called once.
func (d *DynSec) Start(ctx context.Context) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.phase != phaseNew {
		return errors.New("mqtt: DynSec.Start called twice or after Stop")
	}
	d.phase = phaseRunning
	d.ctx, d.cancel = context.WithCancel(ctx)
	d.done = make(chan struct{})
	go d.run()
	return nil
}

// Stop fails the calls in progress with ErrDynSecNotRunning, disconnects
// and waits for that to finish, or for ctx to end. It is idempotent.
func (d *DynSec) Stop(ctx context.Context) error {
	d.mu.Lock()
	phase := d.phase
	d.phase = phaseStopped
	d.mu.Unlock()
	if phase != phaseRunning {
		return nil
	}
	d.cancel()
	stopped := make(chan struct{})
	go func() {
		<-d.done
		d.watchers.Wait()
		close(stopped)
	}()
	select {
	case <-stopped:
	case <-ctx.Done():
		return ctx.Err()
	}
	d.s.log.Info("mqtt: broker accounts stopped")
	return nil
}

// run is the sender: it takes rounds as they come and sends those that
// arrive together in one message. When Start's context ends (or Stop), it
// fails what is still waiting and disconnects.
func (d *DynSec) run() {
	defer close(d.done)
	defer func() {
		d.mu.Lock()
		c := d.conn
		d.conn = nil
		for _, w := range d.pending {
			d.finishLocked(w.r, ErrDynSecNotRunning)
		}
		d.mu.Unlock()
		if c != nil {
			_ = c.cli.Disconnect(&paho.Disconnect{ReasonCode: 0})
		}
	}()
	for {
		var batch []*dsRound
		select {
		case r := <-d.reqs:
			batch = append(batch, r)
		case <-d.ctx.Done():
			return
		}
		n := len(batch[0].cmds)
	more:
		for n < d.maxBatch {
			select {
			case r := <-d.reqs:
				batch = append(batch, r)
				n += len(r.cmds)
			default:
				break more
			}
		}
		d.send(batch)
	}
}

// send sends a batch of rounds in one message on the connection (made
// first when there is none); a failure fails every round of the batch.
func (d *DynSec) send(batch []*dsRound) {
	live := batch[:0]
	for _, r := range batch {
		if r.ctx.Err() != nil {
			d.finish(r, d.ctxErr(r.ctx)) // its caller has given up: do not start it
			continue
		}
		live = append(live, r)
	}
	if len(live) == 0 {
		return
	}
	ctx, cancel := context.WithTimeout(d.ctx, d.s.connectTimeout)
	defer cancel()
	c, err := d.connection(ctx)
	if err != nil {
		for _, r := range live {
			d.finish(r, err)
		}
		return
	}
	var req dsRequest
	d.mu.Lock()
	for _, r := range live {
		if r.over {
			continue // its caller gave up while the connection was made
		}
		r.conn = c
		for i := range r.cmds {
			id := d.prefix + strconv.FormatUint(d.seq.Add(1), 36)
			r.cmds[i].CorrelationData = id
			d.pending[id] = dsWaiter{r: r, i: i}
		}
		req.Commands = append(req.Commands, r.cmds...)
	}
	d.mu.Unlock()
	if len(req.Commands) == 0 {
		return
	}
	payload, err := json.Marshal(req)
	if err == nil {
		// QoS 0: the answer is the acknowledgement. (A QoS 1 PUBACK and the
		// plugin's answer are two small writes that Nagle's algorithm on the
		// broker holds apart by the client's delayed ACK, ~40 ms a call.)
		_, err = c.cli.Publish(ctx, &paho.Publish{Topic: DynSecTopic, QoS: 0, Payload: payload})
	}
	if err != nil {
		err = unavailable(fmt.Errorf("send to the dynamic security plugin: %w", err))
		for _, r := range live {
			d.finish(r, err)
		}
		d.drop(c)
	}
}

// connection returns the connection, connecting when there is none.
// Only the sender calls it, so there is one attempt at a time.
func (d *DynSec) connection(ctx context.Context) (*dsConn, error) {
	d.mu.Lock()
	current := d.conn
	d.mu.Unlock()
	if current != nil {
		return current, nil
	}
	conn, err := d.dial(ctx)
	if err != nil {
		d.s.log.Warn("mqtt: broker accounts: cannot reach the broker", zap.String("broker", d.s.server.String()), zap.Error(err))
		return nil, unavailable(fmt.Errorf("reach the broker at %s: %w", d.s.server.Host, err))
	}
	cli := paho.NewClient(paho.ClientConfig{
		ClientID: d.s.clientID, Conn: conn,
		OnPublishReceived:  []func(paho.PublishReceived) (bool, error){d.onPublish},
		OnClientError:      func(error) {},
		OnServerDisconnect: func(*paho.Disconnect) {},
	})
	cp := &paho.Connect{ClientID: d.s.clientID, CleanStart: true, KeepAlive: d.s.keepAlive}
	if d.s.username != "" {
		cp.Username, cp.UsernameFlag = d.s.username, true
		cp.Password, cp.PasswordFlag = []byte(d.s.password), true
	}
	ack, err := cli.Connect(ctx, cp)
	if err != nil {
		if ack != nil && ack.ReasonCode >= 0x80 {
			err = fmt.Errorf("the broker refused the account %q (reason code %#x: bad user name or password, or not authorized)", d.s.username, ack.ReasonCode)
		}
		d.s.log.Warn("mqtt: broker accounts: cannot connect", zap.String("broker", d.s.server.String()), zap.Error(err))
		return nil, unavailable(err)
	}
	sa, err := cli.Subscribe(ctx, &paho.Subscribe{Subscriptions: []paho.SubscribeOptions{{Topic: DynSecResponseTopic, QoS: 0}}})
	if sa != nil && (len(sa.Reasons) != 1 || sa.Reasons[0] >= 0x80) {
		err = fmt.Errorf("the broker does not let %q read the dynamic security plugin's answers (%s): it needs the plugin's admin role", d.s.username, DynSecResponseTopic)
	}
	if err != nil {
		_ = cli.Disconnect(&paho.Disconnect{ReasonCode: 0})
		d.s.log.Warn("mqtt: broker accounts: cannot subscribe", zap.Error(err))
		return nil, unavailable(err)
	}
	c := &dsConn{cli: cli}
	d.mu.Lock()
	if d.phase != phaseRunning {
		d.mu.Unlock()
		_ = cli.Disconnect(&paho.Disconnect{ReasonCode: 0})
		return nil, ErrDynSecNotRunning
	}
	d.conn = c
	d.watchers.Add(1)
	d.mu.Unlock()
	go func() {
		defer d.watchers.Done()
		<-cli.Done()
		d.drop(c)
	}()
	d.s.log.Info("mqtt: broker accounts connected", zap.String("broker", d.s.server.String()), zap.String("client_id", d.s.clientID))
	return c, nil
}

// dial opens the network connection (TLS for mqtts).
func (d *DynSec) dial(ctx context.Context) (net.Conn, error) {
	var dialer Dialer = &net.Dialer{}
	if d.s.dialer != nil {
		dialer = d.s.dialer
	}
	conn, err := dialer.DialContext(ctx, "tcp", d.s.server.Host)
	if err != nil {
		return nil, err
	}
	if d.s.useTLS {
		tc := tls.Client(conn, d.s.tls)
		if err := tc.HandshakeContext(ctx); err != nil {
			_ = conn.Close()
			return nil, err
		}
		conn = tc
	}
	return packets.NewThreadSafeConn(conn), nil
}

// drop forgets a connection that ended (or failed): the rounds sent on it
// will not be answered.
func (d *DynSec) drop(c *dsConn) {
	d.mu.Lock()
	was := d.conn == c
	if was {
		d.conn = nil
	}
	lost := unavailable(errors.New("the connection to the broker was lost before the dynamic security plugin answered"))
	for _, w := range d.pending {
		if w.r.conn == c {
			d.finishLocked(w.r, lost)
		}
	}
	stopping := d.phase != phaseRunning
	d.mu.Unlock()
	_ = c.cli.Disconnect(&paho.Disconnect{ReasonCode: 0})
	if was && !stopping {
		d.s.log.Warn("mqtt: broker accounts: connection lost; the next call reconnects", zap.String("broker", d.s.server.String()))
	}
}

// onPublish routes the plugin's answers to the rounds waiting for them;
// answers to other clients' commands are ignored.
func (d *DynSec) onPublish(pr paho.PublishReceived) (bool, error) {
	if pr.Packet.Topic != DynSecResponseTopic {
		return false, nil
	}
	var msg dsResponses
	if err := json.Unmarshal(pr.Packet.Payload, &msg); err != nil {
		d.s.log.Warn("mqtt: broker accounts: unreadable answer from the dynamic security plugin", zap.Error(err))
		return true, nil
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	for _, resp := range msg.Responses {
		w, ok := d.pending[resp.CorrelationData]
		if !ok {
			continue
		}
		delete(d.pending, resp.CorrelationData)
		w.r.res[w.i] = resp
		w.r.left--
		if w.r.left == 0 {
			d.finishLocked(w.r, nil)
		}
	}
	return true, nil
}

func (d *DynSec) finish(r *dsRound, err error) {
	d.mu.Lock()
	d.finishLocked(r, err)
	d.mu.Unlock()
}

// finishLocked ends a round once, with err or (nil) its answers, and
// forgets what it still waited for.
func (d *DynSec) finishLocked(r *dsRound, err error) {
	if r.over {
		return
	}
	r.over, r.err = true, err
	for i := range r.cmds {
		delete(d.pending, r.cmds[i].CorrelationData)
	}
	close(r.done)
}

// roundTrip sends cmds together and returns the plugin's answer to each,
// in order. ctx bounds the wait: its end is the call timeout (an
// *model.UnavailableError) or the caller's cancellation (ctx's error).
func (d *DynSec) roundTrip(ctx context.Context, cmds ...dsCommand) ([]dsResponse, error) {
	r := &dsRound{ctx: ctx, cmds: cmds, res: make([]dsResponse, len(cmds)), left: len(cmds), done: make(chan struct{})}
	d.mu.Lock()
	phase := d.phase
	d.mu.Unlock()
	if phase != phaseRunning {
		return nil, ErrDynSecNotRunning
	}
	select {
	case d.reqs <- r:
	case <-d.done:
		return nil, ErrDynSecNotRunning
	case <-ctx.Done():
		return nil, d.ctxErr(ctx)
	}
	select {
	case <-r.done:
	case <-ctx.Done():
		d.finish(r, nil)
		if !r.answered() {
			return nil, d.ctxErr(ctx)
		}
	}
	if r.err != nil {
		return nil, r.err
	}
	return r.res, nil
}

// answered reports whether the round ended with every answer (after it
// ended).
func (r *dsRound) answered() bool { return r.err == nil && r.left == 0 }

// ctxErr is what a call whose ctx ended returns: the call timeout is the
// broker's failure, a cancellation the caller's.
func (d *DynSec) ctxErr(ctx context.Context) error {
	if errors.Is(ctx.Err(), context.DeadlineExceeded) {
		return unavailable(fmt.Errorf("no answer from the broker's dynamic security plugin in time (is the plugin loaded, and does %q hold its admin role?): %w", d.s.username, ctx.Err()))
	}
	return ctx.Err()
}

func unavailable(err error) error {
	return &model.UnavailableError{Service: model.ServiceBroker, Err: err}
}

// call runs one port operation with the call timeout and reports it.
func (d *DynSec) call(ctx context.Context, op string, fn func(ctx context.Context) error) error {
	ctx, cancel := context.WithTimeout(ctx, d.callTimeout)
	defer cancel()
	err := fn(ctx)
	d.observe(op, err)
	return err
}

// commandError is the plugin's refusal of a command, as an unavailable
// broker: espmdm cannot do what it needs there.
func commandError(c dsCommand, r dsResponse) error {
	what := c.Username
	if what == "" {
		what = c.Rolename
	}
	return unavailable(fmt.Errorf("the dynamic security plugin refused %s %s: %s", c.Command, what, r.Error))
}

// EnsureDeviceAccount implements ports.BrokerAccounts. A new account costs
// one message (role and client made together); an existing one two more
// (read it, then repair what differs).
func (d *DynSec) EnsureDeviceAccount(ctx context.Context, acct model.BrokerAccount) error {
	if err := acct.Validate(); err != nil {
		return err
	}
	code, _, _ := model.ParseClientID(acct.ClientID)
	name := acct.ClientID
	return d.call(ctx, OpEnsureAccount, func(ctx context.Context) error {
		textname := deviceTextname(time.Now())
		cmds := []dsCommand{
			{Command: "createRole", Rolename: name, ACLs: deviceACLs(name, code)},
			{Command: "createClient", Username: name, Password: acct.Password, Textname: textname, Roles: []dsRole{{Rolename: name}}},
		}
		if acct.Disabled {
			cmds = append(cmds, dsCommand{Command: "disableClient", Username: name})
		}
		// Someone else removing the account while it is repaired sends it
		// round again; twice is plenty.
		for range 3 {
			res, err := d.roundTrip(ctx, cmds...)
			if err != nil {
				return err
			}
			repair := false
			for i, r := range res {
				switch {
				case r.Error == "":
				case i == 0 && r.Error == dsErrRoleExists, i == 1 && r.Error == dsErrClientExists:
					repair = true
				case i == 2 && r.Error == dsErrClientNotFound:
					// Removed since: made again below.
				default:
					return commandError(cmds[i], r)
				}
			}
			if !repair {
				return nil
			}
			c, role, err := d.account(ctx, name)
			if err != nil {
				return err
			}
			if c == nil {
				continue
			}
			fixes := repairCommands(acct, code, *c, role, textname)
			res, err = d.roundTrip(ctx, fixes...)
			if err != nil {
				return err
			}
			gone := false
			for i, r := range res {
				switch r.Error {
				case "":
				case dsErrClientNotFound, dsErrRoleNotFound:
					gone = true
				default:
					return commandError(fixes[i], r)
				}
			}
			if !gone {
				return nil
			}
		}
		return unavailable(fmt.Errorf("the account %s kept changing while it was made", name))
	})
}

// account reads a client and its role; each is nil when missing.
func (d *DynSec) account(ctx context.Context, name string) (*dsClient, *dsRoleInfo, error) {
	cmds := []dsCommand{{Command: "getClient", Username: name}, {Command: "getRole", Rolename: name}}
	res, err := d.roundTrip(ctx, cmds...)
	if err != nil {
		return nil, nil, err
	}
	var c *dsClient
	switch res[0].Error {
	case "":
		var data struct {
			Client dsClient `json:"client"`
		}
		if err := json.Unmarshal(res[0].Data, &data); err != nil {
			return nil, nil, unavailable(fmt.Errorf("unreadable getClient answer: %w", err))
		}
		c = &data.Client
	case dsErrClientNotFound:
	default:
		return nil, nil, commandError(cmds[0], res[0])
	}
	var role *dsRoleInfo
	switch res[1].Error {
	case "":
		var data struct {
			Role dsRoleInfo `json:"role"`
		}
		if err := json.Unmarshal(res[1].Data, &data); err != nil {
			return nil, nil, unavailable(fmt.Errorf("unreadable getRole answer: %w", err))
		}
		role = &data.Role
	case dsErrRoleNotFound:
	default:
		return nil, nil, commandError(cmds[1], res[1])
	}
	return c, role, nil
}

// DisableDeviceAccount implements ports.BrokerAccounts; the plugin
// disconnects the account's clients.
func (d *DynSec) DisableDeviceAccount(ctx context.Context, clientID string) error {
	return d.setDisabled(ctx, OpDisableAccount, "disableClient", clientID)
}

// EnableDeviceAccount implements ports.BrokerAccounts.
func (d *DynSec) EnableDeviceAccount(ctx context.Context, clientID string) error {
	return d.setDisabled(ctx, OpEnableAccount, "enableClient", clientID)
}

func (d *DynSec) setDisabled(ctx context.Context, op, command, clientID string) error {
	if err := model.ValidateBrokerAccountName(clientID); err != nil {
		return err
	}
	return d.call(ctx, op, func(ctx context.Context) error {
		cmd := dsCommand{Command: command, Username: clientID}
		res, err := d.roundTrip(ctx, cmd)
		if err != nil {
			return err
		}
		switch res[0].Error {
		case "":
			return nil
		case dsErrClientNotFound:
			return fmt.Errorf("%s: %w", clientID, model.ErrBrokerAccountNotFound)
		}
		return commandError(cmd, res[0])
	})
}

// DeleteDeviceAccount implements ports.BrokerAccounts: the client first
// (the plugin disconnects it), then its role.
func (d *DynSec) DeleteDeviceAccount(ctx context.Context, clientID string) error {
	if err := model.ValidateBrokerAccountName(clientID); err != nil {
		return err
	}
	return d.call(ctx, OpDeleteAccount, func(ctx context.Context) error {
		cmds := []dsCommand{{Command: "deleteClient", Username: clientID}, {Command: "deleteRole", Rolename: clientID}}
		res, err := d.roundTrip(ctx, cmds...)
		if err != nil {
			return err
		}
		for i, r := range res {
			if r.Error != "" && r.Error != dsErrClientNotFound && r.Error != dsErrRoleNotFound {
				return commandError(cmds[i], r)
			}
		}
		return nil
	})
}

// listPage is how many clients or roles one listing message asks for.
const listPage = 1000

// ListDeviceAccounts implements ports.BrokerAccounts, reading every client
// and role in pages of listPage.
func (d *DynSec) ListDeviceAccounts(ctx context.Context) ([]model.BrokerAccountInfo, error) {
	var out []model.BrokerAccountInfo
	err := d.call(ctx, OpListAccounts, func(ctx context.Context) error {
		var clients []dsClient
		if err := d.list(ctx, "listClients", "clients", func(raw json.RawMessage) error {
			var page []dsClient
			err := json.Unmarshal(raw, &page)
			clients = append(clients, page...)
			return err
		}); err != nil {
			return err
		}
		roles := map[string]*dsRoleInfo{}
		if err := d.list(ctx, "listRoles", "roles", func(raw json.RawMessage) error {
			var page []dsRoleInfo
			err := json.Unmarshal(raw, &page)
			for i := range page {
				roles[page[i].Rolename] = &page[i]
			}
			return err
		}); err != nil {
			return err
		}
		seen := map[string]bool{}
		for _, c := range clients {
			if model.ValidateBrokerAccountName(c.Username) != nil || seen[c.Username] {
				continue // not a device's, or listed twice while the pages moved
			}
			seen[c.Username] = true
			out = append(out, model.BrokerAccountInfo{
				ClientID: c.Username, Disabled: c.Disabled, CreatedAt: createdAt(c.Textname),
				Problems: accountProblems(c, roles[c.Username]),
			})
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	return out, nil
}

// list pages through listClients or listRoles (verbose), giving each page's
// entries (the field key of the answer's data) to add.
func (d *DynSec) list(ctx context.Context, command, key string, add func(json.RawMessage) error) error {
	for offset := 0; ; offset += listPage {
		cmd := dsCommand{Command: command, Verbose: ptr(true), Count: ptr(listPage), Offset: ptr(offset)}
		res, err := d.roundTrip(ctx, cmd)
		if err != nil {
			return err
		}
		if res[0].Error != "" {
			return commandError(cmd, res[0])
		}
		var data map[string]json.RawMessage
		var total struct {
			TotalCount int `json:"totalCount"`
		}
		if err := json.Unmarshal(res[0].Data, &data); err != nil {
			return unavailable(fmt.Errorf("unreadable %s answer: %w", command, err))
		}
		if err := json.Unmarshal(res[0].Data, &total); err != nil {
			return unavailable(fmt.Errorf("unreadable %s answer: %w", command, err))
		}
		if err := add(data[key]); err != nil {
			return unavailable(fmt.Errorf("unreadable %s answer: %w", command, err))
		}
		if offset+listPage >= total.TotalCount {
			return nil
		}
	}
}

// Ping implements ports.BrokerAccounts: it asks the plugin for its default
// access, which only its admin role may.
func (d *DynSec) Ping(ctx context.Context) error {
	return d.call(ctx, OpPingAccounts, func(ctx context.Context) error {
		cmd := dsCommand{Command: "getDefaultACLAccess"}
		res, err := d.roundTrip(ctx, cmd)
		if err != nil {
			return err
		}
		if res[0].Error != "" {
			return commandError(cmd, res[0])
		}
		return nil
	})
}

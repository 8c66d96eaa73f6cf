package main

import (
	"archive/zip"
	"bufio"
	"bytes"
	"compress/flate"
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/spf13/cobra"
	"golang.org/x/oauth2/clientcredentials"
)

// espmdm devices create: factory provisioning from the command line, over
// POST /api/devices/batch with operator credentials (SPEC §18).

func init() { subcommands = append(subcommands, newDevicesCmd) }

func newDevicesCmd() *cobra.Command {
	cmd := &cobra.Command{Use: "devices", Short: "Manage devices over the admin API"}
	cmd.AddCommand(newDevicesCreateCmd())
	return cmd
}

type batchOptions struct {
	url, tokenURL, clientID, clientSecret string
	model, size, config, out              string
	count                                 int
	timeout                               time.Duration
}

func newDevicesCreateCmd() *cobra.Command {
	var o batchOptions
	cmd := &cobra.Command{
		Use:   "create --model CODE --count N [--size S] [--config JSON] --out DIR",
		Short: "Create N devices of a model and write their NVS partitions to DIR",
		Long: `Create N devices of the model whose code is CODE through espmdm's admin API
(POST /api/devices/batch) and write what it answers into DIR: one NVS partition
<key>.bin per device (flash it at the nvs partition's offset), devices.csv
(id,key,client_id,nvs_file) and, when some devices could not be made,
errors.csv (index,status,error); the others stand. DIR must not hold a
devices.csv already. On a terminal a progress bar counts the devices made.

Credentials are an operator's (a service account holding the admin role), from
the environment as espmdm dev writes them: ESPMDM_URL, OIDC_TOKEN_URL,
OPERATOR_CLIENT_ID and OPERATOR_CLIENT_SECRET (the flags override all but the
secret). Exit status 0 when every device was made, 2 when some failed, 1 when
none could be.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if o.clientSecret == "" {
				o.clientSecret = os.Getenv("OPERATOR_CLIENT_SECRET")
			}
			return runDevicesCreate(cmd.Context(), o, cmd.OutOrStdout(), cmd.ErrOrStderr())
		},
	}
	f := cmd.Flags()
	f.StringVar(&o.url, "url", os.Getenv("ESPMDM_URL"), "espmdm's URL (default $ESPMDM_URL)")
	f.StringVar(&o.tokenURL, "token-url", os.Getenv("OIDC_TOKEN_URL"), "the OIDC token endpoint (default $OIDC_TOKEN_URL)")
	f.StringVar(&o.clientID, "client-id", os.Getenv("OPERATOR_CLIENT_ID"), "the operator's client id (default $OPERATOR_CLIENT_ID; the secret is $OPERATOR_CLIENT_SECRET)")
	f.StringVar(&o.model, "model", "", "the device model's code")
	f.IntVar(&o.count, "count", 0, "how many devices (1 to 1000)")
	f.StringVar(&o.size, "size", "0x6000", "the nvs partition's size (hex with 0x, or decimal), as in the partition table")
	f.StringVar(&o.config, "config", "{}", "every device's config (a JSON object)")
	f.StringVar(&o.out, "out", "", "the directory to write the partitions and CSV files to (made when missing)")
	f.DurationVar(&o.timeout, "timeout", 30*time.Minute, "give up after this long")
	_ = cmd.MarkFlagRequired("model")
	_ = cmd.MarkFlagRequired("count")
	_ = cmd.MarkFlagRequired("out")
	return cmd
}

func runDevicesCreate(ctx context.Context, o batchOptions, stdout, stderr io.Writer) error {
	switch {
	case o.url == "":
		return errors.New("no espmdm URL: set ESPMDM_URL or --url")
	case o.tokenURL == "" || o.clientID == "" || o.clientSecret == "":
		return errors.New("no operator credentials: set OIDC_TOKEN_URL, OPERATOR_CLIENT_ID and OPERATOR_CLIENT_SECRET")
	case o.count < 1 || o.count > 1000:
		return fmt.Errorf("--count must be from 1 to 1000, got %d", o.count)
	case !json.Valid([]byte(o.config)):
		return errors.New("--config is not JSON")
	}
	if err := os.MkdirAll(o.out, 0o700); err != nil {
		return err
	}
	if _, err := os.Stat(filepath.Join(o.out, "devices.csv")); err == nil {
		return fmt.Errorf("%s holds a devices.csv already: give another --out", o.out)
	}
	ctx, cancel := context.WithTimeout(ctx, o.timeout)
	defer cancel()
	cc := clientcredentials.Config{ClientID: o.clientID, ClientSecret: o.clientSecret, TokenURL: o.tokenURL}
	client := cc.Client(ctx)
	base := strings.TrimRight(o.url, "/")

	modelID, err := modelIDByCode(ctx, client, base, o.model)
	if err != nil {
		return err
	}
	body, _ := json.Marshal(map[string]any{"device_model_id": modelID, "count": o.count,
		"config": json.RawMessage(o.config), "size": o.size})
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, base+"/api/devices/batch", bytes.NewReader(body))
	if err != nil {
		return err
	}
	req.Header.Set("Content-Type", "application/json")
	resp, err := client.Do(req)
	if err != nil {
		return fmt.Errorf("POST /api/devices/batch: %w", err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return apiError("POST /api/devices/batch", resp)
	}
	// The ZIP goes to a file beside the results, counted on the way.
	tmp, err := os.CreateTemp(o.out, ".batch-*.zip")
	if err != nil {
		return err
	}
	defer os.Remove(tmp.Name())
	defer tmp.Close()
	bar := newProgress(stderr, o.count)
	counter := &zipEntryCounter{onEntry: func(name string) {
		if strings.HasSuffix(name, ".bin") {
			bar.add()
		}
	}}
	pr, pw := io.Pipe()
	countDone := make(chan struct{})
	go func() {
		counter.run(bufio.NewReader(pr))
		_, _ = io.Copy(io.Discard, pr)
		close(countDone)
	}()
	n, err := io.Copy(io.MultiWriter(tmp, pw), resp.Body)
	pw.Close()
	<-countDone
	bar.done()
	if err != nil {
		return fmt.Errorf("reading the answer after %d bytes: %w", n, err)
	}
	made, failed, err := extractBatch(tmp.Name(), o.out)
	if err != nil {
		return err
	}
	fmt.Fprintf(stdout, "%d devices made, %d failed; wrote %s\n", made, failed, o.out)
	switch {
	case failed > 0 && made == 0:
		return &exitError{code: 1, err: fmt.Errorf("no device was made: see %s", filepath.Join(o.out, "errors.csv"))}
	case failed > 0:
		return &exitError{code: 2, err: fmt.Errorf("%d devices failed: see %s", failed, filepath.Join(o.out, "errors.csv"))}
	}
	return nil
}

// modelIDByCode finds the model's id in GET /api/device-models.
func modelIDByCode(ctx context.Context, client *http.Client, base, code string) (int64, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, base+"/api/device-models", nil)
	if err != nil {
		return 0, err
	}
	resp, err := client.Do(req)
	if err != nil {
		return 0, fmt.Errorf("GET /api/device-models: %w", err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return 0, apiError("GET /api/device-models", resp)
	}
	var list struct {
		DeviceModels []struct {
			ID   int64  `json:"id"`
			Code string `json:"code"`
		} `json:"device_models"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&list); err != nil {
		return 0, fmt.Errorf("GET /api/device-models: %w", err)
	}
	for _, m := range list.DeviceModels {
		if m.Code == code {
			return m.ID, nil
		}
	}
	return 0, fmt.Errorf("no device model has the code %q", code)
}

// apiError words a refusal of the API with its problem's detail.
func apiError(what string, resp *http.Response) error {
	var p struct {
		Detail string `json:"detail"`
		Field  string `json:"field"`
	}
	b, _ := io.ReadAll(io.LimitReader(resp.Body, 64<<10))
	if json.Unmarshal(b, &p) == nil && p.Detail != "" {
		if p.Field != "" && !strings.HasPrefix(p.Detail, p.Field) {
			p.Detail = p.Field + ": " + p.Detail
		}
		return fmt.Errorf("%s: %s: %s", what, resp.Status, p.Detail)
	}
	return fmt.Errorf("%s: %s", what, resp.Status)
}

// extractBatch writes the ZIP's files into dir and counts the devices made
// and failed. Names are the server's (<key>.bin, devices.csv, errors.csv):
// anything with a path is refused.
func extractBatch(zipPath, dir string) (made, failed int, err error) {
	zr, err := zip.OpenReader(zipPath)
	if err != nil {
		return 0, 0, fmt.Errorf("the answer is not a ZIP: %w", err)
	}
	defer zr.Close()
	for _, f := range zr.File {
		if f.Name != filepath.Base(f.Name) || strings.HasPrefix(f.Name, ".") || strings.ContainsAny(f.Name, `/\`) {
			return 0, 0, fmt.Errorf("the ZIP holds an unexpected name %q", f.Name)
		}
		rc, err := f.Open()
		if err != nil {
			return 0, 0, err
		}
		data, err := io.ReadAll(io.LimitReader(rc, 16<<20))
		rc.Close()
		if err != nil {
			return 0, 0, fmt.Errorf("%s: %w", f.Name, err)
		}
		if err := os.WriteFile(filepath.Join(dir, f.Name), data, 0o600); err != nil {
			return 0, 0, err
		}
		switch f.Name {
		case "devices.csv":
			made = max(0, bytes.Count(data, []byte("\n"))-1)
		case "errors.csv":
			failed = max(0, bytes.Count(data, []byte("\n"))-1)
		}
	}
	return made, failed, nil
}

// zipEntryCounter follows a ZIP as it is written (local file headers,
// deflated data, data descriptors) and reports each entry's name once its
// data has passed, so progress shows while the server still writes.
type zipEntryCounter struct{ onEntry func(name string) }

func (z *zipEntryCounter) run(r *bufio.Reader) {
	for {
		var h [30]byte
		if _, err := io.ReadFull(r, h[:]); err != nil || binary.LittleEndian.Uint32(h[:]) != 0x04034b50 {
			return // the central directory (or the end)
		}
		flags, method := binary.LittleEndian.Uint16(h[6:]), binary.LittleEndian.Uint16(h[8:])
		csize := binary.LittleEndian.Uint32(h[18:])
		nameLen, extraLen := binary.LittleEndian.Uint16(h[26:]), binary.LittleEndian.Uint16(h[28:])
		name := make([]byte, nameLen)
		if _, err := io.ReadFull(r, name); err != nil {
			return
		}
		if _, err := r.Discard(int(extraLen)); err != nil {
			return
		}
		switch {
		case method == zip.Deflate:
			// flate reads a bufio.Reader byte by byte: it stops where the
			// deflated data does.
			if _, err := io.Copy(io.Discard, flate.NewReader(r)); err != nil {
				return
			}
		case flags&0x8 == 0:
			if _, err := r.Discard(int(csize)); err != nil {
				return
			}
		default:
			return // stored data of unknown length: cannot follow
		}
		if flags&0x8 != 0 {
			// Data descriptor: signature, CRC-32, sizes (32-bit; espmdm's
			// entries are far below 4 GiB).
			if _, err := r.Discard(16); err != nil {
				return
			}
		}
		z.onEntry(string(name))
	}
}

// progress is a bar on a terminal, nothing elsewhere.
type progress struct {
	w      io.Writer
	total  int
	n      int
	tty    bool
	began  time.Time
	shown  time.Time
	closed bool
}

func newProgress(w io.Writer, total int) *progress {
	p := &progress{w: w, total: total, began: time.Now()}
	if f, ok := w.(*os.File); ok {
		if fi, err := f.Stat(); err == nil && fi.Mode()&os.ModeCharDevice != 0 {
			p.tty = true
		}
	}
	p.draw()
	return p
}

func (p *progress) add() {
	p.n++
	if time.Since(p.shown) > 100*time.Millisecond || p.n == p.total {
		p.draw()
	}
}

func (p *progress) draw() {
	if !p.tty {
		return
	}
	p.shown = time.Now()
	const width = 30
	filled := width * p.n / max(p.total, 1)
	rate := float64(p.n) / max(time.Since(p.began).Seconds(), 0.001)
	fmt.Fprintf(p.w, "\r[%s%s] %d/%d devices  %.1f/s ", strings.Repeat("#", filled), strings.Repeat(".", width-filled), p.n, p.total, rate)
}

func (p *progress) done() {
	if p.tty && !p.closed {
		p.draw()
		fmt.Fprintln(p.w)
	}
	p.closed = true
}

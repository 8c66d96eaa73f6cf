package httpapi_test

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"time"

	"github.com/espmdm/espmdm/adapters/httpapi"
)

// Example serves the API on a loopback port and shuts it down gracefully.
// The app binds real implementations of the ports; this uses the test
// doubles of this package.
func Example() {
	cat := newFakeCatalog()
	srv, err := httpapi.New(httpapi.Config{FirmwareMaxBytes: 8 << 20}, httpapi.Deps{
		Models:       cat,
		Firmware:     cat,
		DeviceAdmin:  cat,
		Provisioning: cat,
		Identity:     cat,
		Devices:      &fakeDeviceAPI{cat: cat},
		Verifier:     newFakeVerifier(),
		ReadyChecks: []httpapi.ReadyCheck{
			{Name: "postgres", Check: func(context.Context) error { return nil }},
		},
	})
	if err != nil {
		panic(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		panic(err)
	}
	go func() { _ = srv.Serve(ln) }()

	for _, path := range []string{"/health/ready", "/api/device-models"} {
		resp, err := http.Get("http://" + ln.Addr().String() + path)
		if err != nil {
			panic(err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		fmt.Println(resp.StatusCode, resp.Header.Get("Content-Type"), len(body) > 0)
	}

	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	fmt.Println(srv.Shutdown(ctx))
	// Output:
	// 200 application/json true
	// 401 application/problem+json true
	// <nil>
}

package integration

import (
	"fmt"
	"net/http"
	"os"

	"go.uber.org/goleak"
)

// VerifyNoLeaks is for a TestMain after RunTests: when the tests passed
// (code 0) it fails the run (returns 1) if a goroutine outlived them,
// listing the goroutines on stderr; otherwise it returns code as it is.
//
//	func TestMain(m *testing.M) { os.Exit(integration.VerifyNoLeaks(integration.RunTests(m))) }
//
// Goroutines that belong to a library rather than to a test are not
// leaks: fasthttp's process-wide Date ticker and its worker-pool cleaner
// (which sleeps out its idle period after the server stops), and the
// keep-alive connections of http.DefaultTransport, which are closed first;
// nor is the processes launcher's spawner, which lives as long as the
// process on purpose (see spawn) once a test started a service (a broker of
// its own, say).
// goleak retries for about a second, so goroutines just finishing pass.
func VerifyNoLeaks(code int) int {
	if code != 0 {
		return code
	}
	http.DefaultClient.CloseIdleConnections()
	err := goleak.Find(
		goleak.IgnoreAnyFunction("github.com/valyala/fasthttp.updateServerDate.func1"),
		goleak.IgnoreAnyFunction("github.com/valyala/fasthttp.(*workerPool).Start.func2"),
		goleak.IgnoreAnyFunction("github.com/espmdm/espmdm/integration.spawn.func1.1"),
	)
	if err != nil {
		fmt.Fprintln(os.Stderr, "goleak:", err)
		return 1
	}
	return 0
}

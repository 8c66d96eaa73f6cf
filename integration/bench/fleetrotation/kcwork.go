package fleetrotation

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"net/http"
	"sort"
	"strconv"
	"strings"
)

// opsMetric is espmdm's counter of Keycloak Admin REST operations.
const opsMetric = "espmdm_keycloak_operations_total"

// keycloakOps reads espmdm's /metrics and returns the count of each
// Keycloak operation (by its op label, all results together).
func keycloakOps(ctx context.Context, c *api) (map[string]float64, error) {
	var body []byte
	if _, err := c.call(ctx, http.MethodGet, "/metrics", nil, &body, http.StatusOK); err != nil {
		return nil, err
	}
	ops := map[string]float64{}
	sc := bufio.NewScanner(bytes.NewReader(body))
	sc.Buffer(make([]byte, 0, 64*1024), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		if !strings.HasPrefix(line, opsMetric+"{") {
			continue
		}
		labels, value, ok := strings.Cut(line[len(opsMetric)+1:], "} ")
		if !ok {
			continue
		}
		n, err := strconv.ParseFloat(strings.TrimSpace(value), 64)
		if err != nil {
			return nil, fmt.Errorf("fleetrotation: /metrics: %q: %w", line, err)
		}
		op := ""
		for _, l := range strings.Split(labels, ",") {
			if k, v, ok := strings.Cut(l, "="); ok && k == "op" {
				op = strings.Trim(v, `"`)
			}
		}
		ops[op] += n
	}
	return ops, sc.Err()
}

// opsPerRotation formats after-before per rotation, busiest first.
func opsPerRotation(before, after map[string]float64, rotations int) (string, float64) {
	type kv struct {
		op string
		n  float64
	}
	var list []kv
	total := 0.0
	for op, n := range after {
		if d := n - before[op]; d > 0 {
			list = append(list, kv{op, d})
			total += d
		}
	}
	sort.Slice(list, func(i, j int) bool {
		return list[i].n > list[j].n || (list[i].n == list[j].n && list[i].op < list[j].op)
	})
	var b strings.Builder
	for i, e := range list {
		if i > 0 {
			b.WriteString(" ")
		}
		fmt.Fprintf(&b, "%s=%.2f", e.op, e.n/float64(max(rotations, 1)))
	}
	return b.String(), total / float64(max(rotations, 1))
}

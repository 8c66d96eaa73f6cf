package console

import (
	"crypto/sha256"
	"embed"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"mime"
	"net/url"
	"path"
	"strings"

	"github.com/gofiber/fiber/v2"
)

// DefaultClientID is the console's public OIDC client in the realm.
const DefaultClientID = "espmdm-console"

// Prefix is where the console is served.
const Prefix = "/console/"

//go:embed all:dist
var embedded embed.FS

// Config tells the console where users log in and which roles mean what.
type Config struct {
	// IssuerURL is the OIDC issuer (the Keycloak realm's URL).
	IssuerURL string
	// ClientID is the public PKCE client; default DefaultClientID.
	ClientID string
	// AdminRole and ViewerRole are the realm roles the API checks; the
	// console hides write controls from a user without AdminRole.
	AdminRole, ViewerRole string
	// Assets replaces the embedded build (tests); nil uses the embedded one.
	Assets fs.FS
}

// Handler serves the console. Create it with New.
type Handler struct {
	files     map[string]file // path under dist (e.g. "assets/index-3f2a.js")
	index     *file
	docs      *file
	config    []byte
	csp       string
	indexETag string
}

type file struct {
	body        []byte
	contentType string
}

// New reads the assets and prepares the answers. A build without
// index.html is no error: the console then says it is not built.
func New(cfg Config) (*Handler, error) {
	if cfg.ClientID == "" {
		cfg.ClientID = DefaultClientID
	}
	assets := cfg.Assets
	if assets == nil {
		sub, err := fs.Sub(embedded, "dist")
		if err != nil {
			return nil, err
		}
		assets = sub
	}
	issuer, err := url.Parse(cfg.IssuerURL)
	if err != nil || (issuer.Scheme != "http" && issuer.Scheme != "https") || issuer.Host == "" {
		return nil, fmt.Errorf("console: issuer URL %q is not an http(s) URL", cfg.IssuerURL)
	}
	h := &Handler{files: map[string]file{}}
	err = fs.WalkDir(assets, ".", func(p string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() || p == "PLACEHOLDER" {
			return err
		}
		b, err := fs.ReadFile(assets, p)
		if err != nil {
			return err
		}
		ct := mime.TypeByExtension(path.Ext(p))
		if ct == "" {
			ct = "application/octet-stream"
		}
		h.files[p] = file{body: b, contentType: ct}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("console: read assets: %w", err)
	}
	if f, ok := h.files["docs.html"]; ok {
		h.docs = &f
	}
	if f, ok := h.files["index.html"]; ok {
		h.index = &f
		sum := sha256.Sum256(f.body)
		h.indexETag = `"` + hex.EncodeToString(sum[:8]) + `"`
	}
	h.config, err = json.Marshal(map[string]string{
		"issuer": strings.TrimRight(cfg.IssuerURL, "/"), "client_id": cfg.ClientID,
		"admin_role": cfg.AdminRole, "viewer_role": cfg.ViewerRole,
	})
	if err != nil {
		return nil, err
	}
	h.csp = CSP(issuer.Scheme + "://" + issuer.Host)
	return h, nil
}

// CSP is the console's Content-Security-Policy: code and styles from
// espmdm only (no inline script, no eval), network calls to espmdm and the
// issuer (token endpoint), no frames, no plugins, no base-URI games.
func CSP(issuerOrigin string) string {
	return strings.Join([]string{
		"default-src 'none'",
		"script-src 'self'",
		"style-src 'self'",
		"img-src 'self' data:",
		"font-src 'self'",
		"connect-src 'self' " + issuerOrigin,
		"manifest-src 'self'",
		"form-action 'self'",
		"base-uri 'none'",
		"frame-ancestors 'none'",
		"object-src 'none'",
	}, "; ")
}

// Built reports whether the assets hold a built console.
func (h *Handler) Built() bool { return h.index != nil }

// Register adds the console's routes to r: "/" and "/console" redirect to
// "/console/", "/console/*" serves the app.
func (h *Handler) Register(r fiber.Router) {
	r.Get("/", h.redirect)
	r.Get("/console", h.redirect)
	r.Get(Prefix+"config.json", h.serveConfig)
	r.Get(Prefix+"*", h.serve)
}

func (h *Handler) redirect(c *fiber.Ctx) error {
	if p := c.Path(); p != "/" && p != "/console" {
		return c.Next() // a router without StrictRouting matches "/console/" here
	}
	return c.Redirect(Prefix, fiber.StatusFound)
}

func (h *Handler) headers(c *fiber.Ctx) {
	c.Set("Content-Security-Policy", h.csp)
	c.Set("X-Content-Type-Options", "nosniff")
	c.Set("Referrer-Policy", "no-referrer")
	c.Set("Cross-Origin-Opener-Policy", "same-origin")
}

func (h *Handler) serveConfig(c *fiber.Ctx) error {
	h.headers(c)
	c.Set(fiber.HeaderCacheControl, "no-cache")
	c.Set(fiber.HeaderContentType, fiber.MIMEApplicationJSON)
	return c.Send(h.config)
}

// errBadPath is a path that leaves the console's directory.
var errBadPath = errors.New("bad path")

func cleanPath(raw string) (string, error) {
	p, err := url.PathUnescape(raw)
	if err != nil {
		return "", errBadPath
	}
	if strings.Contains(p, "\\") || strings.Contains(p, "\x00") {
		return "", errBadPath
	}
	for _, seg := range strings.Split(p, "/") {
		if seg == ".." {
			return "", errBadPath
		}
	}
	return strings.TrimPrefix(path.Clean("/"+p), "/"), nil
}

func (h *Handler) serve(c *fiber.Ctx) error {
	h.headers(c)
	p, err := cleanPath(c.Params("*"))
	if err != nil {
		return h.notFound(c)
	}
	if f, ok := h.files[p]; ok && p != "index.html" && p != "docs.html" {
		if strings.HasPrefix(p, "assets/") {
			// Vite names every file under assets/ by its content hash.
			c.Set(fiber.HeaderCacheControl, "public, max-age=31536000, immutable")
		} else {
			c.Set(fiber.HeaderCacheControl, "no-cache")
		}
		c.Set(fiber.HeaderContentType, f.contentType)
		return c.Send(f.body)
	}
	// A path with an extension is a file that is not there; anything else
	// is one of the app's own routes (/console/devices/7), answered by the
	// app.
	if path.Ext(p) != "" && p != "index.html" && p != "docs.html" {
		return h.notFound(c)
	}
	if h.index == nil {
		return h.notBuilt(c)
	}
	c.Set(fiber.HeaderCacheControl, "no-cache")
	c.Set(fiber.HeaderETag, h.indexETag)
	if c.Get(fiber.HeaderIfNoneMatch) == h.indexETag {
		return c.SendStatus(fiber.StatusNotModified)
	}
	c.Set(fiber.HeaderContentType, fiber.MIMETextHTMLCharsetUTF8)
	return c.Send(h.index.body)
}

// DocsPage serves the interactive API documentation (Swagger UI, part of
// the console's build) for /api/docs; nil when the build has none, so the
// API's own page stays.
func (h *Handler) DocsPage() fiber.Handler {
	if h.docs == nil {
		return nil
	}
	return func(c *fiber.Ctx) error {
		h.headers(c)
		c.Set(fiber.HeaderCacheControl, "no-cache")
		c.Set(fiber.HeaderContentType, fiber.MIMETextHTMLCharsetUTF8)
		return c.Send(h.docs.body)
	}
}

func (h *Handler) notFound(c *fiber.Ctx) error {
	c.Set(fiber.HeaderCacheControl, "no-cache")
	c.Set(fiber.HeaderContentType, fiber.MIMETextPlainCharsetUTF8)
	return c.Status(fiber.StatusNotFound).SendString("not found\n")
}

const notBuiltPage = `<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>espmdm console not built</title></head>
<body><h1>The console is not built into this binary</h1>
<p>This espmdm was compiled without the console's web assets (a checkout that never ran the web build).
Build it with <code>make build</code> (or <code>make run</code>), which runs <code>npm ci &amp;&amp; npm run build</code>
in <code>adapters/console/web</code> before compiling espmdm.</p>
<p>The API works without it: see <a href="/api/docs">/api/docs</a>.</p></body></html>
`

func (h *Handler) notBuilt(c *fiber.Ctx) error {
	c.Set(fiber.HeaderCacheControl, "no-cache")
	c.Set(fiber.HeaderContentType, fiber.MIMETextHTMLCharsetUTF8)
	return c.Status(fiber.StatusServiceUnavailable).SendString(notBuiltPage)
}

// Package console is the driving adapter that serves the admin's web
// console (SPEC §11): a single-page app built with Vite from ./web into
// ./dist and embedded in the binary with go:embed.
//
// Routes (see Handler.Register): "/" redirects to "/console/"; files under
// "/console/assets/" carry a content hash in their name and are served
// immutable for a year; every other path under "/console/" is the app's
// index.html, never cached, so client-side routes survive a reload;
// "/console/config.json" tells the app where to log in. Every answer
// carries a strict Content-Security-Policy that allows scripts and styles
// from espmdm only and network calls to espmdm and the OIDC issuer.
//
// A checkout that never ran the web build has only dist/PLACEHOLDER: the
// binary still builds and "/console/" says how to build the console.
package console

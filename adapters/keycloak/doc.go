// Package keycloak is espmdm's adapter to Keycloak (tested with 26.7).
//
// Admin implements ports.IdentityProvider over the Keycloak Admin REST API
// (https://www.keycloak.org/docs-api/latest/rest-api/), authenticated as a
// service-account client that holds the realm-management roles
// manage-clients, view-clients and query-clients. Each device is a
// confidential client with a service account and no browser flows; the
// realm role of devices reaches their tokens through a hardcoded-role mapper
// (so no user role mapping, and no manage-users, is needed) and the device
// audience through an audience mapper.
//
// Verifier implements ports.TokenVerifier: it checks the realm's access
// tokens against its JWKS (RS256 and ES256 signing keys only).
//
// Both translate failures into the domain errors of core/model:
// model.ErrNotFound, model.ErrConflict, *model.UnavailableError (for
// network failures, timeouts, 5xx and rejected admin credentials) and
// model.ErrUnauthenticated. No error they return contains a secret or a
// token.
package keycloak

// Package keycloak is espmdm's adapter to Keycloak (tested with 26.7).
//
// Admin implements ports.IdentityProvider over the Keycloak Admin REST API
// (https://www.keycloak.org/docs-api/latest/rest-api/), authenticated as a
// service-account client that holds the realm-management roles
// manage-clients, view-clients and query-clients (and view-realm, which
// RotationPolicy needs to read the realm's client policies). Each device is
// a confidential client with a service account and no browser flows; the
// realm role of devices reaches their tokens through a hardcoded-role mapper
// (so no user role mapping, and no manage-users, is needed) and the device
// audience through an audience mapper.
//
// Secret rotation with a grace period uses Keycloak's client secret
// rotation (preview feature client-secret-rotation): under a client policy
// whose profile has a secret-rotation executor, "regenerate secret" keeps
// the old secret valid as the rotated one for the profile's
// rotated-expiration-period. Secrets reads both, InvalidateRotatedSecret
// ends the rotated one, SetSecret restores one secret as the only valid
// one, CoverClient applies the policies to a client made before them, and
// RotationPolicy reports whether the feature is on (from /admin/serverinfo)
// and which policy covers the device clients, with what is wrong.
//
// Verifier implements ports.TokenVerifier: it checks the realm's access
// tokens against its JWKS (RS256 and ES256 signing keys only).
//
// RealmSetup prepares a realm for espmdm, idempotently (`espmdm keycloak
// setup` and `espmdm dev` run it): the realm, its roles, the admin and
// operator service-account clients, the web console's client and users,
// and the secret-rotation profile and policy. It logs in as a realm
// administrator (admin-cli's password grant, or a service account) and
// shares Admin's transport: the token cache, the retries and the error
// translation; a failed login is a *LoginError.
//
// All three translate failures into the domain errors of core/model:
// model.ErrNotFound, model.ErrConflict, *model.UnavailableError (for
// network failures, timeouts, 5xx and rejected admin credentials) and
// model.ErrUnauthenticated. No error they return contains a secret or a
// token.
package keycloak

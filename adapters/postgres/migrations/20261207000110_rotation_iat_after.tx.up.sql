-- For a rotation whose new secret was generated in restore mode: a time by
-- the identity provider's own clock (whole seconds) by which the old secret
-- had stopped working. A device token issued in a later second proves the
-- new secret (the iat rule compares Keycloak's times with Keycloak's times,
-- not with espmdm's clock). NULL: no token can prove it (grace mode, or a
-- generation recorded before this column existed): only the ack confirms.
ALTER TABLE devices ADD COLUMN IF NOT EXISTS new_secret_iat_after timestamptz NULL;

-- The write-ahead intent of a generation (model.Device.GenerationIntentAt):
-- set and committed before espmdm asks the identity provider for a new
-- secret, cleared when the generation is recorded. Only an intent found
-- without its result (a crash or a lost commit) makes the next generation
-- step read the client to tell whether the generation happened.
ALTER TABLE devices ADD COLUMN IF NOT EXISTS generation_intent_at timestamptz NULL;
-- Whether the secret-rotation policy is known to cover the device's client
-- (model.Device.ClientCovered). Existing rows start unknown: their first
-- grace-mode generation (or the reconciler) checks and records it.
ALTER TABLE devices ADD COLUMN IF NOT EXISTS client_covered boolean NOT NULL DEFAULT false;

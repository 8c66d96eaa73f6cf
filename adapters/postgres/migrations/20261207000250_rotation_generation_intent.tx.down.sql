ALTER TABLE devices DROP COLUMN IF EXISTS client_covered;
ALTER TABLE devices DROP COLUMN IF EXISTS generation_intent_at;

ALTER TABLE devices DROP COLUMN IF EXISTS new_secret_iat_after;

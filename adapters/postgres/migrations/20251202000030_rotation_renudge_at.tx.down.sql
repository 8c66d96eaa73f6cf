ALTER TABLE devices DROP COLUMN IF EXISTS last_rotation_renudge_at;

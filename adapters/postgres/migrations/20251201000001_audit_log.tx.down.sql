DROP TABLE IF EXISTS audit_log;
DROP TABLE IF EXISTS rotation_schedule_expression;
DROP FUNCTION IF EXISTS audit_log_append_only();

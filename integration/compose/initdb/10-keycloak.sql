-- compose.yaml: Keycloak keeps its realm in a database of its own on the
-- same PostgreSQL server as espmdm (run once, when the volume is new).
CREATE DATABASE keycloak;

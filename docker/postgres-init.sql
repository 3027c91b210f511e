-- Runs once, as the superuser, when the postgres container creates its data
-- directory: the least-privilege replication role of README "Least-privilege
-- users", and the publication tidewater streams, made by the superuser
-- because FOR TABLES IN SCHEMA needs one (tables created later join it).
CREATE ROLE cdc WITH LOGIN REPLICATION PASSWORD 'cdc-example';
GRANT CONNECT ON DATABASE shop TO cdc;
GRANT USAGE ON SCHEMA public TO cdc;
GRANT SELECT ON ALL TABLES IN SCHEMA public TO cdc;
ALTER DEFAULT PRIVILEGES FOR ROLE postgres IN SCHEMA public GRANT SELECT ON TABLES TO cdc;
CREATE PUBLICATION tidewater_shop_pg FOR TABLES IN SCHEMA public
  WITH (publish_via_partition_root = true);

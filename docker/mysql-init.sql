-- The replication user of docker/compose.yaml: what tidewater needs on
-- MySQL 8, nothing more (RELOAD: the snapshot's brief FLUSH TABLES WITH READ
-- LOCK while its transaction starts and the binlog position is read).
CREATE USER IF NOT EXISTS 'cdc'@'%' IDENTIFIED BY 'cdc-example';
GRANT REPLICATION SLAVE, REPLICATION CLIENT, RELOAD ON *.* TO 'cdc'@'%';
GRANT SELECT ON shop.* TO 'cdc'@'%';

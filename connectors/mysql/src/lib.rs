//! MySQL and MariaDB binlog source.

pub mod charset;
pub mod event;
pub mod json;
pub mod rows;
pub mod tablemap;

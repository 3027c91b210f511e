//! MySQL and MariaDB binlog source: a consistent snapshot aligned with a
//! binlog position, then the binlog itself, decoded by our own row decoder
//! straight from the event bytes. See [`source`] for the flow.

mod catalog;
pub mod charset;
pub mod columnar;
mod error;
pub mod event;
pub mod json;
pub mod position;
mod preflight;
pub mod rows;
pub mod source;
mod statement;
pub mod tablemap;
mod value;

// TLS settings and the connection endpoint are every MySQL connection's
// (reverse ETL's too): they live in tidewater-endpoint, named here as before.
use tidewater_endpoint::mysql as tls;

pub use catalog::Flavor;
pub use error::MysqlError;
pub use position::BinlogPosition;
pub use source::{resumable_key, BinlogAcknowledger, MysqlConfig, MysqlSource, ZeroDates};

//! MySQL and MariaDB binlog source: a consistent snapshot aligned with a
//! binlog position, then the binlog itself, decoded by our own row decoder
//! straight from the event bytes. See [`source`] for the flow.

#[cfg(feature = "source")]
mod catalog;
pub mod charset;
#[cfg(feature = "source")]
mod error;
pub mod event;
pub mod json;
#[cfg(feature = "source")]
pub mod position;
#[cfg(feature = "source")]
mod preflight;
pub mod rows;
#[cfg(feature = "source")]
pub mod source;
pub mod tablemap;
#[cfg(feature = "source")]
mod value;

#[cfg(feature = "source")]
pub use catalog::Flavor;
#[cfg(feature = "source")]
pub use error::MysqlError;
#[cfg(feature = "source")]
pub use position::BinlogPosition;
#[cfg(feature = "source")]
pub use source::{MysqlConfig, MysqlSource, ZeroDates};

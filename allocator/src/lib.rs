//! tmp
#![deny(unsafe_op_in_unsafe_fn)]
pub mod util;
pub mod lock;
pub mod size_class;
pub mod config;
pub mod os;
pub mod pagemap;
pub mod span;
pub mod page_heap;

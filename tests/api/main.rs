//! Integration tests: the real server on port 0, real HTTP.

mod helpers;

mod abuse;
mod browser;
// Each of these needs a part of the product a build may leave out (the
// cargo features `tls`, `cli`, `redis`; all on by default).
#[cfg(feature = "tls")]
mod browser_tls;
#[cfg(feature = "cli")]
mod cli;
#[cfg(feature = "redis")]
mod cluster;
mod crowds;
mod durability;
mod external;
mod history;
mod hostile;
mod ops;
mod pages;
mod sending;
mod streaming;
#[cfg(feature = "tls")]
mod tls;

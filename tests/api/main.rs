//! Integration tests: the real server on port 0, real HTTP.

mod helpers;

mod abuse;
mod browser;
mod cli;
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

//! `ferry`, the controller: inventory and host patterns, fan-out to agents over mTLS, runbooks, and
//! the recap every fleet command ends with.

#[macro_use]
pub mod output;

pub mod catalog;
pub mod cli;
pub mod commands;
pub mod config;
pub mod dial;
pub mod fanout;
pub mod inventory;
pub mod keys;
pub mod pattern;
pub mod progress;
pub mod proof;
pub mod prune;
pub mod report;
pub mod runs;
pub mod schedule;
pub mod serve;
pub mod status;
pub mod store;

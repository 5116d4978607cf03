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
pub mod ops;
pub mod pattern;
pub mod process;
pub mod progress;
pub mod proof;
pub mod report;

pub mod schedule;
pub mod selection;
pub mod serve;
pub mod status;
pub mod store;
pub mod types;

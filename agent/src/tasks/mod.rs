//! What the controller may ask of a host, one typed task per module. Tasks use the host layer and know
//! nothing of the network.

pub mod api;
pub mod backup;
pub mod database;
pub mod drill;
pub mod facts;
pub mod ports;
pub mod reconnect;
pub mod restore;
pub mod units;

//! HTTP serving shared by every listener of the daemon and the agent: the
//! cache routes, the metrics endpoint, the admin socket and the agent's
//! exporter all accept and serve connections through [`serve::serve`].

pub mod fds;
pub mod serve;

pub use fds::raise_nofile;
pub use serve::{Listener, Settings, serve};

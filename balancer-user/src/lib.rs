//! balancer's control plane.
//!
//! Module map (dependencies point down the list, never up):
//!
//! - [`net`]: MAC addresses and address/word conversions;
//! - [`maglev`]: weighted Maglev ring construction;
//! - [`maps`]: typed handles on the BPF maps, each with a userspace shadow;
//! - [`dataplane`]: loading, attaching, pinning and adopting the XDP program;
//! - [`decap`]: the backend-side decapsulation program;
//! - [`lb`]: the one API that changes VIPs and backends.
#![deny(missing_docs)]

pub mod dataplane;
pub mod decap;
pub mod lb;
pub mod maglev;
pub mod maps;
pub mod net;

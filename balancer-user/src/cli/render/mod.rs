//! Renderers: one per view, each turning a reply into the exact text the
//! table output prints. JSON output mostly bypasses them: it is the reply
//! itself, serialized.

/// `writeln!` into a `String`, where writing cannot fail. Defined before the
/// `mod` lines so that every renderer sees it.
macro_rules! outln {
    ($out:expr) => {
        $out.push('\n')
    };
    ($out:expr, $($arg:tt)*) => {{
        use std::fmt::Write as _;
        let _ = writeln!($out, $($arg)*);
    }};
}

pub mod backends;
pub mod cache;
pub mod config;
pub mod routes;
pub mod stats;
pub mod status;
pub mod table;
pub mod vips;
pub mod weights;

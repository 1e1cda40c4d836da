//! The process's descriptor limit: every connection a listener holds costs
//! one, and the default soft limit (often 1,024) is far below what a
//! gateway's routes are configured to hold (`max_connections`).

/// Raises the soft `RLIMIT_NOFILE` to the hard limit, as Go's runtime and
/// nginx's `worker_rlimit_nofile` do; children inherit it. Returns the soft
/// limit now in force (unchanged if it cannot be read or raised).
pub fn raise_nofile() -> u64 {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: `lim` is a valid rlimit for the calls to fill and read.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) != 0 {
            return 1024;
        }
        if lim.rlim_cur < lim.rlim_max {
            let want = libc::rlimit {
                rlim_cur: lim.rlim_max,
                rlim_max: lim.rlim_max,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &want) == 0 {
                lim = want;
            }
        }
    }
    lim.rlim_cur
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_soft_limit_reaches_the_hard_limit() {
        let got = super::raise_nofile();
        let mut lim = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: as above.
        assert_eq!(unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) }, 0);
        assert_eq!((got, lim.rlim_cur), (lim.rlim_max, lim.rlim_max));
    }
}

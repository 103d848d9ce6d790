//! Process limits a program holding many sessions needs.

/// Lift the soft limit on open files to the hard one. Each initiator session holds three
/// descriptors (its socket twice, once registered for reading and once for writing, see
/// `sock`; and a timer, see [`crate::time`]), a target one socket per session and login in
/// progress: the default soft limit of 1024 would cap a daemon near 340 sessions and a
/// target near 1000, while the hard limit allows far more. Returns the soft limit now in
/// force, or None when it cannot be read.
pub fn raise_fd_limit() -> Option<u64> {
    let mut r = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit on this process with a valid, owned struct.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut r) != 0 {
            return None;
        }
        if r.rlim_cur < r.rlim_max {
            let want = libc::rlimit {
                rlim_cur: r.rlim_max,
                rlim_max: r.rlim_max,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &want) == 0 {
                r = want;
            }
        }
    }
    Some(r.rlim_cur)
}

/// An error from creating a descriptor, with `context` in front and, when the cause is
/// the open-file limit (EMFILE, or the system's ENFILE), what to do about it.
pub(crate) fn fd_error(context: &str, e: std::io::Error) -> std::io::Error {
    let hint = match e.raw_os_error() {
        Some(libc::EMFILE) | Some(libc::ENFILE) => {
            "; the open-file limit is reached: raise it (ulimit -n, LimitNOFILE=) or run \
             fewer sessions (each holds three descriptors)"
        }
        _ => "",
    };
    std::io::Error::new(e.kind(), format!("{context}: {e}{hint}"))
}

#[cfg(test)]
mod tests {
    #[test]
    fn descriptor_errors_name_the_step_and_the_limit() {
        let e = super::fd_error("cannot x", std::io::Error::from_raw_os_error(libc::EMFILE));
        let m = e.to_string();
        assert!(
            m.starts_with("cannot x: ") && m.contains("ulimit -n"),
            "{m}"
        );
        let e = super::fd_error("cannot y", std::io::Error::from_raw_os_error(libc::ENOMEM));
        let m = e.to_string();
        assert!(m.starts_with("cannot y: ") && !m.contains("ulimit"), "{m}");
    }

    #[test]
    fn the_soft_limit_ends_at_the_hard_one() {
        let soft = super::raise_fd_limit().expect("getrlimit");
        let mut r = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: getrlimit on this process with a valid, owned struct.
        assert_eq!(unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut r) }, 0);
        assert_eq!(soft, r.rlim_cur);
        assert_eq!(r.rlim_cur, r.rlim_max);
    }
}

//! Deadlines on tokio's I/O driver alone: a Linux `timerfd` per timer, so the initiator
//! runs on a runtime built without tokio's timer (`Builder::enable_io` only), as the
//! `oxiscsi` tools do, and works the same on one that has it.
//!
//! Why not `tokio::time`: while any tokio timer is armed, every park of the runtime walks
//! the timer wheel and reads the clock twice, and `epoll_wait` gets a timeout, which arms
//! a kernel hrtimer. A session always has a timer armed (its task check runs every
//! second), so at 4K QD1, one park per I/O, that cost ~9 % of the initiator's user-space
//! instructions and ~5 % of its kernel ones (perf stat A/B; BENCHMARKS.md says more). A timerfd costs a
//! system call when it is re-armed, which the connection driver does about once a second.
//!
//! Where there is no timerfd (other systems), the timer is tokio's `Sleep`, and the
//! runtime then needs tokio's timer; both are built and tested on Linux.
//!
//! Like tokio's own timers, these must be made on a tokio runtime, here one with the I/O
//! driver enabled (`enable_io`); they panic otherwise, as any tokio socket would.

use std::future::Future;
use std::io;
use std::pin::pin;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

#[cfg(any(target_os = "linux", target_os = "android"))]
pub(crate) use self::timerfd::Timer;
#[cfg(not(any(target_os = "linux", target_os = "android")))]
pub(crate) use self::wheel::Timer;

/// The deadline passed before the work finished.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Elapsed;

/// Wait until `at` (at once when it has passed). Fails only when no timer can be made
/// (out of file descriptors).
pub async fn sleep_until(at: Instant) -> io::Result<()> {
    let mut t = Timer::new()?;
    t.set(Some(at))?;
    std::future::poll_fn(|cx| t.poll_expired(cx)).await;
    Ok(())
}

/// Wait for `d`.
pub async fn sleep(d: Duration) -> io::Result<()> {
    sleep_until(Instant::now() + d).await
}

/// Run `fut` until `at`: its output, or [`Elapsed`] when the deadline came first. `fut`
/// is polled before the deadline is looked at, so work that is already done wins.
pub async fn timeout_at<F: Future>(at: Instant, fut: F) -> io::Result<Result<F::Output, Elapsed>> {
    let mut t = Timer::new()?;
    run_until(&mut t, at, fut).await
}

/// [`timeout_at`] on a timer the caller keeps for several steps (login's exchanges), so
/// each step costs one system call instead of five.
pub(crate) async fn run_until<F: Future>(
    t: &mut Timer,
    at: Instant,
    fut: F,
) -> io::Result<Result<F::Output, Elapsed>> {
    t.set(Some(at))?;
    let mut fut = pin!(fut);
    Ok(std::future::poll_fn(|cx| {
        if let Poll::Ready(v) = fut.as_mut().poll(cx) {
            return Poll::Ready(Ok(v));
        }
        t.poll_expired(cx).map(|()| Err(Elapsed))
    })
    .await)
}

/// A one-shot timer: what [`Timer`] does on every system.
pub(crate) trait OneShot: Sized {
    fn new() -> io::Result<Self>;
    /// Arm for `at`, or disarm (`None`). An expiry not yet seen is forgotten.
    fn set(&mut self, at: Option<Instant>) -> io::Result<()>;
    /// Ready once the armed time has passed (then disarmed until set again); Pending
    /// otherwise, with `cx`'s waker to be woken at expiry. Never Ready when disarmed.
    fn poll_expired(&mut self, cx: &mut Context<'_>) -> Poll<()>;
}

#[cfg(any(target_os = "linux", target_os = "android"))]
pub(crate) mod timerfd {
    use std::io;
    use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::{Arc, Mutex};
    use std::task::{Context, Poll, Wake, Waker};
    use std::time::Instant;

    use tokio::io::unix::AsyncFd;

    /// A new non-blocking one-shot timerfd on CLOCK_MONOTONIC (the clock `Instant` reads
    /// on Linux).
    pub(crate) fn create() -> io::Result<OwnedFd> {
        // SAFETY: timerfd_create takes no pointers; a non-negative result is a new fd
        // that nothing else owns.
        let raw = unsafe {
            libc::timerfd_create(
                libc::CLOCK_MONOTONIC,
                libc::TFD_NONBLOCK | libc::TFD_CLOEXEC,
            )
        };
        if raw < 0 {
            return Err(crate::limits::fd_error(
                "cannot create a timer (timerfd_create)",
                io::Error::last_os_error(),
            ));
        }
        // SAFETY: `raw` was just returned by timerfd_create and is owned by nobody else.
        Ok(unsafe { OwnedFd::from_raw_fd(raw) })
    }

    /// Set timerfd `fd` to expire at `at`, or disarm it.
    pub(crate) fn arm(fd: std::os::fd::RawFd, at: Option<Instant>) -> io::Result<()> {
        // Relative, from a clock read now: `Instant` is opaque, and this needs no
        // assumption about which clock it reads.
        let value = match at {
            // A zero it_value disarms, so a deadline already passed is 1 ns away.
            Some(at) => at
                .saturating_duration_since(Instant::now())
                .max(std::time::Duration::from_nanos(1)),
            None => std::time::Duration::ZERO,
        };
        let spec = libc::itimerspec {
            it_interval: libc::timespec {
                tv_sec: 0,
                tv_nsec: 0,
            },
            it_value: libc::timespec {
                tv_sec: libc::time_t::try_from(value.as_secs()).unwrap_or(libc::time_t::MAX),
                tv_nsec: value.subsec_nanos().into(),
            },
        };
        // SAFETY: `fd` is an open timerfd; `spec` is a valid itimerspec that outlives
        // the call; a null old_value is allowed.
        let rc = unsafe { libc::timerfd_settime(fd, 0, &spec, std::ptr::null_mut()) };
        if rc != 0 {
            return Err(io::Error::other(format!(
                "cannot set a timer (timerfd_settime): {}",
                io::Error::last_os_error()
            )));
        }
        Ok(())
    }

    /// A one-shot timerfd (CLOCK_MONOTONIC, the clock `Instant` reads on Linux)
    /// registered with tokio's I/O driver.
    ///
    /// The fd's readiness wakes [`Fired`], not the caller directly: it records the
    /// expiry in a flag and wakes the caller's waker. So a poll while the timer is
    /// pending is one atomic load, instead of a readiness check that takes the fd's
    /// waiter lock; the connection driver polls its timer on every wake-up (per I/O).
    pub(crate) struct Timer {
        fd: AsyncFd<OwnedFd>,
        fired: Arc<Fired>,
        /// `fired` as a waker, handed to the fd's readiness.
        waker: Waker,
        /// The caller's waker as last stored in `fired` (compared without its lock).
        caller: Option<Waker>,
        armed: bool,
    }

    struct Fired {
        flag: AtomicBool,
        caller: Mutex<Option<Waker>>,
    }

    impl Wake for Fired {
        fn wake(self: Arc<Self>) {
            self.wake_by_ref()
        }

        fn wake_by_ref(self: &Arc<Self>) {
            self.flag.store(true, Ordering::Release);
            let caller = self.caller.lock().unwrap_or_else(|e| e.into_inner());
            if let Some(w) = caller.as_ref() {
                w.wake_by_ref();
            }
        }
    }

    impl super::OneShot for Timer {
        fn new() -> io::Result<Timer> {
            let fd = create()?;
            let fired = Arc::new(Fired {
                flag: AtomicBool::new(false),
                caller: Mutex::new(None),
            });
            // SAFETY: the AsyncFd owns `fd`, so it stays open and the same for its whole
            // life.
            let fd = unsafe { AsyncFd::register_with_interest(fd, tokio::io::Interest::READABLE)? };
            Ok(Timer {
                fd,
                waker: Waker::from(fired.clone()),
                fired,
                caller: None,
                armed: false,
            })
        }

        fn set(&mut self, at: Option<Instant>) -> io::Result<()> {
            arm(self.fd.as_raw_fd(), at)?;
            // Setting the time resets the expiry count; a wake-up already recorded for
            // the old setting is looked at (and found empty) by the next poll.
            self.armed = at.is_some();
            if self.armed {
                self.fired.flag.store(true, Ordering::Release);
            }
            Ok(())
        }

        fn poll_expired(&mut self, cx: &mut Context<'_>) -> Poll<()> {
            if !self.armed {
                return Poll::Pending;
            }
            match &self.caller {
                Some(w) if w.will_wake(cx.waker()) => {}
                _ => {
                    let w = cx.waker().clone();
                    *self.fired.caller.lock().unwrap_or_else(|e| e.into_inner()) = Some(w.clone());
                    self.caller = Some(w);
                }
            }
            if !self.fired.flag.swap(false, Ordering::AcqRel) {
                return Poll::Pending;
            }
            // Woken (or just armed): read the expiry count, and register for the next
            // edge when there is none.
            let mut own = Context::from_waker(&self.waker);
            loop {
                let mut guard = match self.fd.poll_read_ready(&mut own) {
                    Poll::Pending => return Poll::Pending,
                    Poll::Ready(Ok(g)) => g,
                    // The I/O driver is gone (runtime shutting down): nothing will
                    // wake us again, so report the deadline as reached rather than hang.
                    Poll::Ready(Err(_)) => {
                        self.armed = false;
                        return Poll::Ready(());
                    }
                };
                let mut count = [0u8; 8];
                // SAFETY: reads at most 8 bytes into a local 8-byte array from our fd.
                let n = unsafe {
                    libc::read(self.fd.as_raw_fd(), count.as_mut_ptr().cast(), count.len())
                };
                if n == 8 {
                    guard.clear_ready();
                    self.armed = false;
                    return Poll::Ready(());
                }
                let e = io::Error::last_os_error();
                if n < 0 && e.kind() == io::ErrorKind::WouldBlock {
                    // Readiness left from an earlier setting: clear it and wait.
                    guard.clear_ready();
                    continue;
                }
                // Any other failure of a timerfd read is a broken fd: treat it as
                // expired so the caller's deadline logic runs instead of hanging.
                self.armed = false;
                return Poll::Ready(());
            }
        }
    }
}

/// tokio's timer behind the same interface, for systems without timerfd; compiled in
/// tests on Linux so it stays correct.
#[cfg(any(test, not(any(target_os = "linux", target_os = "android"))))]
mod wheel {
    use std::future::Future;
    use std::io;
    use std::pin::Pin;
    use std::task::{Context, Poll};
    use std::time::Instant;

    pub(crate) struct Timer {
        sleep: Option<Pin<Box<tokio::time::Sleep>>>,
    }

    impl super::OneShot for Timer {
        fn new() -> io::Result<Timer> {
            Ok(Timer { sleep: None })
        }

        fn set(&mut self, at: Option<Instant>) -> io::Result<()> {
            self.sleep = at.map(|at| Box::pin(tokio::time::sleep_until(at.into())));
            Ok(())
        }

        fn poll_expired(&mut self, cx: &mut Context<'_>) -> Poll<()> {
            let Some(s) = self.sleep.as_mut() else {
                return Poll::Pending;
            };
            let r = s.as_mut().poll(cx);
            if r.is_ready() {
                self.sleep = None;
            }
            r
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn fires_after<T: OneShot>(d: Duration) -> Duration {
        let mut t = T::new().expect("timer");
        let t0 = Instant::now();
        t.set(Some(t0 + d)).expect("set");
        std::future::poll_fn(|cx| t.poll_expired(cx)).await;
        t0.elapsed()
    }

    /// A deadline is never reported early, and is reported (not lost) when it passes.
    async fn contract<T: OneShot>() {
        let took = fires_after::<T>(Duration::from_millis(30)).await;
        assert!(took >= Duration::from_millis(30), "fired early: {took:?}");
        assert!(took < Duration::from_secs(5), "fired late: {took:?}");
        // Already passed: fires at once.
        let took = fires_after::<T>(Duration::ZERO).await;
        assert!(took < Duration::from_secs(1));

        let mut t = T::new().expect("timer");
        let noop = std::task::Waker::noop();
        let mut cx = Context::from_waker(noop);
        // Disarmed: never ready.
        assert!(t.poll_expired(&mut cx).is_pending());
        // Re-armed later before it fired: the first setting is forgotten.
        t.set(Some(Instant::now() + Duration::from_millis(20)))
            .expect("set");
        t.set(Some(Instant::now() + Duration::from_secs(3600)))
            .expect("set");
        tokio::time::sleep(Duration::from_millis(60)).await;
        assert!(t.poll_expired(&mut cx).is_pending(), "old setting fired");
        // Disarmed after arming: nothing fires.
        t.set(None).expect("set");
        assert!(t.poll_expired(&mut cx).is_pending());
        // Fired and seen once: pending (disarmed) after, until set again, then fires again.
        t.set(Some(Instant::now())).expect("set");
        std::future::poll_fn(|c| t.poll_expired(c)).await;
        assert!(t.poll_expired(&mut cx).is_pending());
        let t0 = Instant::now();
        t.set(Some(t0 + Duration::from_millis(10))).expect("set");
        std::future::poll_fn(|c| t.poll_expired(c)).await;
        assert!(t0.elapsed() >= Duration::from_millis(10));
    }

    #[tokio::test]
    async fn timerfd_keeps_the_contract() {
        contract::<timerfd::Timer>().await;
    }

    #[tokio::test]
    async fn tokio_timer_keeps_the_contract() {
        contract::<wheel::Timer>().await;
    }

    #[test]
    fn timerfd_needs_no_tokio_timer() {
        // The point of it: a runtime with only the I/O driver.
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_io()
            .build()
            .expect("runtime");
        rt.block_on(async {
            let t0 = Instant::now();
            sleep(Duration::from_millis(20)).await.expect("sleep");
            assert!(t0.elapsed() >= Duration::from_millis(20));
            let never = std::future::pending::<()>();
            let r = timeout_at(Instant::now() + Duration::from_millis(20), never)
                .await
                .expect("timer");
            assert_eq!(r, Err(Elapsed));
            let r = timeout_at(Instant::now(), async { 7 })
                .await
                .expect("timer");
            assert_eq!(r, Ok(7), "finished work wins over a passed deadline");
        });
    }

    #[tokio::test]
    async fn the_waker_given_last_is_woken() {
        // The connection driver's waker may change between polls; the expiry must wake
        // the current one.
        use std::sync::atomic::{AtomicUsize, Ordering};
        use std::sync::Arc;
        struct Count(AtomicUsize);
        impl std::task::Wake for Count {
            fn wake(self: Arc<Self>) {
                self.0.fetch_add(1, Ordering::SeqCst);
            }
        }
        let (a, b) = (
            Arc::new(Count(AtomicUsize::new(0))),
            Arc::new(Count(AtomicUsize::new(0))),
        );
        let (wa, wb) = (
            std::task::Waker::from(a.clone()),
            std::task::Waker::from(b.clone()),
        );
        let mut t = Timer::new().expect("timer");
        t.set(Some(Instant::now() + Duration::from_millis(20)))
            .expect("set");
        assert!(t.poll_expired(&mut Context::from_waker(&wa)).is_pending());
        assert!(t.poll_expired(&mut Context::from_waker(&wb)).is_pending());
        tokio::time::sleep(Duration::from_millis(80)).await;
        assert_eq!(a.0.load(Ordering::SeqCst), 0);
        assert_eq!(b.0.load(Ordering::SeqCst), 1);
        assert!(t.poll_expired(&mut Context::from_waker(&wb)).is_ready());
    }
}

//! Threads that call host code: subscription listeners and harnesses.
//!
//! A host runtime may end a thread while it is inside a callback. CPython does at interpreter
//! exit: once it is finalizing, a thread that asks for the GIL (returning from `sink.delta`,
//! waking from `time.sleep`) is ended with `pthread_exit`, which on glibc is a *forced unwind*.
//! That unwind must pass every frame up to the thread's start routine: a `catch_unwind` on the
//! way, including the one at the root of every `std::thread`, catches it and the process aborts
//! ("FATAL: exception not rethrown"). So a thread that calls host code is a plain pthread whose
//! start routine lets unwinding pass ([`spawn`]), and a callback is wrapped in `catch_unwind`
//! only when it is implemented in Rust ([`Origin::Rust`]), where a panic is the failure to
//! isolate. A callback that came through the bindings ([`Origin::Foreign`]) cannot panic into
//! Rust (the bindings turn every host exception into an error) and is called bare.
//!
//! Destructors run during a forced unwind, so a thread ended by its host still drops what it
//! holds: its end is observed through [`HostThread::wait`], never through a join, and every wait
//! on it is bounded by the caller.
//!
//! Nor may a library thread call into a runtime that is tearing itself down: a finalizing CPython
//! frees the code that foreign callbacks jump to, and a call (or the release of a foreign object)
//! from another thread then lands in freed memory. [`host_finalizing`] tells, without taking any
//! host lock; [`call`] refuses to start a foreign call then, and [`HostRef`] leaks a foreign object
//! rather than release it. Both concern only a process that is exiting.

use std::cell::RefCell;
use std::mem::ManuallyDrop;
use std::ops::Deref;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use crossbeam_channel::{Receiver, RecvTimeoutError};

use crate::harness::Cancel;

/// Where a callback object comes from, which decides how its thread may end.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Origin {
    /// Implemented in Rust: a panic is caught and reported as the callback's failure.
    Rust,
    /// Passed in through the bindings: its runtime may end the thread (a forced unwind), which
    /// must not be caught.
    Foreign,
}

/// Why a callback did not return a value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Unreturned {
    /// A callback written in Rust panicked.
    Panicked,
    /// The callback's runtime is finalizing; it was not called.
    HostExiting,
}

/// Calls a callback of the given origin.
pub(crate) fn call<T>(origin: Origin, callback: impl FnOnce() -> T) -> Result<T, Unreturned> {
    match origin {
        Origin::Rust => catch_unwind(AssertUnwindSafe(callback)).map_err(|_| Unreturned::Panicked),
        Origin::Foreign if host_finalizing() => Err(Unreturned::HostExiting),
        Origin::Foreign => Ok(callback()),
    }
}

/// A callback object shared with the library's threads. A foreign one whose runtime is
/// finalizing is leaked when dropped, since releasing it would call into torn-down code.
pub(crate) struct HostRef<T: ?Sized> {
    object: ManuallyDrop<Arc<T>>,
    pub origin: Origin,
}

impl<T: ?Sized> HostRef<T> {
    pub fn new(object: Arc<T>, origin: Origin) -> Self {
        Self {
            object: ManuallyDrop::new(object),
            origin,
        }
    }
}

impl<T: ?Sized> Clone for HostRef<T> {
    fn clone(&self) -> Self {
        Self::new(Arc::clone(&self.object), self.origin)
    }
}

impl<T: ?Sized> Deref for HostRef<T> {
    type Target = Arc<T>;

    fn deref(&self) -> &Arc<T> {
        &self.object
    }
}

impl<T: ?Sized> Drop for HostRef<T> {
    fn drop(&mut self) {
        if self.origin == Origin::Foreign && host_finalizing() {
            return;
        }
        // SAFETY: `object` is dropped here once and never used again.
        unsafe { ManuallyDrop::drop(&mut self.object) }
    }
}

/// Whether the host's runtime is tearing itself down (today: CPython finalizing; there is no
/// such state to ask Swift, Kotlin or a Rust host about). Reads an atomic flag of the
/// interpreter's, found once by symbol name in the process, so it is safe on any thread.
pub(crate) fn host_finalizing() -> bool {
    type Probe = unsafe extern "C" fn() -> libc::c_int;
    static PROBE: OnceLock<Option<Probe>> = OnceLock::new();
    let probe = PROBE.get_or_init(|| {
        // The public name from Python 3.13, the private one before.
        [c"Py_IsFinalizing", c"_Py_IsFinalizing"]
            .into_iter()
            .find_map(|name| {
                // SAFETY: dlsym with a NUL-terminated name only looks the symbol up.
                let symbol = unsafe { libc::dlsym(libc::RTLD_DEFAULT, name.as_ptr()) };
                // SAFETY: both functions take nothing and return an int in every CPython that
                // exports them.
                (!symbol.is_null())
                    .then(|| unsafe { std::mem::transmute::<*mut libc::c_void, Probe>(symbol) })
            })
    });
    // SAFETY: the probe reads the runtime's finalizing flag atomically and needs no GIL.
    probe.is_some_and(|probe| unsafe { probe() } != 0)
}

/// Stack size of a host thread: std's default for spawned threads, which callbacks written for
/// std threads expect (a detached pthread's default is 512 KiB on Apple platforms).
const STACK_BYTES: usize = 2 << 20;

/// A running (or ended) host thread.
pub(crate) struct HostThread {
    /// Disconnects when the thread's body returns or is unwound.
    ended: Receiver<()>,
    thread: libc::pthread_t,
}

impl HostThread {
    /// Waits until the thread has ended; false when `timeout` passed first.
    pub fn wait(&self, timeout: Duration) -> bool {
        matches!(
            self.ended.recv_timeout(timeout),
            Err(RecvTimeoutError::Disconnected)
        )
    }

    /// Whether the calling thread is this thread (and it is still running).
    pub fn is_current(&self) -> bool {
        let ended = matches!(
            self.ended.try_recv(),
            Err(crossbeam_channel::TryRecvError::Disconnected)
        );
        // SAFETY: pthread_equal compares two thread ids and touches no memory; an ended thread's
        // id may be reused, which the check above excludes.
        !ended && unsafe { libc::pthread_equal(self.thread, libc::pthread_self()) != 0 }
    }
}

type Body = Box<dyn FnOnce() + Send + 'static>;

/// Starts a detached thread named `name` that runs `body` and lets a forced unwind end it.
/// Fails when the process or thread limit is reached.
pub(crate) fn spawn(
    name: &str,
    body: impl FnOnce() + Send + 'static,
) -> std::io::Result<HostThread> {
    let (ended_tx, ended) = crossbeam_channel::bounded::<()>(0);
    let name = std::ffi::CString::new(name).unwrap_or_default();
    let body: Body = Box::new(move || {
        // Dropped when the body returns or unwinds: either way the thread has ended.
        let _ended = ended_tx;
        set_thread_name(&name);
        body();
    });
    let start = Box::into_raw(Box::new(body));
    // SAFETY: `attr` is initialised before use and destroyed after; `start` is a leaked box that
    // the new thread takes back exactly once, or that is reclaimed here when creation fails.
    // `run` has the C calling convention `pthread_create` expects; it is declared "C-unwind" so
    // that a forced unwind may leave it, which the C ABI is otherwise free to forbid.
    unsafe {
        let mut attr: libc::pthread_attr_t = std::mem::zeroed();
        let mut result = libc::pthread_attr_init(&mut attr);
        if result == 0 {
            result = libc::pthread_attr_setdetachstate(&mut attr, libc::PTHREAD_CREATE_DETACHED);
        }
        if result == 0 {
            result = libc::pthread_attr_setstacksize(&mut attr, STACK_BYTES);
        }
        let mut thread: libc::pthread_t = std::mem::zeroed();
        if result == 0 {
            let run: extern "C-unwind" fn(*mut libc::c_void) -> *mut libc::c_void = run;
            let run: extern "C" fn(*mut libc::c_void) -> *mut libc::c_void =
                std::mem::transmute(run);
            result = libc::pthread_create(&mut thread, &attr, run, start.cast());
        }
        libc::pthread_attr_destroy(&mut attr);
        if result != 0 {
            drop(Box::from_raw(start));
            return Err(std::io::Error::from_raw_os_error(result));
        }
        Ok(HostThread { ended, thread })
    }
}

extern "C-unwind" fn run(start: *mut libc::c_void) -> *mut libc::c_void {
    // SAFETY: `spawn` passes a leaked `Box<Body>` and nothing else reads it.
    let body = unsafe { Box::from_raw(start.cast::<Body>()) };
    body();
    std::ptr::null_mut()
}

fn set_thread_name(name: &std::ffi::CStr) {
    // Linux limits a thread name to 15 bytes; longer names are refused, so they are cut.
    #[cfg(any(target_os = "linux", target_os = "android"))]
    {
        let bytes = name.to_bytes();
        let cut = std::ffi::CString::new(&bytes[..bytes.len().min(15)]).unwrap_or_default();
        // SAFETY: a NUL-terminated string of at most 16 bytes for the calling thread.
        unsafe {
            libc::pthread_setname_np(libc::pthread_self(), cut.as_ptr());
        }
    }
    #[cfg(target_vendor = "apple")]
    // SAFETY: a NUL-terminated string; Apple's variant names the calling thread.
    unsafe {
        libc::pthread_setname_np(name.as_ptr());
    }
    #[cfg(not(any(target_os = "linux", target_os = "android", target_vendor = "apple")))]
    let _ = name;
}

thread_local! {
    /// On a harness's thread: the signal that tells its supervisor to stop waiting for it.
    static RELEASE_RUN: RefCell<Option<Arc<Cancel>>> = const { RefCell::new(None) };
}

/// Marks the calling thread as the thread of a harness run whose supervisor waits on `release`.
pub(crate) fn enter_run(release: Arc<Cancel>) {
    RELEASE_RUN.with(|slot| *slot.borrow_mut() = Some(release));
}

/// Called on a thread that is about to wait for the store to close: when it is a harness's own
/// thread, its supervisor stops waiting for the harness to return (it cannot return before the
/// wait ends).
pub(crate) fn release_current_run() {
    RELEASE_RUN.with(|slot| {
        if let Some(release) = slot.borrow().as_ref() {
            release.cancel();
        }
    });
}

//! Ctrl-C / SIGTERM / SIGHUP: a dedicated thread waits for them, sets a
//! flag and runs registered hooks (stop the VMM), so the main thread unwinds
//! normally and removes what it created.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use nix::sys::signal::{SigSet, Signal};

type Hook = Box<dyn Fn() + Send>;

/// Shared cancellation state.
#[derive(Clone, Default)]
pub struct Cancel {
    flag: Arc<AtomicBool>,
    hooks: Arc<Mutex<Vec<(u64, Hook)>>>,
    next_id: Arc<AtomicU64>,
}

/// Removes its hook when dropped.
pub struct HookGuard {
    cancel: Cancel,
    id: u64,
}

impl Drop for HookGuard {
    fn drop(&mut self) {
        if let Ok(mut hooks) = self.cancel.hooks.lock() {
            hooks.retain(|(id, _)| *id != self.id);
        }
    }
}

fn signals() -> SigSet {
    let mut set = SigSet::empty();
    set.add(Signal::SIGINT);
    set.add(Signal::SIGTERM);
    set.add(Signal::SIGHUP);
    set
}

impl Cancel {
    /// Blocks SIGINT/SIGTERM/SIGHUP in the calling thread (call it before
    /// starting other threads, so they inherit the mask) and starts the thread
    /// that waits for them. Child processes get a clean mask from std.
    pub fn install() -> std::io::Result<Self> {
        let cancel = Cancel::default();
        signals().thread_block().map_err(std::io::Error::from)?;
        let waiter = cancel.clone();
        std::thread::Builder::new()
            .name("voidbox-signals".into())
            .spawn(move || loop {
                if signals().wait().is_ok() {
                    waiter.cancel();
                }
            })?;
        Ok(cancel)
    }

    /// Marks the run cancelled and runs the hooks.
    pub fn cancel(&self) {
        self.flag.store(true, Ordering::SeqCst);
        if let Ok(hooks) = self.hooks.lock() {
            for (_, hook) in hooks.iter() {
                hook();
            }
        }
    }

    /// Whether a cancel signal arrived.
    pub fn is_cancelled(&self) -> bool {
        self.flag.load(Ordering::SeqCst)
    }

    /// Runs `hook` on cancel (at once if already cancelled) until the guard
    /// is dropped.
    pub fn on_cancel(&self, hook: impl Fn() + Send + 'static) -> HookGuard {
        let id = self.next_id.fetch_add(1, Ordering::SeqCst);
        if self.is_cancelled() {
            hook();
        }
        if let Ok(mut hooks) = self.hooks.lock() {
            hooks.push((id, Box::new(hook)));
        }
        HookGuard {
            cancel: self.clone(),
            id,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;

    #[test]
    fn hooks_run_until_dropped() {
        let c = Cancel::default();
        let hits = Arc::new(AtomicUsize::new(0));
        let h = hits.clone();
        let guard = c.on_cancel(move || {
            h.fetch_add(1, Ordering::SeqCst);
        });
        c.cancel();
        assert!(c.is_cancelled());
        assert_eq!(hits.load(Ordering::SeqCst), 1);
        drop(guard);
        c.cancel();
        assert_eq!(hits.load(Ordering::SeqCst), 1);
    }
}

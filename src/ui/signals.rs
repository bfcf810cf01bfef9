//! SIGTERM, SIGHUP and SIGINT end a run the way `q` does: the terminal restored, every finished
//! step on disk, then the usual exit status 128 + N. The signal becomes an [`Interrupted`]
//! error, which `main` turns into that status.

use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;

/// The signals handled.
pub const SIGNALS: [i32; 3] = [SIGTERM, SIGHUP, SIGINT];

/// A run ended by a signal.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Interrupted {
    pub signal: i32,
}

impl Interrupted {
    /// The shell's status for a process ended by the signal.
    pub fn exit_code(self) -> u8 {
        (128 + self.signal).clamp(0, 255) as u8
    }

    pub fn name(self) -> &'static str {
        match self.signal {
            SIGTERM => "SIGTERM",
            SIGHUP => "SIGHUP",
            SIGINT => "SIGINT",
            _ => "a signal",
        }
    }
}

impl std::fmt::Display for Interrupted {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "interrupted by {}", self.name())
    }
}

impl std::error::Error for Interrupted {}

/// A flag set by the first of the signals (headless loops check it between steps); a second
/// one ends the process at once with its status.
pub struct SignalFlag {
    hit: Arc<AtomicUsize>,
}

impl SignalFlag {
    pub fn install() -> anyhow::Result<SignalFlag> {
        use anyhow::Context;
        let hit = Arc::new(AtomicUsize::new(0));
        let armed = Arc::new(AtomicBool::new(false));
        for sig in SIGNALS {
            // Registered first, so it sees `armed` as the previous signal left it.
            signal_hook::flag::register_conditional_shutdown(sig, 128 + sig, armed.clone())
                .and_then(|_| signal_hook::flag::register_usize(sig, hit.clone(), sig as usize))
                .and_then(|_| signal_hook::flag::register(sig, armed.clone()))
                .context("installing the signal handlers")?;
        }
        Ok(SignalFlag { hit })
    }

    /// The signal that arrived, if one did.
    pub fn get(&self) -> Option<Interrupted> {
        match self.hit.load(Ordering::SeqCst) {
            0 => None,
            s => Some(Interrupted { signal: s as i32 }),
        }
    }
}

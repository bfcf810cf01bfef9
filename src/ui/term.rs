//! The terminal: entering and restoring it (also on panic and on error) and the async loop that
//! turns key, mouse and source events into App updates and frames.

use super::app::App;
use super::source::{SourceHandle, SOURCE_THREAD};
use anyhow::{bail, Context, Result};
use crossterm::event::{DisableMouseCapture, EnableMouseCapture, Event, EventStream, KeyEventKind};
use futures::StreamExt;
use ratatui::DefaultTerminal;
use std::io::IsTerminal;
use std::time::Duration;

/// Frames are drawn at most this often while records stream in; keys redraw at once.
const FRAME: Duration = Duration::from_millis(33);
/// Records taken from the channel per wake-up before drawing again.
const DRAIN: usize = 256;

/// Restores the terminal when dropped: on return, on error and while unwinding.
struct Guard;

impl Drop for Guard {
    fn drop(&mut self) {
        // While unwinding, the panic hook has restored the terminal already; leaving the
        // alternate screen twice would move the cursor back over the panic message.
        if std::thread::panicking() {
            return;
        }
        let _ = crossterm::execute!(std::io::stdout(), DisableMouseCapture);
        ratatui::restore();
        // Back to the default hook: the terminal is ours no more.
        let _ = std::panic::take_hook();
    }
}

/// Refuses to start without a terminal, before any engine is built.
pub fn require_terminal() -> Result<()> {
    if !std::io::stdout().is_terminal() {
        bail!("the TUI needs a terminal on stdout; use --headless for JSON lines");
    }
    Ok(())
}

fn enter() -> Result<(DefaultTerminal, Guard)> {
    require_terminal()?;
    // ratatui's hook restores the terminal before printing; ours also releases the mouse and
    // keeps panics of the source thread off the screen (that thread reports them as errors).
    // The guard first: a half-done setup (raw mode on, alternate screen refused) is undone too.
    let guard = Guard;
    let terminal = ratatui::try_init().context("setting up the terminal")?;
    let ratatui_hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        if std::thread::current().name() == Some(SOURCE_THREAD) {
            super::source::keep_source_panic(info.to_string());
            return;
        }
        let _ = crossterm::execute!(std::io::stdout(), DisableMouseCapture);
        ratatui_hook(info);
    }));
    crossterm::execute!(std::io::stdout(), EnableMouseCapture).context("enabling the mouse")?;
    Ok((terminal, guard))
}

/// Runs the App on a source until it quits; the terminal is restored on every way out.
pub fn run(mut app: App, mut source: SourceHandle) -> Result<()> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the UI runtime")?;
    let (signals, stop_signals) = signal_stream()?;
    let result = {
        let (mut terminal, _guard) = enter()?;
        rt.block_on(event_loop(&mut terminal, &mut app, &mut source, signals))
    };
    stop_signals.close();
    // The source thread ends on Quit or when its channel closes; a GPU step in flight finishes
    // on its own, so it is not joined.
    source.send(vec![super::source::Command::Quit]);
    result?;
    if let Some(e) = app.fatal {
        bail!("{e}");
    }
    if let Some(e) = app.engine_error {
        bail!("the engine stopped: {e}");
    }
    Ok(())
}

/// SIGTERM, SIGHUP and SIGINT as a stream for the loop (a thread forwards them): the loop ends
/// with `Interrupted`, and the guard restores the terminal on the way out.
fn signal_stream() -> Result<(
    tokio::sync::mpsc::UnboundedReceiver<i32>,
    signal_hook::iterator::Handle,
)> {
    let mut signals = signal_hook::iterator::Signals::new(super::signals::SIGNALS)
        .context("installing the signal handlers")?;
    let handle = signals.handle();
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    std::thread::Builder::new()
        .name("moescope-signals".into())
        .spawn(move || {
            for sig in signals.forever() {
                if tx.send(sig).is_err() {
                    break;
                }
            }
        })
        .context("starting the signal thread")?;
    Ok((rx, handle))
}

async fn event_loop(
    terminal: &mut DefaultTerminal,
    app: &mut App,
    source: &mut SourceHandle,
    mut signals: tokio::sync::mpsc::UnboundedReceiver<i32>,
) -> Result<()> {
    let mut input = EventStream::new();
    let mut frame = tokio::time::interval(FRAME);
    frame.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let mut dirty = true;
    let mut stale = false;
    let mut source_open = true;
    loop {
        if dirty {
            terminal
                .draw(|f| super::views::draw(f, app))
                .context("drawing the terminal")?;
            dirty = false;
            stale = false;
        }
        if app.quit {
            return Ok(());
        }
        tokio::select! {
            ev = input.next() => match ev {
                Some(Ok(Event::Key(key))) if key.kind != KeyEventKind::Release => {
                    source.send(app.handle_key(key));
                    dirty = true;
                }
                Some(Ok(Event::Mouse(m))) => {
                    source.send(app.handle_mouse(m));
                    dirty = true;
                }
                Some(Ok(Event::Resize(..))) => dirty = true,
                Some(Ok(_)) => {}
                Some(Err(e)) => return Err(e).context("reading terminal input"),
                None => return Ok(()),
            },
            ev = source.events.recv(), if source_open => {
                match ev {
                    Some(ev) => {
                        app.on_event(ev);
                        for _ in 0..DRAIN {
                            match source.events.try_recv() {
                                Ok(ev) => app.on_event(ev),
                                Err(_) => break,
                            }
                        }
                    }
                    None => source_open = false,
                }
                stale = true;
                // Ending (a failed start) should not wait for the next frame tick.
                dirty = app.quit;
            },
            Some(signal) = signals.recv() => {
                return Err(super::signals::Interrupted { signal }.into());
            }
            _ = frame.tick() => dirty = stale,
        }
    }
}

//! Log lines, written by their own host thread: a handler must not block,
//! and a write to a slow console (the service VM's serial port) can.

use std::fmt;
use std::io::{self, Write};
use std::sync::mpsc::{self, Sender};
use std::thread;
use std::time::Duration;

enum Msg {
    Line(String),
    Flush(mpsc::SyncSender<()>),
}

/// A handle on the log thread; cheap to clone, never blocks on output.
#[derive(Clone, Debug)]
pub struct Log {
    tx: Sender<Msg>,
}

impl Log {
    /// Lines go to `sink`, in order, on a thread of their own.
    pub fn new(mut sink: impl FnMut(&str) + Send + 'static) -> io::Result<Log> {
        let (tx, rx) = mpsc::channel::<Msg>();
        thread::Builder::new()
            .name("vigil-log".into())
            .spawn(move || {
                for m in rx {
                    match m {
                        Msg::Line(l) => sink(&l),
                        Msg::Flush(ack) => {
                            let _ = ack.send(());
                        }
                    }
                }
            })?;
        Ok(Log { tx })
    }

    /// Lines to stderr, prefixed `vigil-service: `.
    pub fn stderr() -> io::Result<Log> {
        Log::new(|l| {
            let _ = writeln!(io::stderr().lock(), "vigil-service: {l}");
        })
    }

    /// Queues one line.
    pub fn line(&self, args: fmt::Arguments<'_>) {
        let _ = self.tx.send(Msg::Line(args.to_string()));
    }

    /// Waits (at most 10 s: a hostile client can queue many refusals for
    /// a slow serial console) until every line queued so far is out.
    pub fn flush(&self) {
        let (ack, done) = mpsc::sync_channel(1);
        if self.tx.send(Msg::Flush(ack)).is_ok() {
            let _ = done.recv_timeout(Duration::from_secs(10));
        }
    }
}

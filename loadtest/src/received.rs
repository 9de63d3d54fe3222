//! `--received-out FILE`: one JSON line per command the gateway acknowledged with `received`,
//! in the format the audit reads (`audit --received FILE`, engine/src/audit/received.rs):
//!
//! ```text
//! {"order_id":5348024557502465,"pair":"BTC-EUR","kind":"place"}
//! ```
//!
//! `order_id` is the one `received` names: the new order's (place), or the order the cancel or
//! amend names. The command's own id is not in the answer, so no line has a `command_id`. The
//! audit then looks for each command's verdict in `events`, also for those whose verdict the
//! generator never saw because its connection dropped first.
//!
//! The connections' readers hand each acknowledgement to one writer task over a bounded
//! channel ([`QUEUE_MAX`]). When it is full a reader waits (policy: block): a line is never
//! dropped, since a missing line is a command the audit never checks. The writer writes what
//! it holds whenever the channel runs empty (a `write`, never an `fsync`), so the file trails
//! the acknowledgements by a moment at most, even when the generator is killed; it flushes at
//! the end.

use std::path::{Path, PathBuf};

use protocol::CommandKind;
use serde::Serialize;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

/// Acknowledgements waiting for the writer; beyond it, readers wait.
pub const QUEUE_MAX: usize = 65_536;
/// Acknowledgements the writer takes from the channel at once.
const BATCH_MAX: usize = 4_096;
const FILE_BUFFER_BYTES: usize = 256 * 1024;

/// One acknowledged command, as a connection's reader saw it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Receipt {
    /// The `order_id` of the `received` answer, or else the order the command named; `None`
    /// for a place whose answer named none (no gateway of this API does that).
    pub order_id: Option<u64>,
    /// Index into the market's pairs.
    pub pair: usize,
    pub kind: CommandKind,
}

#[derive(Serialize)]
struct Line<'a> {
    order_id: u64,
    pair: &'a str,
    kind: CommandKind,
}

/// Appends the receipt's line (with its newline) to `out`; false, and nothing written, when it
/// names no order (the audit needs one) or an unknown pair.
pub fn write_line(out: &mut Vec<u8>, receipt: &Receipt, symbols: &[String]) -> bool {
    let (Some(order_id), Some(pair)) = (receipt.order_id, symbols.get(receipt.pair)) else {
        return false;
    };
    let line = Line {
        order_id,
        pair,
        kind: receipt.kind,
    };
    serde_json::to_writer(&mut *out, &line).expect("a line serializes into memory");
    out.push(b'\n');
    true
}

/// What the file holds at the end (`received_out` in `report.json`).
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Written {
    pub path: String,
    pub lines: u64,
    /// Acknowledgements left out because they named no order (0 against this API's gateway).
    pub without_order_id: u64,
}

#[derive(Debug, thiserror::Error)]
#[error("writing the received commands to {path}: {source}")]
pub struct ReceivedError {
    pub path: String,
    #[source]
    pub source: std::io::Error,
}

/// A connection's handle to the writer.
#[derive(Debug, Clone)]
pub struct ReceivedTx(mpsc::Sender<Receipt>);

impl ReceivedTx {
    /// Queues one acknowledgement, waiting while the channel is full. After the writer failed
    /// the receipt is dropped: the run then ends with the writer's error.
    pub async fn send(&self, receipt: Receipt) {
        let _ = self.0.send(receipt).await;
    }
}

/// The file and its writer task.
#[derive(Debug)]
pub struct ReceivedLog {
    tx: ReceivedTx,
    stop: oneshot::Sender<()>,
    task: JoinHandle<Result<Written, std::io::Error>>,
    path: PathBuf,
}

impl ReceivedLog {
    /// Creates (truncates) the file now, so that a bad path fails before any load, and starts
    /// the writer. `symbols`: the market's pair symbols, by index.
    pub fn create(path: &Path, symbols: Vec<String>) -> Result<ReceivedLog, ReceivedError> {
        let file = std::fs::File::create(path).map_err(|source| ReceivedError {
            path: path.display().to_string(),
            source,
        })?;
        let (tx, rx) = mpsc::channel(QUEUE_MAX);
        let (stop, stopped) = oneshot::channel();
        let out = std::io::BufWriter::with_capacity(FILE_BUFFER_BYTES, file);
        let written = Written {
            path: path.display().to_string(),
            ..Written::default()
        };
        let task = tokio::spawn(write_all(rx, stopped, out, symbols, written));
        Ok(ReceivedLog {
            tx: ReceivedTx(tx),
            stop,
            task,
            path: path.to_owned(),
        })
    }

    pub fn sender(&self) -> ReceivedTx {
        self.tx.clone()
    }

    /// Writes what is queued, flushes, and says what the file holds. Call it once no connection
    /// reads any more: whatever is queued then is written, anything sent later is not.
    pub async fn finish(self) -> Result<Written, ReceivedError> {
        let fail = |source| ReceivedError {
            path: self.path.display().to_string(),
            source,
        };
        drop(self.tx);
        let _ = self.stop.send(());
        match self.task.await {
            Ok(result) => result.map_err(fail),
            Err(e) => Err(fail(std::io::Error::other(e.to_string()))),
        }
    }
}

/// The writer task: batches from the channel into the file, written out whenever the channel
/// runs empty; on `stop` the channel closes and what it still holds is written.
async fn write_all(
    mut rx: mpsc::Receiver<Receipt>,
    mut stop: oneshot::Receiver<()>,
    mut out: impl std::io::Write,
    symbols: Vec<String>,
    mut written: Written,
) -> Result<Written, std::io::Error> {
    let mut batch = Vec::with_capacity(BATCH_MAX);
    let mut text = Vec::with_capacity(BATCH_MAX * 64);
    let mut stopping = false;
    loop {
        let n = if stopping {
            rx.recv_many(&mut batch, BATCH_MAX).await
        } else {
            tokio::select! {
                n = rx.recv_many(&mut batch, BATCH_MAX) => n,
                _ = &mut stop => {
                    // No new receipts; those queued are still received, then `None`.
                    rx.close();
                    stopping = true;
                    continue;
                }
            }
        };
        if n == 0 {
            break;
        }
        for receipt in batch.drain(..) {
            if write_line(&mut text, &receipt, &symbols) {
                written.lines += 1;
            } else {
                written.without_order_id += 1;
            }
        }
        out.write_all(&text)?;
        text.clear();
        if rx.is_empty() {
            out.flush()?;
        }
    }
    out.flush()?;
    Ok(written)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn symbols() -> Vec<String> {
        vec!["BTC-EUR".into(), "ETH-EUR".into()]
    }

    fn line(receipt: Receipt) -> Option<String> {
        let mut out = Vec::new();
        write_line(&mut out, &receipt, &symbols()).then(|| String::from_utf8(out).unwrap())
    }

    #[test]
    fn a_line_is_the_audits_json_with_the_kind() {
        let place = Receipt {
            order_id: Some(5_348_024_557_502_465),
            pair: 1,
            kind: CommandKind::Place,
        };
        assert_eq!(
            line(place).as_deref(),
            Some("{\"order_id\":5348024557502465,\"pair\":\"ETH-EUR\",\"kind\":\"place\"}\n")
        );
        for (kind, name) in [
            (CommandKind::Cancel, "cancel"),
            (CommandKind::Amend, "amend"),
        ] {
            let text = line(Receipt {
                order_id: Some(7),
                pair: 0,
                kind,
            })
            .unwrap();
            let v: serde_json::Value = serde_json::from_str(&text).unwrap();
            assert_eq!(v["kind"], name);
            assert_eq!(
                (v["order_id"].as_u64(), v["pair"].as_str()),
                (Some(7), Some("BTC-EUR"))
            );
            assert!(v.get("command_id").is_none(), "the client cannot know it");
        }
    }

    #[test]
    fn a_receipt_without_an_order_or_pair_writes_nothing() {
        let mut out = Vec::new();
        let no_order = Receipt {
            order_id: None,
            pair: 0,
            kind: CommandKind::Place,
        };
        assert!(!write_line(&mut out, &no_order, &symbols()));
        let no_pair = Receipt {
            order_id: Some(1),
            pair: 9,
            kind: CommandKind::Place,
        };
        assert!(!write_line(&mut out, &no_pair, &symbols()));
        assert!(out.is_empty());
    }

    #[tokio::test]
    async fn every_receipt_sent_before_finish_is_in_the_file() {
        let path = std::env::temp_dir().join(format!("received-{}.jsonl", std::process::id()));
        let log = ReceivedLog::create(&path, symbols()).unwrap();
        let senders: Vec<ReceivedTx> = (0..4).map(|_| log.sender()).collect();
        // More than the channel holds, from several tasks: senders wait, nothing is dropped.
        let per_sender = QUEUE_MAX as u64 / 2;
        let tasks: Vec<_> = senders
            .into_iter()
            .enumerate()
            .map(|(s, tx)| {
                tokio::spawn(async move {
                    for i in 0..per_sender {
                        let order_id = (s as u64) << 32 | i;
                        let kind = CommandKind::Place;
                        tx.send(Receipt {
                            order_id: Some(order_id),
                            pair: (i % 2) as usize,
                            kind,
                        })
                        .await;
                    }
                })
            })
            .collect();
        for t in tasks {
            t.await.unwrap();
        }
        log.sender()
            .send(Receipt {
                order_id: None,
                pair: 0,
                kind: CommandKind::Amend,
            })
            .await;
        let written = log.finish().await.unwrap();
        assert_eq!(
            (written.lines, written.without_order_id),
            (4 * per_sender, 1)
        );
        let text = std::fs::read_to_string(&path).unwrap();
        let mut ids: Vec<u64> = text
            .lines()
            .map(|l| {
                serde_json::from_str::<serde_json::Value>(l).unwrap()["order_id"]
                    .as_u64()
                    .unwrap()
            })
            .collect();
        ids.sort_unstable();
        ids.dedup();
        assert_eq!(ids.len() as u64, 4 * per_sender, "each once");
        std::fs::remove_file(&path).ok();
    }

    /// A writer whose bytes the test can see while the task still runs.
    #[derive(Clone, Default)]
    struct Shared(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

    impl std::io::Write for Shared {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[tokio::test]
    async fn lines_reach_the_file_while_the_run_goes_on_not_only_at_the_end() {
        let seen = Shared::default();
        let (tx, rx) = mpsc::channel(QUEUE_MAX);
        let (_stop, stopped) = oneshot::channel();
        // Buffered like the real file, with room for far more than these lines.
        let out = std::io::BufWriter::with_capacity(FILE_BUFFER_BYTES, seen.clone());
        let task = tokio::spawn(write_all(rx, stopped, out, symbols(), Written::default()));
        for i in 0..3 {
            let receipt = Receipt {
                order_id: Some(i),
                pair: 0,
                kind: CommandKind::Place,
            };
            tx.send(receipt).await.unwrap();
        }
        let lines = || seen.0.lock().unwrap().split(|b| *b == b'\n').count() - 1;
        let written = tokio::time::timeout(std::time::Duration::from_secs(10), async {
            while lines() < 3 {
                tokio::time::sleep(std::time::Duration::from_millis(5)).await;
            }
        })
        .await;
        assert!(
            written.is_ok(),
            "written out once the channel ran empty, before any stop"
        );
        assert!(!task.is_finished());
        task.abort();
    }

    #[test]
    fn a_path_that_cannot_be_created_fails_at_once() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let _guard = rt.enter();
        let err = ReceivedLog::create(Path::new("/nonexistent/dir/received.jsonl"), symbols())
            .unwrap_err();
        assert!(err.path.contains("/nonexistent/dir"), "{err}");
    }
}

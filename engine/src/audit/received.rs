//! The commands a gateway acknowledged as `received` (as a load generator recorded them): each
//! must have its verdict. The file is JSON lines, one per acknowledged command:
//!
//! ```text
//! {"order_id":1099511627777,"pair":"BTC-EUR","kind":"place"}
//! {"command_id":1099511627790}
//! ```
//!
//! A line names its command by `command_id`, or else by `order_id` (the placed order's, or the
//! order a cancel or amend names) with an optional `kind` (`place`, `cancel`, `amend`); `pair`
//! is optional. Verdicts are counted, so each of two cancels of one order needs its own:
//!
//! - `command_id`: an `events` answer to that command, or an `account_events` refusal of it;
//! - `order_id` with `kind`: for a place, Accepted or Rejected (place) naming the order; for a
//!   cancel, Done `cancelled` or Rejected (cancel); for an amend, Amended or Rejected (amend);
//!   or the account stage's refusal of that command (found through the `accounts` line the
//!   refusal answers, since a refusal names only the command id);
//! - `order_id` without `kind`: an Accepted or Rejected event naming the order.
//!
//! Only first copies count (a re-published answer is not a second verdict). With `--pair`,
//! lines naming another pair are skipped.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use protocol::accounts::{AccountEventRecord, AccountRecord, position, record_offset};
use protocol::records::{EventRecord, command_lines};
use protocol::{Command, CommandKind, DoneReason, EventBody, OrderId, OrderRef};
use serde::Deserialize;

use super::AuditError;
use super::log::{Consumers, PartitionReader};
use super::report::{Report, Rule, Violation};

#[derive(Debug, Clone, Deserialize)]
struct Line {
    #[serde(default)]
    order_id: Option<u64>,
    #[serde(default)]
    command_id: Option<u64>,
    #[serde(default)]
    kind: Option<CommandKind>,
    #[serde(default)]
    pair: Option<String>,
}

/// What a verdict names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Key {
    Command(u64),
    Order(Option<CommandKind>, u64),
}

/// The lines waiting for verdicts of one key, and how many verdicts were found.
#[derive(Debug, Default)]
struct Slot {
    lines: Vec<usize>,
    verdicts: usize,
}

/// The acknowledged commands and the verdicts found for them.
pub(crate) struct Received {
    path: PathBuf,
    lines: Vec<(usize, Line)>,
    slots: HashMap<Key, Slot>,
    skipped: u64,
}

impl Received {
    /// Reads the file; keeps the lines for `pairs` (and those naming no pair).
    pub(crate) fn load(path: &Path, pairs: &BTreeSet<String>) -> Result<Received, AuditError> {
        let text = std::fs::read_to_string(path).map_err(|source| AuditError::ReceivedIo {
            path: path.to_owned(),
            source,
        })?;
        let mut received = Received {
            path: path.to_owned(),
            lines: Vec::new(),
            slots: HashMap::new(),
            skipped: 0,
        };
        for (i, raw) in text.lines().enumerate() {
            if raw.trim().is_empty() {
                continue;
            }
            let bad = |reason: String| AuditError::Received {
                path: path.to_owned(),
                line: i + 1,
                reason,
            };
            let line: Line = serde_json::from_str(raw).map_err(|e| bad(e.to_string()))?;
            let key = match (line.command_id, line.order_id) {
                (Some(id), _) => Key::Command(id),
                (None, Some(id)) => Key::Order(line.kind, id),
                (None, None) => return Err(bad("neither order_id nor command_id".to_owned())),
            };
            if line.pair.as_ref().is_some_and(|p| !pairs.contains(p)) {
                received.skipped += 1;
                continue;
            }
            let at = received.lines.len();
            received.slots.entry(key).or_default().lines.push(at);
            received.lines.push((i + 1, line));
        }
        Ok(received)
    }

    fn verdict(&mut self, key: Key) {
        if let Some(slot) = self.slots.get_mut(&key) {
            slot.verdicts += 1;
        }
    }

    /// Counts the verdicts in the first copy of an `events` answer.
    pub(crate) fn mark_answer(&mut self, answer: &EventRecord) {
        if let Some(id) = answer.command_id {
            self.verdict(Key::Command(id));
        }
        for e in &answer.events {
            let (kind, OrderId(id)) = match &e.body {
                EventBody::Accepted { order_id, .. } => (CommandKind::Place, *order_id),
                EventBody::Rejected {
                    order_id: Some(order_id),
                    command: Some(kind),
                    ..
                } => (*kind, *order_id),
                EventBody::Done {
                    order_id,
                    reason: DoneReason::Cancelled,
                    ..
                } => {
                    self.verdict(Key::Order(Some(CommandKind::Cancel), order_id.0));
                    continue;
                }
                EventBody::Amended { order_id, .. } => {
                    self.verdict(Key::Order(Some(CommandKind::Amend), order_id.0));
                    continue;
                }
                _ => continue,
            };
            self.verdict(Key::Order(Some(kind), id));
            self.verdict(Key::Order(None, id));
        }
    }

    /// Counts the account stage's refusal of `command` as its verdict.
    fn mark_refused(&mut self, command_id: u64, command: Option<&Command>) {
        self.verdict(Key::Command(command_id));
        let named = match command {
            Some(Command::Place(p)) => Some((CommandKind::Place, p.order_id)),
            Some(Command::Amend(a)) => match a.target {
                OrderRef::Id(id) => Some((CommandKind::Amend, id)),
                OrderRef::ClientId(_) => None,
            },
            _ => None,
        };
        if let Some((kind, OrderId(id))) = named {
            self.verdict(Key::Order(Some(kind), id));
            self.verdict(Key::Order(None, id));
        }
    }

    /// Whether some line still waits for a verdict.
    pub(crate) fn awaits(&self) -> bool {
        self.slots.values().any(|s| s.verdicts < s.lines.len())
    }

    /// One check per line; a violation per command without its verdict.
    pub(crate) fn finish(self, report: &mut Report) {
        report.check(Rule::ReceivedHasVerdict, self.lines.len() as u64);
        if self.skipped > 0 {
            report.note(format!(
                "{}: {} lines name a pair outside --pair, not checked",
                self.path.display(),
                self.skipped
            ));
        }
        let mut missing: Vec<usize> = self
            .slots
            .values()
            .flat_map(|s| s.lines.iter().skip(s.verdicts).copied())
            .collect();
        missing.sort_unstable();
        for at in missing {
            let (line_no, line) = &self.lines[at];
            let what = match (line.command_id, line.kind) {
                (Some(id), _) => format!("command {id}"),
                (None, kind) => kind.map_or("a command", kind_name).to_owned(),
            };
            let mut v = Violation::new(
                Rule::ReceivedHasVerdict,
                format!(
                    "{what} acknowledged as received ({} line {line_no}) has no verdict",
                    self.path.display()
                ),
            );
            v.order_id = line.order_id;
            v.pair = line.pair.clone();
            report.violate(v);
        }
    }
}

fn kind_name(kind: CommandKind) -> &'static str {
    match kind {
        CommandKind::Place => "a place",
        CommandKind::Cancel => "a cancel",
        CommandKind::CancelAll => "a cancel-all",
        CommandKind::Amend => "an amend",
    }
}

/// The account stage's refusals: a place or amend refused for funds never reaches `events`.
/// Each refusal names its `accounts` line's position; the command it refused is that line.
/// Memory: the refused positions of one shard.
pub(crate) async fn account_refusals(
    (brokers, consumers): (&str, &Arc<Consumers>),
    (accounts_topic, answers_topic): (&str, &str),
    received: &mut Received,
    report: &mut Report,
) -> Result<(), AuditError> {
    let topics = infra::kafka::topic_partitions(brokers, &[accounts_topic, answers_topic]).await?;
    let (Some(shards), Some(_)) = (topics[0].1, topics[1].1) else {
        return Ok(());
    };
    for shard in 0..shards {
        let partition = i32::try_from(shard).expect("a partition number");
        let mut refused: BTreeMap<i64, u64> = BTreeMap::new();
        let mut answers = PartitionReader::open(consumers, answers_topic, partition, None).await?;
        while let Some(rec) = answers.next().await? {
            report.speed.records += 1;
            for line in command_lines(rec.payload.as_deref()).into_iter().flatten() {
                report.speed.lines += 1;
                if let Ok(AccountEventRecord {
                    refusal: Some(_),
                    command_id: Some(id),
                    accounts_offset,
                    ..
                }) = AccountEventRecord::decode(line)
                {
                    refused.insert(accounts_offset, id);
                }
            }
        }
        let Some(&last) = refused.keys().next_back() else {
            continue;
        };
        let mut lines = PartitionReader::open(
            consumers,
            accounts_topic,
            partition,
            Some(record_offset(last)),
        )
        .await?;
        while let Some(rec) = lines.next().await? {
            report.speed.records += 1;
            for (i, line) in command_lines(rec.payload.as_deref())
                .into_iter()
                .enumerate()
            {
                let Some(&command_id) = refused.get(&position(rec.offset, i)) else {
                    continue;
                };
                let command = match line.map(AccountRecord::decode) {
                    Some(Ok(AccountRecord::Order(o))) => Some(o.command),
                    _ => None,
                };
                received.mark_refused(command_id, command.as_ref());
            }
        }
    }
    Ok(())
}

//! Source workers of other processes: their watermarks and their shutdown, over timely's own
//! connections.
//!
//! In one process every source worker publishes into one [`WatermarkBoard`]. A topology run as
//! a timely cluster has workers in other processes, whose entries this process never sees: a
//! board that waits for all `peers` workers would then hold the watermark at `i64::MIN` forever.
//! [`BoardLink`] is a channel on the cluster's allocator (the same TCP connections as the
//! dataflow's exchanges, not a second network): each source worker sends its board entry to
//! every other worker when it changes (and every 100 ms), and applies what it receives, newer
//! sequence numbers only. The same messages carry shutdown: a process asked to stop tells the
//! others, which stop too, and the time its watermark froze at, so that every process's
//! shutdown cutoff is the cluster's minimum ([`weir_core::FlowControl::freeze_at`]).
//!
//! A message is sent before the capability it describes is dropped, on the same connection as
//! the progress update that drops it, and the source that applies it runs before the operators
//! downstream of it in a worker's step: a cutoff arrives before the rows it must hold back.

use std::time::{Duration, Instant};

use timely::communication::{Bytesable, Pull, Push};

use super::source::WatermarkBoard;

/// One source worker's board entry, as sent to the others.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BoardMessage {
    /// Topic.
    pub topic: String,
    /// Sending worker (global index).
    pub worker: u32,
    /// Sequence number of the sender's entries (later ones replace earlier ones).
    pub seq: u64,
    /// The watermark its partitions hold, ms (`None`: none holds).
    pub holding: Option<i64>,
    /// The largest timestamp it read, ms.
    pub seen: Option<i64>,
    /// Its process was asked to stop.
    pub shutdown: bool,
    /// The timely time its watermark froze at, if shutdown froze it.
    pub frozen: Option<u64>,
}

fn put_opt(out: &mut Vec<u8>, v: Option<i64>) {
    out.push(v.is_some() as u8);
    out.extend_from_slice(&v.unwrap_or(0).to_le_bytes());
}

fn take<const N: usize>(b: &[u8], at: &mut usize) -> [u8; N] {
    let mut a = [0u8; N];
    if let Some(s) = b.get(*at..*at + N) {
        a.copy_from_slice(s);
    }
    *at += N;
    a
}

fn take_opt(b: &[u8], at: &mut usize) -> Option<i64> {
    let some = take::<1>(b, at)[0] == 1;
    let v = i64::from_le_bytes(take::<8>(b, at));
    some.then_some(v)
}

impl BoardMessage {
    fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(48 + self.topic.len());
        out.extend_from_slice(&(self.topic.len() as u32).to_le_bytes());
        out.extend_from_slice(self.topic.as_bytes());
        out.extend_from_slice(&self.worker.to_le_bytes());
        out.extend_from_slice(&self.seq.to_le_bytes());
        put_opt(&mut out, self.holding);
        put_opt(&mut out, self.seen);
        out.push(self.shutdown as u8);
        put_opt(&mut out, self.frozen.map(|f| f as i64));
        out
    }

    fn decode(b: &[u8]) -> Self {
        let mut at = 0;
        let n = u32::from_le_bytes(take::<4>(b, &mut at)) as usize;
        let topic = String::from_utf8_lossy(b.get(at..at + n).unwrap_or_default()).into_owned();
        at += n;
        Self {
            topic,
            worker: u32::from_le_bytes(take::<4>(b, &mut at)),
            seq: u64::from_le_bytes(take::<8>(b, &mut at)),
            holding: take_opt(b, &mut at),
            seen: take_opt(b, &mut at),
            shutdown: take::<1>(b, &mut at)[0] == 1,
            frozen: take_opt(b, &mut at).map(|f| f as u64),
        }
    }
}

impl Bytesable for BoardMessage {
    fn from_bytes(bytes: timely::bytes::arc::Bytes) -> Self {
        Self::decode(&bytes[..])
    }

    fn length_in_bytes(&self) -> usize {
        self.encode().len()
    }

    fn into_bytes<W: std::io::Write>(&self, writer: &mut W) {
        writer.write_all(&self.encode()).expect("write a board message");
    }
}

/// What a source worker last sent, to skip unchanged entries.
type Sent = (Option<i64>, Option<i64>, bool, Option<u64>);

/// One source worker's channel to every worker of the cluster (see the module doc).
pub struct BoardLink {
    pushers: Vec<Box<dyn Push<BoardMessage>>>,
    puller: Box<dyn Pull<BoardMessage>>,
    worker: usize,
    local: std::ops::Range<usize>,
    seq: u64,
    last: Option<(Sent, Instant)>,
}

/// Entries are sent again at least this often (a peer that started late sees them).
const RESEND: Duration = Duration::from_millis(100);

impl BoardLink {
    /// A link over the channel `(pushers, puller)` (one pusher per worker, from timely's
    /// `Worker::allocate`) for worker `worker`, whose process runs the workers `local` (they
    /// share its board already, and are not sent to).
    pub fn new(
        pushers: Vec<Box<dyn Push<BoardMessage>>>,
        puller: Box<dyn Pull<BoardMessage>>,
        worker: usize,
        local: std::ops::Range<usize>,
    ) -> Self {
        Self {
            pushers,
            puller,
            worker,
            local,
            seq: 0,
            last: None,
        }
    }

    /// Applies every message received to `board`; returns whether any asked to stop, and the
    /// least frozen time among them.
    pub fn receive(&mut self, board: &WatermarkBoard) -> (bool, Option<u64>) {
        let (mut shutdown, mut frozen) = (false, None::<u64>);
        while let Some(m) = self.puller.recv() {
            shutdown |= m.shutdown;
            if let Some(f) = m.frozen {
                frozen = Some(frozen.map_or(f, |x| x.min(f)));
            }
            board.apply_remote(&m);
        }
        (shutdown, frozen)
    }

    /// Sends this worker's entry for `topic` to every other worker if it changed, or every
    /// 100 ms; `force` sends it whatever (the last one, as the source finishes).
    pub fn send(&mut self, topic: &str, entry: Sent, force: bool) {
        let now = Instant::now();
        let due = match &self.last {
            None => true,
            Some((last, at)) => *last != entry || now.duration_since(*at) >= RESEND,
        };
        if !(due || force) {
            return;
        }
        self.seq += 1;
        let msg = BoardMessage {
            topic: topic.to_string(),
            worker: self.worker as u32,
            seq: self.seq,
            holding: entry.0,
            seen: entry.1,
            shutdown: entry.2,
            frozen: entry.3,
        };
        for (i, p) in self.pushers.iter_mut().enumerate() {
            if !self.local.contains(&i) {
                p.send(msg.clone());
                p.done();
            }
        }
        self.last = Some((entry, now));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_board_message_survives_its_encoding() {
        for m in [
            BoardMessage {
                topic: "transactions".into(),
                worker: 3,
                seq: 99,
                holding: Some(i64::MIN),
                seen: None,
                shutdown: true,
                frozen: Some(1_522_540_800_000),
            },
            BoardMessage {
                topic: String::new(),
                worker: 0,
                seq: 0,
                holding: None,
                seen: Some(-5),
                shutdown: false,
                frozen: None,
            },
        ] {
            assert_eq!(BoardMessage::decode(&m.encode()), m);
            assert_eq!(m.length_in_bytes(), m.encode().len());
        }
    }
}

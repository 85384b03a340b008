//! JSON-lines input (a file or stdin): the source of `jinryu ingest` and `jinryu demo`.
//!
//! A reader thread cuts the input into chunks of whole lines; decoder threads decode chunks in
//! parallel; chunks come back **in input order** (chunk *i* always goes to worker *i mod n*), so
//! the window stage sees exactly the file's order and a re-run gives identical output.
//! Memory stays bounded: a line longer than the chunk size is never held whole — it is
//! quarantined as `too_large` from its first bytes and its length.

use std::io::Read;
use std::sync::mpsc as std_mpsc;
use std::thread;

use tokio::sync::mpsc;

use crate::event::{Decoder, Event, Reason, Rejection};
use crate::quarantine::kept;

/// Bytes per chunk handed to a decoder thread.
pub const CHUNK_BYTES: usize = 1 << 20;

/// One input line after decoding.
#[derive(Debug)]
pub enum Decoded {
    Event(Event),
    Rejected {
        rejection: Rejection,
        /// The line, whole up to `max_message_bytes` (see [`kept`]).
        payload: Box<[u8]>,
        /// Full length of the line.
        len: u64,
    },
    /// Empty or whitespace-only line: skipped (JSON-lines convention), but counted.
    Blank,
}

/// Decoded lines of one chunk, with their 1-based line numbers.
#[derive(Debug, Default)]
pub struct DecodedChunk {
    pub items: Vec<(u64, Decoded)>,
    pub bytes: u64,
}

enum Job {
    Lines {
        first_line: u64,
        data: Vec<u8>,
    },
    Overlong {
        line: u64,
        prefix: Vec<u8>,
        len: u64,
    },
}

fn decode_line(decoder: &Decoder, line: &[u8], now_ms: i64) -> Decoded {
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    if line.first() != Some(&b'{') && line.iter().all(u8::is_ascii_whitespace) {
        return Decoded::Blank;
    }
    match decoder.decode(line, now_ms) {
        Ok(ev) => Decoded::Event(ev),
        Err(rejection) => Decoded::Rejected {
            rejection,
            payload: kept(line, decoder.limits().max_message_bytes).into(),
            len: line.len() as u64,
        },
    }
}

/// Decodes one job; a chunk's buffer is handed back on `spent` for the reader to fill again.
fn run_job(decoder: &Decoder, job: Job, spent: &std_mpsc::SyncSender<Vec<u8>>) -> DecodedChunk {
    let now_ms = chrono::Utc::now().timestamp_millis();
    match job {
        Job::Lines { first_line, data } => {
            let mut items = Vec::with_capacity(data.len() / 96 + 1);
            let body = data.strip_suffix(b"\n").unwrap_or(&data);
            let mut start = 0;
            let ends = memchr::memchr_iter(b'\n', body).chain(std::iter::once(body.len()));
            for (line_no, end) in (first_line..).zip(ends) {
                items.push((line_no, decode_line(decoder, &body[start..end], now_ms)));
                start = end + 1;
            }
            let bytes = data.len() as u64;
            // The reader takes it back if it has room for it; otherwise it is freed here.
            let _ = spent.try_send(data);
            DecodedChunk { items, bytes }
        }
        Job::Overlong { line, prefix, len } => DecodedChunk {
            items: vec![(
                line,
                Decoded::Rejected {
                    rejection: Rejection::new(
                        Reason::TooLarge,
                        format!(
                            "line is {len} bytes; the limit is {} (validation.max_message_bytes)",
                            decoder.limits().max_message_bytes
                        ),
                    ),
                    payload: prefix.into(),
                    len,
                },
            )],
            bytes: len,
        },
    }
}

/// Starts reading and decoding `input`; chunks arrive on the returned channel in input order.
/// A read error ends the stream with that error.
pub fn spawn(
    input: Box<dyn Read + Send>,
    decoder: Decoder,
    workers: usize,
) -> mpsc::Receiver<std::io::Result<DecodedChunk>> {
    let workers = workers.max(1);
    let (out_tx, out_rx) = mpsc::channel(4);
    let keep = decoder.limits().max_message_bytes;
    let mut job_txs = Vec::new();
    let mut res_rxs = Vec::new();
    // Decoded chunks' buffers go back to the reader: a fresh 2 MB buffer per chunk cost a
    // page fault and a kernel page clear for every 4 KB read.
    let (spent_tx, spent_rx) = std_mpsc::sync_channel::<Vec<u8>>(2 * workers);
    for _ in 0..workers {
        let (job_tx, job_rx) = std_mpsc::sync_channel::<Job>(2);
        let (res_tx, res_rx) = std_mpsc::sync_channel::<DecodedChunk>(2);
        let d = decoder.clone();
        let spent = spent_tx.clone();
        thread::spawn(move || {
            for job in job_rx {
                if res_tx.send(run_job(&d, job, &spent)).is_err() {
                    break;
                }
            }
        });
        job_txs.push(job_tx);
        res_rxs.push(res_rx);
    }
    // Collector: takes results round-robin, in the order the jobs were dealt.
    let (count_tx, count_rx) = std_mpsc::sync_channel::<Option<std::io::Error>>(1);
    let collector_tx = out_tx.clone();
    thread::spawn(move || {
        // A worker whose channel closes has finished: all jobs are done.
        let mut i = 0usize;
        while let Ok(chunk) = res_rxs[i % res_rxs.len()].recv() {
            if collector_tx.blocking_send(Ok(chunk)).is_err() {
                return;
            }
            i += 1;
        }
        if let Ok(Some(err)) = count_rx.recv() {
            let _ = collector_tx.blocking_send(Err(err));
        }
    });
    drop(out_tx);
    // Reader: deals chunks of whole lines to the workers in turn.
    thread::spawn(move || {
        let result = read_chunks(input, &job_txs, &spent_rx, keep);
        drop(job_txs);
        let _ = count_tx.send(result.err());
    });
    out_rx
}

fn read_chunks(
    mut input: Box<dyn Read + Send>,
    jobs: &[std_mpsc::SyncSender<Job>],
    spent: &std_mpsc::Receiver<Vec<u8>>,
    keep: usize,
) -> std::io::Result<()> {
    let mut dealt = 0usize;
    let mut line_no = 1u64;
    let mut deal = |job: Job| -> bool {
        let ok = jobs[dealt % jobs.len()].send(job).is_ok();
        dealt += 1;
        ok
    };
    let mut buf: Vec<u8> = Vec::with_capacity(CHUNK_BYTES * 2);
    // Some(len) while skipping the rest of an overlong line.
    let mut overlong: Option<(Vec<u8>, u64)> = None;
    let mut eof = false;
    while !eof {
        // Up to a chunk, appended to the unfinished line of the last one: `read_to_end` fills
        // the buffer's spare capacity without zeroing it first (1 GB of memset per GB read), and
        // returns short only at the end of the input. Nothing is visible before the run's
        // commit, so waiting for a full chunk on a slow pipe delays nothing but progress lines.
        let n = (&mut input)
            .take(CHUNK_BYTES as u64)
            .read_to_end(&mut buf)?;
        eof = n == 0;
        if let Some((_, len)) = overlong.as_mut() {
            match memchr::memchr(b'\n', &buf) {
                Some(i) => {
                    *len += i as u64;
                    buf.drain(..=i);
                    let (prefix, len) = overlong.take().expect("overlong");
                    if !deal(Job::Overlong {
                        line: line_no,
                        prefix,
                        len,
                    }) {
                        return Ok(());
                    }
                    line_no += 1;
                }
                None => {
                    *len += buf.len() as u64;
                    buf.clear();
                    if eof {
                        let (prefix, len) = overlong.take().expect("overlong");
                        deal(Job::Overlong {
                            line: line_no,
                            prefix,
                            len,
                        });
                    }
                    continue;
                }
            }
        }
        let cut = if eof {
            buf.len()
        } else {
            match memchr::memrchr(b'\n', &buf) {
                Some(i) => i + 1,
                None if buf.len() >= CHUNK_BYTES => {
                    // One line already longer than a chunk: keep its head, skip the rest.
                    let prefix = kept(&buf, keep).to_vec();
                    overlong = Some((prefix, buf.len() as u64));
                    buf.clear();
                    continue;
                }
                None => continue,
            }
        };
        if cut == 0 {
            continue;
        }
        let mut next = spent
            .try_recv()
            .unwrap_or_else(|_| Vec::with_capacity(CHUNK_BYTES * 2));
        next.clear();
        next.extend_from_slice(&buf[cut..]);
        buf.truncate(cut);
        let data = std::mem::replace(&mut buf, next);
        let lines =
            memchr::memchr_iter(b'\n', &data).count() as u64 + u64::from(!data.ends_with(b"\n"));
        if !deal(Job::Lines {
            first_line: line_no,
            data,
        }) {
            return Ok(());
        }
        line_no += lines;
        if buf.capacity() < CHUNK_BYTES {
            buf.reserve(CHUNK_BYTES * 2);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
    use std::sync::Arc;

    async fn collect(input: Vec<u8>, workers: usize) -> Vec<(u64, String)> {
        let cfg = Config::chikaho("memory://");
        let decoder = Decoder::new(Arc::new(cfg.registry), cfg.limits);
        let mut rx = spawn(Box::new(std::io::Cursor::new(input)), decoder, workers);
        let mut out = Vec::new();
        while let Some(chunk) = rx.recv().await {
            for (line, d) in chunk.unwrap().items {
                let tag = match d {
                    Decoded::Event(e) => format!("ev{}", e.ts_ms),
                    Decoded::Rejected { rejection, len, .. } => {
                        format!("{}:{len}", rejection.reason)
                    }
                    Decoded::Blank => "blank".into(),
                };
                out.push((line, tag));
            }
        }
        out
    }

    #[tokio::test]
    async fn lines_keep_their_numbers_and_order_across_chunks() {
        let mut input = Vec::new();
        let n = 60_000u64; // several chunks
        for i in 0..n {
            if i % 1000 == 7 {
                input.extend_from_slice(b"\r\n");
            } else {
                input.extend_from_slice(
                    format!(
                        "{{\"sensor_id\":\"J1-1\",\"ts\":{},\"direction\":\"north\"}}\n",
                        1_700_000_000_000u64 + i
                    )
                    .as_bytes(),
                );
            }
        }
        input.extend_from_slice(b"{\"no newline at end\"");
        let out = collect(input, 3).await;
        assert_eq!(out.len() as u64, n + 1);
        for (i, (line, tag)) in out.iter().enumerate() {
            assert_eq!(*line, i as u64 + 1);
            if (i as u64) < n && i % 1000 != 7 {
                assert_eq!(tag, &format!("ev{}", 1_700_000_000_000u64 + i as u64));
            }
        }
        assert_eq!(out[7].1, "blank");
        assert_eq!(out.last().unwrap().1, "invalid_json:20");
    }

    #[tokio::test]
    async fn an_overlong_line_is_quarantined_without_being_held() {
        let mut input =
            b"{\"sensor_id\":\"J1-1\",\"ts\":1700000000000,\"direction\":\"north\"}\n".to_vec();
        input.extend(std::iter::repeat_n(b'x', 3 * CHUNK_BYTES + 5));
        input.extend_from_slice(
            b"\n{\"sensor_id\":\"J1-1\",\"ts\":1700000000001,\"direction\":\"north\"}\n",
        );
        let out = collect(input, 2).await;
        assert_eq!(
            out,
            vec![
                (1, "ev1700000000000".to_string()),
                (2, format!("too_large:{}", 3 * CHUNK_BYTES + 5)),
                (3, "ev1700000000001".to_string()),
            ]
        );
    }
}

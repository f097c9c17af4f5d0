//! The CRI container log format the kubelet reads:
//! `<RFC 3339 time with nanoseconds> <stdout|stderr> <F|P> <text>`, one line per line of
//! output; `P` marks a partial line (cut at the buffer size or at the end of the stream),
//! `F` a full one.

use std::io::Write;

/// Longest text of one log line; longer output lines are split into `P` pieces.
pub const MAX_LINE: usize = 16 * 1024;

/// `2026-11-22T03:45:12.123456789Z` for nanoseconds since the epoch, in UTC.
pub fn rfc3339_nano(ns: i64) -> String {
    let secs = ns.div_euclid(1_000_000_000);
    let nanos = ns.rem_euclid(1_000_000_000);
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{nanos:09}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// Turns one stream's bytes into log lines, holding an unfinished line until it ends.
pub struct LineWriter {
    stream: &'static str,
    pending: Vec<u8>,
}

impl LineWriter {
    pub fn new(stream: &'static str) -> Self {
        LineWriter {
            stream,
            pending: Vec::new(),
        }
    }

    /// Adds bytes read from the stream; writes every complete line (and every full-size
    /// piece of an overlong one).
    pub fn push(&mut self, bytes: &[u8], now_ns: i64, out: &mut impl Write) -> std::io::Result<()> {
        self.pending.extend_from_slice(bytes);
        loop {
            if let Some(end) = self.pending.iter().position(|b| *b == b'\n') {
                if end <= MAX_LINE {
                    let line: Vec<u8> = self.pending.drain(..=end).collect();
                    self.write(&line[..end], "F", now_ns, out)?;
                    continue;
                }
            }
            if self.pending.len() > MAX_LINE {
                let piece: Vec<u8> = self.pending.drain(..MAX_LINE).collect();
                self.write(&piece, "P", now_ns, out)?;
                continue;
            }
            return Ok(());
        }
    }

    /// The stream ended: what is left is a partial line.
    pub fn finish(&mut self, now_ns: i64, out: &mut impl Write) -> std::io::Result<()> {
        if self.pending.is_empty() {
            return Ok(());
        }
        let rest = std::mem::take(&mut self.pending);
        self.write(&rest, "P", now_ns, out)
    }

    fn write(
        &self,
        text: &[u8],
        tag: &str,
        now_ns: i64,
        out: &mut impl Write,
    ) -> std::io::Result<()> {
        let mut line = format!("{} {} {tag} ", rfc3339_nano(now_ns), self.stream).into_bytes();
        line.extend_from_slice(text);
        line.push(b'\n');
        out.write_all(&line)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_times_as_rfc3339_with_nanoseconds() {
        assert_eq!(rfc3339_nano(0), "1970-01-01T00:00:00.000000000Z");
        assert_eq!(
            rfc3339_nano(1_795_315_590_381_410_954),
            "2026-11-22T02:46:30.381410954Z"
        );
        assert_eq!(
            rfc3339_nano(951_782_400_000_000_001),
            "2000-02-29T00:00:00.000000001Z"
        );
    }

    #[test]
    fn writes_full_and_partial_lines() {
        let mut out = Vec::new();
        let mut w = LineWriter::new("stdout");
        w.push(b"hello\nwor", 0, &mut out).unwrap();
        w.push(b"ld\nno newline", 1, &mut out).unwrap();
        w.finish(2, &mut out).unwrap();
        let text = String::from_utf8(out).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines[0], "1970-01-01T00:00:00.000000000Z stdout F hello");
        assert_eq!(lines[1], "1970-01-01T00:00:00.000000001Z stdout F world");
        assert_eq!(
            lines[2],
            "1970-01-01T00:00:00.000000002Z stdout P no newline"
        );
    }

    #[test]
    fn splits_overlong_lines_into_partial_pieces() {
        let mut out = Vec::new();
        let mut w = LineWriter::new("stderr");
        let long = vec![b'x'; MAX_LINE + 10];
        w.push(&long, 0, &mut out).unwrap();
        w.push(b"\n", 0, &mut out).unwrap();
        let text = String::from_utf8(out).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 2);
        assert!(lines[0].contains(" stderr P ") && lines[0].len() > MAX_LINE);
        assert!(lines[1].ends_with(" stderr F xxxxxxxxxx"));
    }
}

//! SPDY/3.1 framing, as the kubelet's streaming clients speak it (client-go's
//! remotecommand and portforward over moby/spdystream; crictl by default): the frames,
//! and the name/value header blocks compressed with zlib over the protocol's dictionary,
//! one compression context per direction for the whole connection.
//!
//! Flow control (WINDOW_UPDATE) is parsed and ignored, as spdystream ignores it: the
//! streams carried here are a process's stdio and a forwarded TCP connection, each
//! already paced by its own reader.

use anyhow::{bail, Context};
use flate2::{Compress, Compression, Decompress, FlushCompress, FlushDecompress, Status};

pub const VERSION: u16 = 3;
/// The control frame flag that ends a stream's sending half (and the data frame flag).
pub const FLAG_FIN: u8 = 0x01;
/// The largest frame payload accepted (the length field is 24 bits).
pub const MAX_PAYLOAD: usize = (1 << 24) - 1;

/// RST_STREAM status codes used here.
pub const PROTOCOL_ERROR: u32 = 1;
pub const REFUSED_STREAM: u32 = 3;
pub const CANCEL: u32 = 5;

pub type Headers = Vec<(String, String)>;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame {
    Data {
        stream: u32,
        fin: bool,
        data: Vec<u8>,
    },
    SynStream {
        stream: u32,
        associated: u32,
        priority: u8,
        fin: bool,
        unidirectional: bool,
        headers: Headers,
    },
    SynReply {
        stream: u32,
        fin: bool,
        headers: Headers,
    },
    RstStream {
        stream: u32,
        status: u32,
    },
    Settings {
        entries: Vec<(u8, u32, u32)>,
    },
    Ping {
        id: u32,
    },
    GoAway {
        last_good_stream: u32,
        status: u32,
    },
    Headers {
        stream: u32,
        fin: bool,
        headers: Headers,
    },
    WindowUpdate {
        stream: u32,
        delta: u32,
    },
}

/// The SPDY/3 header compression dictionary: the protocol's common header names, each
/// after its length as 4 bytes big-endian, then common values.
fn dictionary() -> Vec<u8> {
    const NAMES: &[&str] = &[
        "options",
        "head",
        "post",
        "put",
        "delete",
        "trace",
        "accept",
        "accept-charset",
        "accept-encoding",
        "accept-language",
        "accept-ranges",
        "age",
        "allow",
        "authorization",
        "cache-control",
        "connection",
        "content-base",
        "content-encoding",
        "content-language",
        "content-length",
        "content-location",
        "content-md5",
        "content-range",
        "content-type",
        "date",
        "etag",
        "expect",
        "expires",
        "from",
        "host",
        "if-match",
        "if-modified-since",
        "if-none-match",
        "if-range",
        "if-unmodified-since",
        "last-modified",
        "location",
        "max-forwards",
        "pragma",
        "proxy-authenticate",
        "proxy-authorization",
        "range",
        "referer",
        "retry-after",
        "server",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
        "user-agent",
        "vary",
        "via",
        "warning",
        "www-authenticate",
        "method",
        "get",
        "status",
        "200 OK",
        "version",
        "HTTP/1.1",
        "url",
        "public",
        "set-cookie",
        "keep-alive",
        "origin",
    ];
    const VALUES: &str = concat!(
        "100101201202205206300302303304305306307402405406407408409410411412413414415416417502504505",
        "203 Non-Authoritative Information204 No Content301 Moved Permanently400 Bad Request",
        "401 Unauthorized403 Forbidden404 Not Found500 Internal Server Error",
        "501 Not Implemented503 Service Unavailable",
        "Jan Feb Mar Apr May Jun Jul Aug Sept Oct Nov Dec 00:00:00 ",
        "Mon, Tue, Wed, Thu, Fri, Sat, Sun, GMT",
        "chunked,text/html,image/png,image/jpg,image/gif,application/xml,",
        "application/xhtml+xml,text/plain,text/javascript,publicprivatemax-age=",
        "gzip,deflate,sdchcharset=utf-8charset=iso-8859-1,utf-,*,enq=0.",
    );
    let mut dictionary = Vec::new();
    for name in NAMES {
        dictionary.extend_from_slice(&(name.len() as u32).to_be_bytes());
        dictionary.extend_from_slice(name.as_bytes());
    }
    dictionary.extend_from_slice(VALUES.as_bytes());
    dictionary
}

/// One direction's header compression: a zlib stream for the whole connection.
pub struct HeaderCodec {
    compress: Compress,
    decompress: Decompress,
    dictionary: Vec<u8>,
    /// Whether the decompressor has been given the dictionary it asked for.
    primed: bool,
}

impl Default for HeaderCodec {
    fn default() -> Self {
        Self::new()
    }
}

impl HeaderCodec {
    pub fn new() -> Self {
        let dictionary = dictionary();
        let mut compress = Compress::new(Compression::default(), true);
        compress
            .set_dictionary(&dictionary)
            .expect("zlib takes the SPDY dictionary");
        HeaderCodec {
            compress,
            decompress: Decompress::new(true),
            dictionary,
            primed: false,
        }
    }

    fn encode_block(&mut self, headers: &Headers) -> anyhow::Result<Vec<u8>> {
        let mut plain = Vec::new();
        plain.extend_from_slice(&(headers.len() as u32).to_be_bytes());
        for (name, value) in headers {
            for part in [name.to_ascii_lowercase(), value.clone()] {
                plain.extend_from_slice(&(part.len() as u32).to_be_bytes());
                plain.extend_from_slice(part.as_bytes());
            }
        }
        let mut out = Vec::with_capacity(plain.len() + 64);
        let mut input = &plain[..];
        loop {
            out.reserve(256);
            let before = self.compress.total_in();
            self.compress
                .compress_vec(input, &mut out, FlushCompress::Sync)
                .context("compress a header block")?;
            input = &input[(self.compress.total_in() - before) as usize..];
            // A sync flush is complete once all input is taken and room was left over.
            if input.is_empty() && out.len() < out.capacity() {
                return Ok(out);
            }
        }
    }

    fn decode_block(&mut self, compressed: &[u8]) -> anyhow::Result<Headers> {
        let mut plain = Vec::with_capacity(compressed.len() * 4 + 64);
        let mut input = compressed;
        loop {
            plain.reserve(1024);
            let before = self.decompress.total_in();
            let result = self
                .decompress
                .decompress_vec(input, &mut plain, FlushDecompress::Sync);
            input = &input[(self.decompress.total_in() - before) as usize..];
            match result {
                Ok(Status::Ok) | Ok(Status::BufError) if input.is_empty() => {
                    if plain.len() < plain.capacity() {
                        break;
                    }
                }
                Ok(Status::Ok) | Ok(Status::BufError) => {}
                Ok(Status::StreamEnd) => break,
                Err(e) if e.needs_dictionary().is_some() && !self.primed => {
                    self.decompress
                        .set_dictionary(&self.dictionary)
                        .context("give zlib the SPDY dictionary")?;
                    self.primed = true;
                }
                Err(e) => bail!("decompress a header block: {e}"),
            }
        }
        parse_block(&plain)
    }
}

fn parse_block(mut plain: &[u8]) -> anyhow::Result<Headers> {
    let mut take = |n: usize| -> anyhow::Result<&[u8]> {
        if plain.len() < n {
            bail!("a header block ends early");
        }
        let (head, rest) = plain.split_at(n);
        plain = rest;
        Ok(head)
    };
    let count = u32::from_be_bytes(take(4)?.try_into()?);
    let mut headers = Vec::new();
    for _ in 0..count {
        let mut pair = [String::new(), String::new()];
        for part in pair.iter_mut() {
            let len = u32::from_be_bytes(take(4)?.try_into()?) as usize;
            *part = String::from_utf8(take(len)?.to_vec()).context("a header is not UTF-8")?;
        }
        let [name, value] = pair;
        headers.push((name, value));
    }
    Ok(headers)
}

/// The first value of `name` (header names are lowercase on the wire).
pub fn header<'a>(headers: &'a Headers, name: &str) -> Option<&'a str> {
    headers
        .iter()
        .find(|(n, _)| n.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.as_str())
}

fn be32(bytes: &[u8]) -> u32 {
    u32::from_be_bytes([bytes[0], bytes[1], bytes[2], bytes[3]])
}

/// Reads frames from a byte stream and writes them to one; `codec` holds the header
/// compression state of both directions of one connection.
pub struct Codec {
    headers: HeaderCodec,
}

impl Default for Codec {
    fn default() -> Self {
        Self::new()
    }
}

impl Codec {
    pub fn new() -> Self {
        Codec {
            headers: HeaderCodec::new(),
        }
    }

    /// The frame at the start of `buf` and its length in bytes, or None if `buf` does not
    /// hold a whole frame yet.
    pub fn decode(&mut self, buf: &[u8]) -> anyhow::Result<Option<(Frame, usize)>> {
        if buf.len() < 8 {
            return Ok(None);
        }
        let flags = buf[4];
        let length = (be32(&buf[4..8]) & 0x00ff_ffff) as usize;
        if buf.len() < 8 + length {
            return Ok(None);
        }
        let payload = &buf[8..8 + length];
        let fin = flags & FLAG_FIN != 0;
        let frame = if buf[0] & 0x80 == 0 {
            Frame::Data {
                stream: be32(&buf[0..4]) & 0x7fff_ffff,
                fin,
                data: payload.to_vec(),
            }
        } else {
            let version = u16::from_be_bytes([buf[0] & 0x7f, buf[1]]);
            if version != VERSION {
                bail!("SPDY version {version} (this server speaks 3)");
            }
            let need = |n: usize| {
                if payload.len() < n {
                    bail!("a control frame of type {} is too short", buf[3]);
                }
                Ok(())
            };
            match u16::from_be_bytes([buf[2], buf[3]]) {
                1 => {
                    need(10)?;
                    Frame::SynStream {
                        stream: be32(&payload[0..4]) & 0x7fff_ffff,
                        associated: be32(&payload[4..8]) & 0x7fff_ffff,
                        priority: payload[8] >> 5,
                        fin,
                        unidirectional: flags & 0x02 != 0,
                        headers: self.headers.decode_block(&payload[10..])?,
                    }
                }
                2 => {
                    need(4)?;
                    Frame::SynReply {
                        stream: be32(&payload[0..4]) & 0x7fff_ffff,
                        fin,
                        headers: self.headers.decode_block(&payload[4..])?,
                    }
                }
                3 => {
                    need(8)?;
                    Frame::RstStream {
                        stream: be32(&payload[0..4]) & 0x7fff_ffff,
                        status: be32(&payload[4..8]),
                    }
                }
                4 => {
                    need(4)?;
                    let count = be32(&payload[0..4]) as usize;
                    need(4 + count * 8)?;
                    let entries = (0..count)
                        .map(|i| {
                            let entry = &payload[4 + i * 8..12 + i * 8];
                            (entry[0], be32(entry) & 0x00ff_ffff, be32(&entry[4..8]))
                        })
                        .collect();
                    Frame::Settings { entries }
                }
                6 => {
                    need(4)?;
                    Frame::Ping {
                        id: be32(&payload[0..4]),
                    }
                }
                7 => {
                    need(8)?;
                    Frame::GoAway {
                        last_good_stream: be32(&payload[0..4]) & 0x7fff_ffff,
                        status: be32(&payload[4..8]),
                    }
                }
                8 => {
                    need(4)?;
                    Frame::Headers {
                        stream: be32(&payload[0..4]) & 0x7fff_ffff,
                        fin,
                        headers: self.headers.decode_block(&payload[4..])?,
                    }
                }
                9 => {
                    need(8)?;
                    Frame::WindowUpdate {
                        stream: be32(&payload[0..4]) & 0x7fff_ffff,
                        delta: be32(&payload[4..8]) & 0x7fff_ffff,
                    }
                }
                other => bail!("unknown SPDY control frame type {other}"),
            }
        };
        Ok(Some((frame, 8 + length)))
    }

    /// Appends `frame` to `out`.
    pub fn encode(&mut self, frame: &Frame, out: &mut Vec<u8>) -> anyhow::Result<()> {
        let control = |out: &mut Vec<u8>, kind: u16, flags: u8, payload: &[u8]| {
            out.extend_from_slice(&(0x8000 | VERSION).to_be_bytes());
            out.extend_from_slice(&kind.to_be_bytes());
            out.extend_from_slice(&((flags as u32) << 24 | payload.len() as u32).to_be_bytes());
            out.extend_from_slice(payload);
        };
        let fin_flag = |fin: bool| if fin { FLAG_FIN } else { 0 };
        match frame {
            Frame::Data { stream, fin, data } => {
                if data.len() > MAX_PAYLOAD {
                    bail!("a data frame of {} bytes is over SPDY's limit", data.len());
                }
                out.extend_from_slice(&(stream & 0x7fff_ffff).to_be_bytes());
                out.extend_from_slice(
                    &((fin_flag(*fin) as u32) << 24 | data.len() as u32).to_be_bytes(),
                );
                out.extend_from_slice(data);
            }
            Frame::SynStream {
                stream,
                associated,
                priority,
                fin,
                unidirectional,
                headers,
            } => {
                let mut payload = Vec::new();
                payload.extend_from_slice(&stream.to_be_bytes());
                payload.extend_from_slice(&associated.to_be_bytes());
                payload.extend_from_slice(&[priority << 5, 0]);
                payload.extend(self.headers.encode_block(headers)?);
                let flags = fin_flag(*fin) | if *unidirectional { 0x02 } else { 0 };
                control(out, 1, flags, &payload);
            }
            Frame::SynReply {
                stream,
                fin,
                headers,
            } => {
                let mut payload = stream.to_be_bytes().to_vec();
                payload.extend(self.headers.encode_block(headers)?);
                control(out, 2, fin_flag(*fin), &payload);
            }
            Frame::RstStream { stream, status } => {
                let mut payload = stream.to_be_bytes().to_vec();
                payload.extend_from_slice(&status.to_be_bytes());
                control(out, 3, 0, &payload);
            }
            Frame::Settings { entries } => {
                let mut payload = (entries.len() as u32).to_be_bytes().to_vec();
                for (flags, id, value) in entries {
                    payload.extend_from_slice(&((*flags as u32) << 24 | id).to_be_bytes());
                    payload.extend_from_slice(&value.to_be_bytes());
                }
                control(out, 4, 0, &payload);
            }
            Frame::Ping { id } => control(out, 6, 0, &id.to_be_bytes()),
            Frame::GoAway {
                last_good_stream,
                status,
            } => {
                let mut payload = last_good_stream.to_be_bytes().to_vec();
                payload.extend_from_slice(&status.to_be_bytes());
                control(out, 7, 0, &payload);
            }
            Frame::Headers {
                stream,
                fin,
                headers,
            } => {
                let mut payload = stream.to_be_bytes().to_vec();
                payload.extend(self.headers.encode_block(headers)?);
                control(out, 8, fin_flag(*fin), &payload);
            }
            Frame::WindowUpdate { stream, delta } => {
                let mut payload = stream.to_be_bytes().to_vec();
                payload.extend_from_slice(&delta.to_be_bytes());
                control(out, 9, 0, &payload);
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&str, &str)]) -> Headers {
        pairs
            .iter()
            .map(|(n, v)| (n.to_string(), v.to_string()))
            .collect()
    }

    /// Each frame type, encoded by one end and decoded by the other (each end with its own
    /// compression contexts, as on a connection), comes out as it went in, and in a
    /// stream of frames split at every byte.
    #[test]
    fn every_frame_type_round_trips() {
        let frames = vec![
            Frame::SynStream {
                stream: 1,
                associated: 0,
                priority: 7,
                fin: false,
                unidirectional: false,
                headers: headers(&[("streamtype", "error")]),
            },
            Frame::SynStream {
                stream: 3,
                associated: 1,
                priority: 0,
                fin: true,
                unidirectional: true,
                headers: headers(&[("streamtype", "stdout"), ("port", "8080")]),
            },
            Frame::SynReply {
                stream: 3,
                fin: false,
                headers: Headers::new(),
            },
            Frame::Data {
                stream: 5,
                fin: false,
                data: b"hello".to_vec(),
            },
            Frame::Data {
                stream: 5,
                fin: true,
                data: Vec::new(),
            },
            Frame::RstStream {
                stream: 7,
                status: CANCEL,
            },
            Frame::Settings {
                entries: vec![(0, 7, 65536), (1, 4, 100)],
            },
            Frame::Ping { id: 42 },
            Frame::GoAway {
                last_good_stream: 9,
                status: 0,
            },
            Frame::Headers {
                stream: 9,
                fin: true,
                headers: headers(&[("x-a", "1\0two")]),
            },
            Frame::WindowUpdate {
                stream: 1,
                delta: 65536,
            },
        ];
        let mut sender = Codec::new();
        let mut wire = Vec::new();
        for frame in &frames {
            sender.encode(frame, &mut wire).unwrap();
        }
        let mut receiver = Codec::new();
        let mut decoded = Vec::new();
        let mut at = 0;
        while at < wire.len() {
            // A partial frame is not decoded.
            assert!(receiver
                .decode(&wire[at..at + 7.min(wire.len() - at)])
                .unwrap()
                .is_none());
            let (frame, used) = receiver.decode(&wire[at..]).unwrap().unwrap();
            decoded.push(frame);
            at += used;
        }
        // Header names go out lowercase, as SPDY requires.
        assert_eq!(decoded, frames);
    }

    #[test]
    fn header_names_are_sent_lowercase_and_looked_up_in_any_case() {
        let mut sender = Codec::new();
        let mut wire = Vec::new();
        sender
            .encode(
                &Frame::SynReply {
                    stream: 1,
                    fin: false,
                    headers: headers(&[("StreamType", "data")]),
                },
                &mut wire,
            )
            .unwrap();
        let (frame, _) = Codec::new().decode(&wire).unwrap().unwrap();
        let Frame::SynReply { headers, .. } = frame else {
            panic!("{frame:?}")
        };
        assert_eq!(
            headers,
            vec![("streamtype".to_string(), "data".to_string())]
        );
        assert_eq!(header(&headers, "streamType"), Some("data"));
    }

    #[test]
    fn the_dictionary_is_the_protocols() {
        let dictionary = dictionary();
        assert_eq!(&dictionary[..11], b"\0\0\0\x07options");
        assert!(dictionary.ends_with(b",*,enq=0."));
        assert_eq!(dictionary.len(), 1423);
    }

    #[test]
    fn bad_frames_are_errors() {
        let mut codec = Codec::new();
        // Version 2.
        let err = codec
            .decode(&[0x80, 2, 0, 6, 0, 0, 0, 4, 0, 0, 0, 1])
            .unwrap_err();
        assert!(err.to_string().contains("version 2"), "{err}");
        // A PING without its id.
        let err = codec.decode(&[0x80, 3, 0, 6, 0, 0, 0, 0]).unwrap_err();
        assert!(err.to_string().contains("too short"), "{err}");
        // A header block that is not zlib.
        let err = codec
            .decode(&[0x80, 3, 0, 2, 0, 0, 0, 8, 0, 0, 0, 1, 1, 2, 3, 4])
            .unwrap_err();
        assert!(err.to_string().contains("header block"), "{err}");
    }
}

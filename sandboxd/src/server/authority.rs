//! Every gRPC client's `:authority`, made one that h2 accepts.
//!
//! Why this module exists: h2, the HTTP/2 layer under tonic, resets any request whose
//! `:authority` is not a valid URI authority (RST_STREAM PROTOCOL_ERROR; the check is in
//! h2's server and its maintainers keep it: hyperium/h2#487, hyperium/hyper#3750). Over a
//! unix socket the authority means nothing, and the clients that matter send what they
//! like there: grpc-go of the kubelet 1.26 era (crictl, critest) the socket path
//! (`/run/sandboxd/sandboxd.sock`), grpcio since 1.57 the %-encoded path
//! (`run%2Fsandboxd%2Fsandboxd.sock`), grpc-java the raw path. So, rather than fork h2 for
//! one check, this stream sits between the socket and tonic's server and mends the
//! client's header blocks on their way in: each invalid `:authority` becomes `localhost`;
//! valid ones, and every other header, stay as sent.
//!
//! A header block cannot be edited in place: HPACK compresses it against a table both
//! ends keep, and the client's encoder built that table for the bytes it sent. So the
//! client's blocks are decoded here (a decoder that mirrors the client's encoder) and
//! encoded again without touching any table (literals without indexing), which leaves
//! h2's decoder table empty and always in step. HEADERS and CONTINUATION frames are
//! rewritten (padding dropped, priority kept, split again at h2's default 16 KiB frame
//! size); every other frame, and everything the server writes, passes through unchanged.
//! A block that does not decode closes the connection, as h2 would (COMPRESSION_ERROR).

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::{Buf, BufMut, BytesMut};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// What replaces an authority h2 would refuse.
const REPLACEMENT: &[u8] = b"localhost";
/// The client connection preface (RFC 9113 §3.4).
const PREFACE_LEN: usize = 24;
const FRAME_HEADER_LEN: usize = 9;
const FRAME_HEADERS: u8 = 0x1;
const FRAME_CONTINUATION: u8 = 0x9;
const FLAG_END_STREAM: u8 = 0x1;
const FLAG_END_HEADERS: u8 = 0x4;
const FLAG_PADDED: u8 = 0x8;
const FLAG_PRIORITY: u8 = 0x20;
/// The largest frame h2 accepts unless told otherwise (SETTINGS_MAX_FRAME_SIZE's initial
/// value); tonic keeps it.
const MAX_FRAME_PAYLOAD: usize = 16 * 1024;
/// The largest header block collected before the connection is closed: far above any
/// gRPC metadata, far below what would let a client make the daemon hoard memory.
const MAX_HEADER_BLOCK: usize = 1024 * 1024;
/// The dynamic table size h2 advertises (SETTINGS_HEADER_TABLE_SIZE's initial value), so
/// the most a client's encoder may use.
const HPACK_TABLE_SIZE: usize = 4096;

/// Where the inbound byte stream is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Inbound {
    /// In the connection preface: this many bytes still pass unchanged.
    Preface(usize),
    /// At the start of a frame.
    FrameStart,
    /// In a frame that passes unchanged: this many payload bytes still to pass.
    Payload(usize),
}

/// A header block whose HEADERS frame came without END_HEADERS: its CONTINUATIONs follow.
struct OpenBlock {
    stream_id: u32,
    end_stream: bool,
    priority: Option<[u8; 5]>,
    fragment: Vec<u8>,
}

/// A server-side connection whose inbound header blocks carry authorities h2 accepts.
pub struct AuthorityRewrite<S> {
    inner: S,
    state: Inbound,
    /// Read from the client, not yet given to the server.
    input: BytesMut,
    /// Rewritten frames, given to the server before anything read after them.
    output: BytesMut,
    open_block: Option<OpenBlock>,
    decoder: loona_hpack::Decoder<'static>,
    client_closed: bool,
}

impl<S> AuthorityRewrite<S> {
    pub fn new(inner: S) -> Self {
        let mut decoder = loona_hpack::Decoder::new();
        decoder.set_max_allowed_table_size(HPACK_TABLE_SIZE);
        AuthorityRewrite {
            inner,
            state: Inbound::Preface(PREFACE_LEN),
            input: BytesMut::with_capacity(16 * 1024),
            output: BytesMut::new(),
            open_block: None,
            decoder,
            client_closed: false,
        }
    }

    /// Handles the frame at the start of `input` if it has arrived (whole, for header
    /// frames; its 9-byte header, for the others). Returns whether it made progress.
    fn step(&mut self) -> io::Result<bool> {
        if self.input.len() < FRAME_HEADER_LEN {
            return Ok(false);
        }
        let header: [u8; FRAME_HEADER_LEN] = self.input[..FRAME_HEADER_LEN].try_into().unwrap();
        let len =
            usize::from(header[0]) << 16 | usize::from(header[1]) << 8 | usize::from(header[2]);
        let (kind, flags) = (header[3], header[4]);
        let stream_id = u32::from_be_bytes(header[5..9].try_into().unwrap()) & 0x7fff_ffff;
        if kind != FRAME_HEADERS && kind != FRAME_CONTINUATION {
            if self.open_block.is_some() {
                return Err(protocol_error(
                    "a frame other than CONTINUATION inside a header block",
                ));
            }
            self.output.extend_from_slice(&header);
            self.input.advance(FRAME_HEADER_LEN);
            self.state = if len == 0 {
                Inbound::FrameStart
            } else {
                Inbound::Payload(len)
            };
            return Ok(true);
        }
        if len > MAX_HEADER_BLOCK {
            return Err(protocol_error("a header frame larger than 1 MiB"));
        }
        if self.input.len() < FRAME_HEADER_LEN + len {
            self.input
                .reserve(FRAME_HEADER_LEN + len - self.input.len());
            return Ok(false);
        }
        self.input.advance(FRAME_HEADER_LEN);
        let payload = self.input.split_to(len);
        if kind == FRAME_HEADERS {
            self.headers_frame(stream_id, flags, &payload)?;
        } else {
            self.continuation_frame(stream_id, flags, &payload)?;
        }
        Ok(true)
    }

    fn headers_frame(&mut self, stream_id: u32, flags: u8, payload: &[u8]) -> io::Result<()> {
        if self.open_block.is_some() {
            return Err(protocol_error("HEADERS inside another header block"));
        }
        let mut rest = payload;
        let mut padding = 0;
        if flags & FLAG_PADDED != 0 {
            let (&pad, after) = rest
                .split_first()
                .ok_or_else(|| protocol_error("a PADDED HEADERS frame without its pad length"))?;
            padding = usize::from(pad);
            rest = after;
        }
        let mut priority = None;
        if flags & FLAG_PRIORITY != 0 {
            if rest.len() < 5 {
                return Err(protocol_error("a HEADERS frame cut inside its priority"));
            }
            priority = Some(rest[..5].try_into().unwrap());
            rest = &rest[5..];
        }
        if padding > rest.len() {
            return Err(protocol_error("HEADERS padding longer than the frame"));
        }
        let block = OpenBlock {
            stream_id,
            end_stream: flags & FLAG_END_STREAM != 0,
            priority,
            fragment: rest[..rest.len() - padding].to_vec(),
        };
        if flags & FLAG_END_HEADERS != 0 {
            self.finish(block)
        } else {
            self.open_block = Some(block);
            Ok(())
        }
    }

    fn continuation_frame(&mut self, stream_id: u32, flags: u8, payload: &[u8]) -> io::Result<()> {
        let mut block = self
            .open_block
            .take()
            .filter(|b| b.stream_id == stream_id)
            .ok_or_else(|| protocol_error("CONTINUATION outside its stream's header block"))?;
        if block.fragment.len() + payload.len() > MAX_HEADER_BLOCK {
            return Err(protocol_error("a header block larger than 1 MiB"));
        }
        block.fragment.extend_from_slice(payload);
        if flags & FLAG_END_HEADERS != 0 {
            self.finish(block)
        } else {
            self.open_block = Some(block);
            Ok(())
        }
    }

    /// Decodes a whole header block, mends its authority and queues it for the server.
    fn finish(&mut self, block: OpenBlock) -> io::Result<()> {
        let mut fields: Vec<(Vec<u8>, Vec<u8>)> = Vec::new();
        self.decoder
            .decode_with_cb(&block.fragment, |name, value| {
                fields.push((name.into_owned(), value.into_owned()))
            })
            .map_err(|e| {
                io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("HTTP/2 header block of stream {}: {e}", block.stream_id),
                )
            })?;
        let mut encoded = Vec::with_capacity(block.fragment.len() + 64);
        for (name, value) in &fields {
            let value = if name == b":authority" && !is_valid_authority(value) {
                REPLACEMENT
            } else {
                value.as_slice()
            };
            encode_literal(&mut encoded, name, value);
        }
        self.queue_block(&block, &encoded);
        Ok(())
    }

    /// Writes `encoded` as a HEADERS frame and as many CONTINUATIONs as it needs.
    fn queue_block(&mut self, block: &OpenBlock, encoded: &[u8]) {
        let first_room = MAX_FRAME_PAYLOAD - if block.priority.is_some() { 5 } else { 0 };
        let (first, mut rest) = encoded.split_at(encoded.len().min(first_room));
        let mut flags = 0;
        if block.end_stream {
            flags |= FLAG_END_STREAM;
        }
        if rest.is_empty() {
            flags |= FLAG_END_HEADERS;
        }
        let priority = block.priority.as_ref().map(|p| &p[..]).unwrap_or(&[]);
        if !priority.is_empty() {
            flags |= FLAG_PRIORITY;
        }
        self.queue_frame(FRAME_HEADERS, flags, block.stream_id, &[priority, first]);
        while !rest.is_empty() {
            let (chunk, after) = rest.split_at(rest.len().min(MAX_FRAME_PAYLOAD));
            rest = after;
            let flags = if rest.is_empty() { FLAG_END_HEADERS } else { 0 };
            self.queue_frame(FRAME_CONTINUATION, flags, block.stream_id, &[chunk]);
        }
    }

    fn queue_frame(&mut self, kind: u8, flags: u8, stream_id: u32, parts: &[&[u8]]) {
        let len: usize = parts.iter().map(|p| p.len()).sum();
        self.output.put_uint(len as u64, 3);
        self.output.put_u8(kind);
        self.output.put_u8(flags);
        self.output.put_u32(stream_id);
        for part in parts {
            self.output.extend_from_slice(part);
        }
    }
}

/// Whether h2 takes this `:authority` (the same parser h2's server uses).
fn is_valid_authority(value: &[u8]) -> bool {
    http::uri::Authority::try_from(value).is_ok()
}

/// One field as an HPACK literal without indexing, new name, no Huffman (RFC 7541 §6.2.2):
/// nothing enters the receiver's dynamic table.
fn encode_literal(out: &mut Vec<u8>, name: &[u8], value: &[u8]) {
    out.push(0x00);
    for string in [name, value] {
        encode_integer(out, string.len(), 7, 0x00);
        out.extend_from_slice(string);
    }
}

/// An HPACK integer with an N-bit prefix (RFC 7541 §5.1); `high` holds the bits above it.
fn encode_integer(out: &mut Vec<u8>, mut value: usize, prefix_bits: u8, high: u8) {
    let max = (1usize << prefix_bits) - 1;
    if value < max {
        out.push(high | value as u8);
        return;
    }
    out.push(high | max as u8);
    value -= max;
    while value >= 0x80 {
        out.push((value & 0x7f) as u8 | 0x80);
        value >>= 7;
    }
    out.push(value as u8);
}

fn protocol_error(what: &str) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidData,
        format!("HTTP/2 from the client: {what}"),
    )
}

impl<S: AsyncRead + Unpin> AsyncRead for AuthorityRewrite<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if buf.remaining() == 0 {
            return Poll::Ready(Ok(()));
        }
        loop {
            if !this.output.is_empty() {
                let n = buf.remaining().min(this.output.len());
                buf.put_slice(&this.output[..n]);
                this.output.advance(n);
                return Poll::Ready(Ok(()));
            }
            match this.state {
                Inbound::Preface(left) | Inbound::Payload(left) if !this.input.is_empty() => {
                    let n = left.min(this.input.len()).min(buf.remaining());
                    buf.put_slice(&this.input[..n]);
                    this.input.advance(n);
                    this.state = match (this.state, left - n) {
                        (_, 0) => Inbound::FrameStart,
                        (Inbound::Preface(_), left) => Inbound::Preface(left),
                        (_, left) => Inbound::Payload(left),
                    };
                    return Poll::Ready(Ok(()));
                }
                Inbound::FrameStart => {
                    let progressed = this.step()?;
                    if progressed {
                        continue;
                    }
                }
                _ => {}
            }
            if this.client_closed {
                // What is left is a cut frame; h2 sees the end of the stream either way.
                return Poll::Ready(Ok(()));
            }
            this.input.reserve(16 * 1024);
            match tokio_util::io::poll_read_buf(Pin::new(&mut this.inner), cx, &mut this.input) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Ready(Ok(0)) => this.client_closed = true,
                Poll::Ready(Ok(_)) => {}
            }
        }
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for AuthorityRewrite<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

impl<S: tonic::transport::server::Connected> tonic::transport::server::Connected
    for AuthorityRewrite<S>
{
    type ConnectInfo = S::ConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.inner.connect_info()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncReadExt;

    const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

    fn frame(kind: u8, flags: u8, stream_id: u32, payload: &[u8]) -> Vec<u8> {
        let mut out = BytesMut::new();
        out.put_uint(payload.len() as u64, 3);
        out.put_u8(kind);
        out.put_u8(flags);
        out.put_u32(stream_id);
        out.extend_from_slice(payload);
        out.to_vec()
    }

    /// Runs `input` through the rewrite, delivered `chunk` bytes at a time, reading with a
    /// buffer of `read_size`.
    async fn rewrite(input: &[u8], chunk: usize, read_size: usize) -> io::Result<Vec<u8>> {
        let mut builder = tokio_test_reader(input, chunk);
        let mut stream = AuthorityRewrite::new(&mut builder);
        let mut out = Vec::new();
        let mut buf = vec![0u8; read_size];
        loop {
            let n = stream.read(&mut buf).await?;
            if n == 0 {
                return Ok(out);
            }
            out.extend_from_slice(&buf[..n]);
        }
    }

    /// A reader that hands out `input` in pieces of `chunk` bytes.
    fn tokio_test_reader(input: &[u8], chunk: usize) -> ChunkedReader {
        ChunkedReader {
            data: input.to_vec(),
            at: 0,
            chunk,
        }
    }

    struct ChunkedReader {
        data: Vec<u8>,
        at: usize,
        chunk: usize,
    }

    impl AsyncRead for ChunkedReader {
        fn poll_read(
            self: Pin<&mut Self>,
            _: &mut Context<'_>,
            buf: &mut ReadBuf<'_>,
        ) -> Poll<io::Result<()>> {
            let this = self.get_mut();
            let n = this
                .chunk
                .min(this.data.len() - this.at)
                .min(buf.remaining());
            buf.put_slice(&this.data[this.at..this.at + n]);
            this.at += n;
            Poll::Ready(Ok(()))
        }
    }

    /// Splits a server-side byte stream into frames: (type, flags, stream, payload).
    fn frames(mut bytes: &[u8]) -> Vec<(u8, u8, u32, Vec<u8>)> {
        assert!(bytes.starts_with(PREFACE));
        bytes = &bytes[PREFACE.len()..];
        let mut out = Vec::new();
        while !bytes.is_empty() {
            let len = (bytes[0] as usize) << 16 | (bytes[1] as usize) << 8 | bytes[2] as usize;
            let stream = u32::from_be_bytes(bytes[5..9].try_into().unwrap());
            out.push((bytes[3], bytes[4], stream, bytes[9..9 + len].to_vec()));
            bytes = &bytes[9 + len..];
        }
        out
    }

    /// Decodes the header blocks of `frames` as h2 would: HEADERS plus CONTINUATIONs.
    fn header_lists(frames: &[(u8, u8, u32, Vec<u8>)]) -> Vec<Vec<(String, String)>> {
        let mut decoder = loona_hpack::Decoder::new();
        let mut lists = Vec::new();
        let mut block = Vec::new();
        for (kind, flags, _, payload) in frames {
            match *kind {
                FRAME_HEADERS => {
                    let skip = if flags & FLAG_PRIORITY != 0 { 5 } else { 0 };
                    assert_eq!(flags & FLAG_PADDED, 0, "padding is dropped");
                    block = payload[skip..].to_vec();
                }
                FRAME_CONTINUATION => block.extend_from_slice(payload),
                _ => continue,
            }
            if flags & FLAG_END_HEADERS != 0 {
                let fields = decoder.decode(&block).expect("decodes");
                lists.push(
                    fields
                        .into_iter()
                        .map(|(n, v)| {
                            (String::from_utf8(n).unwrap(), String::from_utf8(v).unwrap())
                        })
                        .collect(),
                );
            }
        }
        lists
    }

    fn request(authority: &str) -> Vec<(&'static [u8], Vec<u8>)> {
        vec![
            (b":method", b"POST".to_vec()),
            (b":scheme", b"http".to_vec()),
            (b":path", b"/runtime.v1.RuntimeService/Version".to_vec()),
            (b":authority", authority.as_bytes().to_vec()),
            (b"content-type", b"application/grpc".to_vec()),
            (b"te", b"trailers".to_vec()),
        ]
    }

    fn encode(
        encoder: &mut loona_hpack::Encoder<'static>,
        fields: &[(&'static [u8], Vec<u8>)],
    ) -> Vec<u8> {
        encoder.encode(fields.iter().map(|(n, v)| (*n, v.as_slice())))
    }

    #[tokio::test]
    async fn invalid_authorities_become_localhost_and_the_rest_is_kept() {
        // The client's encoder indexes as it goes, so the second and third requests refer
        // to table entries the first one made: the rewrite must track them.
        let mut encoder = loona_hpack::Encoder::new();
        let mut input = PREFACE.to_vec();
        input.extend(frame(0x4, 0, 0, &[0, 3, 0, 0, 0, 100])); // SETTINGS
        let authorities = [
            "/run/sandboxd/sandboxd.sock",
            "/run/sandboxd/sandboxd.sock",
            "run%2Fsandboxd%2Fsandboxd.sock",
            "localhost",
            "",
        ];
        for (i, authority) in authorities.iter().enumerate() {
            let stream = 1 + 2 * i as u32;
            let block = encode(&mut encoder, &request(authority));
            input.extend(frame(FRAME_HEADERS, FLAG_END_HEADERS, stream, &block));
            input.extend(frame(0x0, FLAG_END_STREAM, stream, b"\0\0\0\0\x05hello"));
        }
        for (chunk, read_size) in [(1, 1), (7, 3), (100_000, 100_000), (13, 64)] {
            let out = rewrite(&input, chunk, read_size).await.unwrap();
            let frames = frames(&out);
            assert_eq!(frames[0], (0x4, 0, 0, vec![0, 3, 0, 0, 0, 100]));
            let lists = header_lists(&frames);
            assert_eq!(lists.len(), authorities.len());
            for (list, sent) in lists.iter().zip(authorities) {
                let authority = &list.iter().find(|(n, _)| n == ":authority").unwrap().1;
                let expected = if sent == "localhost" {
                    "localhost"
                } else if is_valid_authority(sent.as_bytes()) {
                    sent
                } else {
                    "localhost"
                };
                assert_eq!(authority, expected, "sent {sent:?}");
                assert_eq!(list.len(), 6);
                assert_eq!(list[2].1, "/runtime.v1.RuntimeService/Version");
                assert_eq!(list[5], ("te".into(), "trailers".into()));
            }
            let data: Vec<_> = frames.iter().filter(|f| f.0 == 0x0).collect();
            assert_eq!(data.len(), authorities.len());
            assert!(data
                .iter()
                .all(|f| f.1 == FLAG_END_STREAM && f.3 == b"\0\0\0\0\x05hello"));
        }
    }

    #[tokio::test]
    async fn huffman_padding_priority_and_continuations_are_understood() {
        // RFC 7541 C.4.1: a request with a Huffman-coded, valid :authority.
        let huffman = [
            0x82, 0x86, 0x84, 0x41, 0x8c, 0xf1, 0xe3, 0xc2, 0xe5, 0xf2, 0x3a, 0x6b, 0xa0, 0xab,
            0x90, 0xf4, 0xff,
        ];
        let mut input = PREFACE.to_vec();
        // Padded (3 bytes) and with a priority.
        let mut payload = vec![3];
        payload.extend([0x80, 0, 0, 0, 16]);
        payload.extend(huffman);
        payload.extend([0, 0, 0]);
        input.extend(frame(
            FRAME_HEADERS,
            FLAG_END_HEADERS | FLAG_PADDED | FLAG_PRIORITY | FLAG_END_STREAM,
            1,
            &payload,
        ));
        // A block in three pieces, one field far larger than a frame.
        let mut encoder = loona_hpack::Encoder::new();
        let mut fields = request("/raw/socket/path.sock");
        fields.push((b"x-big", vec![b'a'; 40_000]));
        let block = encode(&mut encoder, &fields);
        let (a, rest) = block.split_at(10);
        let (b, c) = rest.split_at(20_000);
        input.extend(frame(FRAME_HEADERS, 0, 3, a));
        input.extend(frame(FRAME_CONTINUATION, 0, 3, b));
        input.extend(frame(FRAME_CONTINUATION, FLAG_END_HEADERS, 3, c));

        let out = rewrite(&input, 4096, 1000).await.unwrap();
        let frames = frames(&out);
        assert_eq!(
            frames[0].1,
            FLAG_END_HEADERS | FLAG_PRIORITY | FLAG_END_STREAM
        );
        assert_eq!(&frames[0].3[..5], &[0x80, 0, 0, 0, 16]);
        assert!(frames.iter().all(|f| f.3.len() <= MAX_FRAME_PAYLOAD));
        let lists = header_lists(&frames);
        assert_eq!(
            lists[0],
            [
                (":method", "GET"),
                (":scheme", "http"),
                (":path", "/"),
                (":authority", "www.example.com")
            ]
            .map(|(n, v)| (n.to_string(), v.to_string()))
        );
        assert_eq!(lists[1][3].1, "localhost");
        assert_eq!(lists[1][6].1.len(), 40_000);
    }

    #[tokio::test]
    async fn broken_header_blocks_close_the_connection() {
        let mut input = PREFACE.to_vec();
        // Index 70 names no entry of an empty dynamic table.
        input.extend(frame(FRAME_HEADERS, FLAG_END_HEADERS, 1, &[0x80 | 70]));
        let err = rewrite(&input, 64, 64).await.unwrap_err();
        assert!(err.to_string().contains("stream 1"), "{err}");

        let mut input = PREFACE.to_vec();
        input.extend(frame(FRAME_HEADERS, 0, 1, &[0x82]));
        input.extend(frame(0x0, 0, 1, b"data"));
        let err = rewrite(&input, 64, 64).await.unwrap_err();
        assert!(err.to_string().contains("CONTINUATION"), "{err}");
    }
}

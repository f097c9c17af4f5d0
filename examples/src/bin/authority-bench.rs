//! authority-bench: what sandboxd's `:authority` rewrite (sandboxd::server::authority)
//! costs per gRPC request, against passing the same bytes through untouched.
//!
//!   authority-bench [--requests 100000]
//!
//! Builds the byte stream a grpc-go client of crictl's era sends for `--requests` unary
//! calls (the preface, SETTINGS, then per call a HEADERS block with the socket path as
//! `:authority`, HPACK-compressed against the client's table as grpc-go does, and a DATA
//! frame with a small message), and reads it through the rewrite and through a plain
//! reader, 16 KiB at a time, as h2 reads a socket. Prints ns per request for each and the
//! difference, three runs each, the best kept.

use std::io;
use std::time::Instant;

use anyhow::{Context as _, Result};
use sandboxd::server::authority::AuthorityRewrite;
use tokio::io::{AsyncRead, AsyncReadExt};

fn frame(out: &mut Vec<u8>, kind: u8, flags: u8, stream: u32, payload: &[u8]) {
    out.extend_from_slice(&(payload.len() as u32).to_be_bytes()[1..]);
    out.push(kind);
    out.push(flags);
    out.extend_from_slice(&stream.to_be_bytes());
    out.extend_from_slice(payload);
}

fn client_stream(requests: u32) -> Vec<u8> {
    let mut out = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
    frame(&mut out, 0x4, 0, 0, &[]);
    let mut encoder = loona_hpack::Encoder::new();
    for i in 0..requests {
        let stream = 1 + 2 * i;
        let headers: [(&[u8], &[u8]); 8] = [
            (b":method", b"POST"),
            (b":scheme", b"http"),
            (b":path", b"/runtime.v1.RuntimeService/ListPodSandbox"),
            (b":authority", b"/run/sandboxd/sandboxd.sock"),
            (b"content-type", b"application/grpc"),
            (b"user-agent", b"grpc-go/1.51.0"),
            (b"te", b"trailers"),
            (b"grpc-timeout", b"1999m"),
        ];
        let block = encoder.encode(headers.iter().copied());
        frame(&mut out, 0x1, 0x4, stream, &block);
        frame(
            &mut out,
            0x0,
            0x1,
            stream,
            &[0, 0, 0, 0, 4, 0x0a, 0x02, 0x08, 0x01],
        );
    }
    out
}

async fn drain(mut reader: impl AsyncRead + Unpin) -> io::Result<usize> {
    let mut buf = vec![0u8; 16 * 1024];
    let mut total = 0;
    loop {
        let n = reader.read(&mut buf).await?;
        if n == 0 {
            return Ok(total);
        }
        total += n;
    }
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<()> {
    let mut requests = 100_000u32;
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        match flag.as_str() {
            "--requests" => requests = args.next().context("--requests needs a number")?.parse()?,
            other => anyhow::bail!("unknown argument {other:?}"),
        }
    }
    let input = client_stream(requests);
    let per_request = |elapsed: std::time::Duration| elapsed.as_nanos() as f64 / requests as f64;
    let (mut plain, mut rewritten) = (f64::MAX, f64::MAX);
    for _ in 0..3 {
        let start = Instant::now();
        drain(&input[..]).await?;
        plain = plain.min(per_request(start.elapsed()));
        let start = Instant::now();
        drain(AuthorityRewrite::new(&input[..])).await?;
        rewritten = rewritten.min(per_request(start.elapsed()));
    }
    println!("| requests | plain read (ns/request) | through the rewrite (ns/request) | cost of the rewrite (ns/request) |");
    println!("| --- | --- | --- | --- |");
    println!(
        "| {requests} | {plain:.0} | {rewritten:.0} | {:.0} |",
        rewritten - plain
    );
    Ok(())
}

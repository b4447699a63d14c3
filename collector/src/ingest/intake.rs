//! Reads a request body as a stream: wire bytes counted against the wire limit, inflated
//! piece by piece, framed as they come, every byte held reserved from the memory budget.
//!
//! Nothing is inflated ahead of the framer: an event item is refused as soon as it passes
//! its limit and an announced `length` over it before its payload arrives.

use std::collections::VecDeque;
use std::io::{self, BufRead, Read};

use axum::body::{Body, HttpBody as _};
use axum::http::{HeaderMap, header};
use bytes::{Buf, Bytes};
use http_body_util::BodyExt as _;

use super::envelope::{EnvelopeHeader, FrameError, Framer, Limits, OwnedItem};
use super::{IngestError, MAX_ENVELOPE, MAX_EVENT, MAX_WIRE};
use crate::budget::Reservation;

/// The item types whose payloads are kept; the others are skipped as they stream past.
pub const KEPT_ITEMS: &[&str] = &[
    "event",
    "client_report",
    "errscope.counts",
    "session",
    "sessions",
];
/// Inflated bytes handed to the framer at a time.
const PIECE: usize = 32 * 1024;
/// What any request holds besides its items: a wire frame, buffers, a zlib window.
const BASE: usize = 128 * 1024;

/// A body read to its end: the store endpoint's event, or an envelope's header and the
/// items it keeps.
#[derive(Debug)]
pub enum Framed {
    /// The one event of a store request.
    Store(Vec<u8>),
    /// An envelope.
    Envelope(EnvelopeHeader, Vec<OwnedItem>),
}

impl Framed {
    /// Bytes of payload held.
    pub fn payload_bytes(&self) -> usize {
        match self {
            Framed::Store(b) => b.len(),
            Framed::Envelope(_, items) => items.iter().map(|i| i.payload.len()).sum(),
        }
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Encoding {
    Identity,
    Gzip,
    Deflate,
    Brotli,
}

fn encoding(headers: &HeaderMap) -> Result<Encoding, IngestError> {
    let Some(v) = headers.get(header::CONTENT_ENCODING) else {
        return Ok(Encoding::Identity);
    };
    let v = v
        .to_str()
        .map_err(|_| IngestError::UnsupportedEncoding("Content-Encoding is not ASCII".into()))?;
    match v.trim().to_ascii_lowercase().as_str() {
        "" | "identity" => Ok(Encoding::Identity),
        "gzip" | "x-gzip" => Ok(Encoding::Gzip),
        "deflate" => Ok(Encoding::Deflate),
        "br" => Ok(Encoding::Brotli),
        other => Err(IngestError::UnsupportedEncoding(
            super::body::BodyError::Unsupported(other.chars().take(40).collect()).to_string(),
        )),
    }
}

/// Wire bytes waiting for the decoder; `WouldBlock` until more arrive or the body ends.
#[derive(Default)]
struct Feed {
    chunks: VecDeque<Bytes>,
    eof: bool,
}

impl Feed {
    fn buffered(&self) -> usize {
        self.chunks.iter().map(Bytes::len).sum()
    }
}

impl Read for Feed {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = {
            let src = self.fill_buf()?;
            let n = src.len().min(buf.len());
            buf[..n].copy_from_slice(&src[..n]);
            n
        };
        self.consume(n);
        Ok(n)
    }
}

impl BufRead for Feed {
    fn fill_buf(&mut self) -> io::Result<&[u8]> {
        while self.chunks.front().is_some_and(Bytes::is_empty) {
            self.chunks.pop_front();
        }
        match self.chunks.front() {
            Some(b) => Ok(b),
            None if self.eof => Ok(&[]),
            None => Err(io::ErrorKind::WouldBlock.into()),
        }
    }

    fn consume(&mut self, n: usize) {
        if let Some(b) = self.chunks.front_mut() {
            b.advance(n);
        }
    }
}

enum Decoder {
    /// Waiting for the first bytes, which choose the decoder (deflate) or its window (br).
    Pending(Feed),
    Gzip(flate2::bufread::MultiGzDecoder<Feed>),
    Zlib(flate2::bufread::ZlibDecoder<Feed>),
    Deflate(flate2::bufread::DeflateDecoder<Feed>),
    Brotli(Box<brotli_decompressor::Decompressor<Feed>>),
    Done,
}

impl Decoder {
    fn feed(&mut self) -> Option<&mut Feed> {
        match self {
            Decoder::Pending(f) => Some(f),
            Decoder::Gzip(d) => Some(d.get_mut()),
            Decoder::Zlib(d) => Some(d.get_mut()),
            Decoder::Deflate(d) => Some(d.get_mut()),
            Decoder::Brotli(d) => Some(d.get_mut()),
            Decoder::Done => None,
        }
    }

    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        match self {
            Decoder::Pending(_) | Decoder::Done => Ok(0),
            Decoder::Gzip(d) => d.read(out),
            Decoder::Zlib(d) => d.read(out),
            Decoder::Deflate(d) => d.read(out),
            Decoder::Brotli(d) => d.read(out),
        }
    }

    fn name(enc: Encoding, zlib: bool) -> &'static str {
        match enc {
            Encoding::Gzip => "gzip",
            Encoding::Deflate if zlib => "zlib deflate",
            Encoding::Deflate => "deflate",
            _ => "brotli",
        }
    }
}

/// The bytes a brotli decoder's window takes, from the stream's first byte(s) (RFC 7932
/// 9.1: WBITS), or `None` until enough has arrived.
fn brotli_window(first: &[u8]) -> Option<usize> {
    let b = *first.first()?;
    let bits = if b & 1 == 0 {
        16
    } else {
        match (b >> 1) & 7 {
            0 => match (b >> 4) & 7 {
                0 => 17,
                // Large-window streams: refused by the decoder; the largest standard window.
                1 => 24,
                m => 8 + u32::from(m),
            },
            n => 17 + u32::from(n),
        }
    };
    Some(1 << bits)
}

/// Where inflated bytes go.
enum Sink {
    Store(Vec<u8>),
    Envelope(Box<Framer>),
}

impl Sink {
    fn push(&mut self, data: &[u8]) -> Result<(), IngestError> {
        match self {
            Sink::Store(buf) => {
                if buf.len() + data.len() > MAX_EVENT {
                    return Err(IngestError::TooLarge(
                        super::body::BodyError::TooLarge(MAX_EVENT).to_string(),
                    ));
                }
                buf.extend_from_slice(data);
                Ok(())
            }
            Sink::Envelope(f) => f.push(data).map_err(frame_error),
        }
    }

    fn held(&self) -> usize {
        match self {
            Sink::Store(buf) => buf.capacity(),
            Sink::Envelope(f) => f.held(),
        }
    }
}

fn frame_error(e: FrameError) -> IngestError {
    match e {
        FrameError::Malformed(e) => IngestError::Malformed(e.to_string()),
        e => IngestError::TooLarge(e.to_string()),
    }
}

pub(super) fn wire_error(e: axum::Error) -> IngestError {
    let mut src: Option<&(dyn std::error::Error + 'static)> = Some(&e);
    while let Some(s) = src {
        if let Some(t) = s.downcast_ref::<crate::serve::BodyTimeout>() {
            return IngestError::Timeout(t.to_string());
        }
        src = s.source();
    }
    IngestError::Malformed(format!("could not read the request body: {e}"))
}

fn wire_too_large() -> IngestError {
    IngestError::TooLarge(format!("the request body exceeds {MAX_WIRE} bytes"))
}

/// Reads `body` (a store event if `store`, else an envelope) to its end, or to the first
/// reason to refuse it, with every byte it holds covered by `held` first. An envelope's
/// minidump attachments are kept up to `minidump` bytes each.
pub async fn read(
    body: Body,
    headers: &HeaderMap,
    store: bool,
    minidump: usize,
    held: &mut Reservation,
) -> Result<Framed, IngestError> {
    // A declared length over the limit is refused before a byte of the body is read.
    let hint = body.size_hint();
    if hint.lower() > MAX_WIRE as u64 {
        return Err(wire_too_large());
    }
    let enc = encoding(headers)?;
    let known_len = (enc == Encoding::Identity && hint.upper() == Some(hint.lower()))
        .then(|| hint.lower() as usize);
    let mut sink = if store {
        Sink::Store(Vec::new())
    } else {
        Sink::Envelope(Box::new(Framer::new(
            Limits {
                event: MAX_EVENT,
                kept: MAX_EVENT,
                total: MAX_ENVELOPE,
                keep: KEPT_ITEMS,
                minidump,
            },
            known_len,
        )))
    };
    held.cover(BASE)
        .await
        .map_err(|_| IngestError::MemoryBusy)?;
    let mut body = body;
    let mut wire = 0usize;
    let mut decoder = match enc {
        Encoding::Identity => Decoder::Done,
        _ => Decoder::Pending(Feed::default()),
    };
    let mut window = 0usize;
    // A corrupt stream: the rest of the wire is only counted (a body past the wire limit
    // is a 413 whatever it holds).
    let mut corrupt: Option<IngestError> = None;
    let mut out = vec![0u8; PIECE];
    loop {
        let frame = match body.frame().await {
            None => None,
            Some(Ok(f)) => match f.into_data() {
                Ok(d) => Some(d),
                Err(_) => continue,
            },
            Some(Err(e)) => return Err(wire_error(e)),
        };
        let at_end = frame.is_none();
        if let Some(data) = &frame {
            wire += data.len();
            if wire > MAX_WIRE {
                return Err(wire_too_large());
            }
        }
        if corrupt.is_some() {
            if at_end {
                break;
            }
            continue;
        }
        if enc == Encoding::Identity {
            match frame {
                Some(data) => {
                    held.cover(BASE + sink.held() + data.len())
                        .await
                        .map_err(|_| IngestError::MemoryBusy)?;
                    sink.push(&data)?;
                    tokio::task::consume_budget().await;
                    continue;
                }
                None => break,
            }
        }
        if let Some(feed) = decoder.feed() {
            match frame {
                Some(data) => feed.chunks.push_back(data),
                None => feed.eof = true,
            }
        }
        if let Decoder::Pending(feed) = &mut decoder {
            let buffered = feed.buffered();
            if buffered >= 2 || feed.eof {
                let mut first = [0u8; 2];
                let head: Vec<u8> = feed
                    .chunks
                    .iter()
                    .flat_map(|c| c.iter().copied())
                    .take(2)
                    .collect();
                first[..head.len()].copy_from_slice(&head);
                let feed = std::mem::take(feed);
                let zlib = head.len() >= 2
                    && first[0] & 0x0f == 8
                    && (u16::from(first[0]) << 8 | u16::from(first[1])) % 31 == 0;
                decoder = match enc {
                    Encoding::Gzip => Decoder::Gzip(flate2::bufread::MultiGzDecoder::new(feed)),
                    Encoding::Deflate if zlib => {
                        Decoder::Zlib(flate2::bufread::ZlibDecoder::new(feed))
                    }
                    Encoding::Deflate => {
                        Decoder::Deflate(flate2::bufread::DeflateDecoder::new(feed))
                    }
                    _ => {
                        window = brotli_window(&head).unwrap_or(0);
                        Decoder::Brotli(Box::new(brotli_decompressor::Decompressor::new(
                            feed,
                            16 * 1024,
                        )))
                    }
                };
            }
        }
        // Inflate what the wire gave so far, a piece at a time, each covered first.
        loop {
            held.cover(BASE + window + sink.held() + PIECE)
                .await
                .map_err(|_| IngestError::MemoryBusy)?;
            match decoder.read(&mut out) {
                Ok(0) => {
                    // The stream ended (or waits for its first bytes); anything after
                    // the end of a stream is ignored, as a whole-body decoder does.
                    if !matches!(decoder, Decoder::Pending(_)) {
                        decoder = Decoder::Done;
                    }
                    break;
                }
                Ok(n) => sink.push(&out[..n])?,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) => {
                    let zlib = matches!(decoder, Decoder::Zlib(_));
                    corrupt = Some(IngestError::Malformed(
                        super::body::BodyError::Corrupt(Decoder::name(enc, zlib), e.to_string())
                            .to_string(),
                    ));
                    decoder = Decoder::Done;
                    break;
                }
            }
            tokio::task::consume_budget().await;
        }
        if at_end {
            break;
        }
    }
    if let Some(e) = corrupt {
        return Err(e);
    }
    if let Decoder::Pending(_) = decoder {
        // Declared compressed, but empty.
        return Err(IngestError::Malformed(
            super::body::BodyError::Corrupt(Decoder::name(enc, false), "empty body".into())
                .to_string(),
        ));
    }
    drop(out);
    match sink {
        Sink::Store(buf) => Ok(Framed::Store(buf)),
        Sink::Envelope(f) => {
            let (header, items) = f.finish().map_err(frame_error)?;
            Ok(Framed::Envelope(header, items))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write as _;

    #[test]
    fn brotli_windows() {
        // "hello" at quality 11 starts 0x0b: WBITS 22.
        assert_eq!(brotli_window(&[0x0b]), Some(1 << 22));
        assert_eq!(brotli_window(&[0x00]), Some(1 << 16));
        assert_eq!(brotli_window(&[]), None);
    }

    /// Each decoder resumes after `WouldBlock`: fed a byte at a time it gives what it
    /// gives fed at once.
    #[test]
    fn decoders_resume_when_fed_a_byte_at_a_time() {
        let data = b"hello envelope, hello envelope, hello envelope".repeat(200);
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        gz.write_all(&data).unwrap();
        let gz = gz.finish().unwrap();
        let mut z = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::fast());
        z.write_all(&data).unwrap();
        let z = z.finish().unwrap();
        let br = [0x0b, 0x02, 0x80, 0x68, 0x65, 0x6c, 0x6c, 0x6f, 0x03];
        let make = |which: &str, feed: Feed| -> Decoder {
            match which {
                "gzip" => Decoder::Gzip(flate2::bufread::MultiGzDecoder::new(feed)),
                "zlib" => Decoder::Zlib(flate2::bufread::ZlibDecoder::new(feed)),
                _ => Decoder::Brotli(Box::new(brotli_decompressor::Decompressor::new(feed, 4096))),
            }
        };
        for (which, wire, want) in [
            ("gzip", &gz[..], &data[..]),
            ("zlib", &z[..], &data[..]),
            ("br", &br[..], &b"hello"[..]),
        ] {
            let mut d = make(which, Feed::default());
            let mut got = Vec::new();
            let mut out = [0u8; 100];
            for (i, b) in wire.iter().enumerate() {
                let feed = d.feed().unwrap();
                feed.chunks.push_back(Bytes::copy_from_slice(&[*b]));
                feed.eof = i + 1 == wire.len();
                loop {
                    match d.read(&mut out) {
                        Ok(0) => break,
                        Ok(n) => got.extend_from_slice(&out[..n]),
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                        Err(e) => panic!("{which}: {e}"),
                    }
                }
            }
            assert_eq!(got, want, "{which}");
        }
        // A truncated stream is an error once the feed ends.
        let mut d = make("gzip", Feed::default());
        let feed = d.feed().unwrap();
        feed.chunks
            .push_back(Bytes::copy_from_slice(&gz[..gz.len() / 2]));
        feed.eof = true;
        let mut out = vec![0u8; 1 << 16];
        let r = loop {
            match d.read(&mut out) {
                Ok(0) => break Ok(()),
                Ok(_) => continue,
                Err(e) => break Err(e),
            }
        };
        assert!(r.is_err());
    }
}

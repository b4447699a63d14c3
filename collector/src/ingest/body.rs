//! Request bodies: `Content-Encoding` decoding with a hard output bound.

use std::io::Read;

/// Why a body could not be decoded.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum BodyError {
    /// The encoding is not one the collector speaks.
    #[error("unsupported Content-Encoding `{0}`; use gzip, deflate, br or none")]
    Unsupported(String),
    /// The decoded body would exceed the limit.
    #[error("the decompressed body exceeds {0} bytes")]
    TooLarge(usize),
    /// The compressed stream is corrupt.
    #[error("the body is not valid {0}: {1}")]
    Corrupt(&'static str, String),
}

/// Decodes `body` per its `Content-Encoding`, never producing more than `limit` bytes.
pub fn decode(encoding: Option<&str>, body: &[u8], limit: usize) -> Result<Vec<u8>, BodyError> {
    let encoding = encoding
        .map(|e| e.trim().to_ascii_lowercase())
        .unwrap_or_default();
    match encoding.as_str() {
        "" | "identity" => {
            if body.len() > limit {
                return Err(BodyError::TooLarge(limit));
            }
            Ok(body.to_vec())
        }
        "gzip" | "x-gzip" => bounded(flate2::read::MultiGzDecoder::new(body), limit, "gzip"),
        "deflate" => {
            // RFC 9110 says zlib-wrapped; some clients send raw deflate. A zlib stream starts
            // with a CMF/FLG pair whose 16-bit value is a multiple of 31.
            let zlib = body.len() >= 2
                && body[0] & 0x0f == 8
                && (u16::from(body[0]) << 8 | u16::from(body[1])) % 31 == 0;
            if zlib {
                bounded(flate2::read::ZlibDecoder::new(body), limit, "zlib deflate")
            } else {
                bounded(flate2::read::DeflateDecoder::new(body), limit, "deflate")
            }
        }
        "br" => bounded(
            brotli_decompressor::Decompressor::new(body, 64 * 1024),
            limit,
            "brotli",
        ),
        other => Err(BodyError::Unsupported(other.chars().take(40).collect())),
    }
}

fn bounded<R: Read>(reader: R, limit: usize, name: &'static str) -> Result<Vec<u8>, BodyError> {
    let mut out = Vec::new();
    let read = reader
        .take(limit as u64 + 1)
        .read_to_end(&mut out)
        .map_err(|e| BodyError::Corrupt(name, e.to_string()))?;
    if read > limit {
        return Err(BodyError::TooLarge(limit));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn gzip(data: &[u8]) -> Vec<u8> {
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        e.write_all(data).unwrap();
        e.finish().unwrap()
    }

    #[test]
    fn decodes_every_encoding() {
        let data = b"hello envelope".repeat(10);
        assert_eq!(decode(None, &data, 1000).unwrap(), data);
        assert_eq!(decode(Some("GZIP"), &gzip(&data), 1000).unwrap(), data);
        let mut z = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::fast());
        z.write_all(&data).unwrap();
        assert_eq!(
            decode(Some("deflate"), &z.finish().unwrap(), 1000).unwrap(),
            data
        );
        let mut raw = flate2::write::DeflateEncoder::new(Vec::new(), flate2::Compression::fast());
        raw.write_all(&data).unwrap();
        assert_eq!(
            decode(Some("deflate"), &raw.finish().unwrap(), 1000).unwrap(),
            data
        );
        // "hello" compressed with brotli (quality 11).
        let br = [0x0b, 0x02, 0x80, 0x68, 0x65, 0x6c, 0x6c, 0x6f, 0x03];
        assert_eq!(decode(Some("br"), &br, 1000).unwrap(), b"hello");
    }

    #[test]
    fn bounds_and_errors() {
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
        e.write_all(&vec![0u8; 10 * 1024 * 1024]).unwrap();
        let bomb = e.finish().unwrap();
        assert!(bomb.len() < 50_000, "{}", bomb.len());
        assert_eq!(
            decode(Some("gzip"), &bomb, 1024 * 1024),
            Err(BodyError::TooLarge(1024 * 1024))
        );
        assert!(matches!(
            decode(Some("gzip"), b"not gzip", 100),
            Err(BodyError::Corrupt(..))
        ));
        assert!(matches!(
            decode(Some("zstd"), b"x", 100),
            Err(BodyError::Unsupported(_))
        ));
        assert_eq!(decode(None, b"12345", 4), Err(BodyError::TooLarge(4)));
    }
}

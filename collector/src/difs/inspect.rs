//! What an uploaded file is: its format, ids, architecture and features, read with
//! `symbolic-debuginfo`; source bundles are also checked against zip bombs.

use std::io::{Cursor, Read};

use symbolic_debuginfo::{FileFormat, Object};

use super::{DifError, DifKind, Features};

/// The most a source bundle may inflate to, in bytes.
const MAX_BUNDLE_UNCOMPRESSED: u64 = 1 << 30;
/// The most a source bundle may inflate per compressed byte (source code packs 5-10x).
const MAX_BUNDLE_RATIO: u64 = 50;
/// The most entries a source bundle may hold.
const MAX_BUNDLE_ENTRIES: usize = 200_000;

/// What [`inspect`] found in a file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Inspected {
    /// The container format.
    pub kind: DifKind,
    /// Sentry's object kind name: `dbg`, `exe`, `lib`, `src`, ...
    pub object_kind: String,
    /// The CPU architecture: `x86_64`, `arm64`, ...
    pub arch: String,
    /// The debug id, lower-case (`uuid` or `uuid-age`).
    pub debug_id: String,
    /// The code id (the GNU build id of an ELF file, in hex), when the file has one.
    pub code_id: Option<String>,
    /// What the file can be used for.
    pub features: Features,
}

/// Reads a debug file's identity and features; a file that is not a complete ELF,
/// Breakpad or source bundle file is an error that says what is wrong with it.
pub fn inspect(data: &[u8]) -> Result<Inspected, DifError> {
    let format = Object::peek(data);
    let kind = match format {
        FileFormat::Elf => DifKind::Elf,
        FileFormat::Breakpad => DifKind::Breakpad,
        FileFormat::SourceBundle => DifKind::SourceBundle,
        FileFormat::Unknown => {
            return Err(DifError::Invalid(
                "not a debug file: expected an ELF file, Breakpad symbols or a source bundle"
                    .into(),
            ));
        }
        other => {
            return Err(DifError::Invalid(format!(
                "{other} files are not supported: upload ELF files, Breakpad symbols or source bundles"
            )));
        }
    };
    if kind == DifKind::Elf {
        check_elf_extent(data)?;
    }
    if kind == DifKind::SourceBundle {
        check_zip(data)?;
    }
    let object = Object::parse(data)
        .map_err(|e| DifError::Invalid(format!("the {kind} file cannot be read: {e}")))?;
    let debug_id = object.debug_id();
    if debug_id.is_nil() {
        return Err(DifError::Invalid(format!(
            "the {kind} file has no debug id{}",
            if kind == DifKind::Elf {
                " (link with a GNU build id: -Wl,--build-id)"
            } else {
                ""
            }
        )));
    }
    let features = Features {
        symtab: object.has_symbols(),
        debug: object.has_debug_info(),
        unwind: object.has_unwind_info(),
        sources: object.has_sources(),
    };
    if kind != DifKind::SourceBundle && !features.symtab && !features.debug && !features.unwind {
        return Err(DifError::Invalid(format!(
            "the {kind} file has no symbols, debug information or unwind information: \
             upload the unstripped binary or its debug companion"
        )));
    }
    Ok(Inspected {
        kind,
        object_kind: object.kind().name().to_owned(),
        arch: object.arch().name().to_owned(),
        debug_id: debug_id.to_string().to_ascii_lowercase(),
        code_id: object.code_id().map(|c| c.as_str().to_ascii_lowercase()),
        features,
    })
}

/// A truncated ELF file still has intact headers at its start: every section and
/// segment that has contents must lie inside the file.
fn check_elf_extent(data: &[u8]) -> Result<(), DifError> {
    let truncated = |what: &str| {
        DifError::Invalid(format!(
            "the ELF file is truncated or malformed: {what} lies past its end ({} bytes)",
            data.len()
        ))
    };
    let short = || DifError::Invalid("the ELF file is truncated: its header is incomplete".into());
    if data.len() < 64 {
        return Err(short());
    }
    let is64 = match data[4] {
        1 => false,
        2 => true,
        _ => {
            return Err(DifError::Invalid(
                "the ELF file has an unknown class".into(),
            ));
        }
    };
    let le = match data[5] {
        1 => true,
        2 => false,
        _ => {
            return Err(DifError::Invalid(
                "the ELF file has an unknown byte order".into(),
            ));
        }
    };
    let rd = |off: usize, n: usize| -> Result<u64, DifError> {
        let b = data.get(off..off + n).ok_or_else(short)?;
        let mut v = 0u64;
        for i in 0..n {
            let byte = if le { b[n - 1 - i] } else { b[i] };
            v = (v << 8) | u64::from(byte);
        }
        Ok(v)
    };
    let len = data.len() as u64;
    let (shoff, shentsize, shnum) = if is64 {
        (rd(0x28, 8)?, rd(0x3A, 2)?, rd(0x3C, 2)?)
    } else {
        (rd(0x20, 4)?, rd(0x2E, 2)?, rd(0x30, 2)?)
    };
    if shnum > 0 {
        let end = shoff
            .checked_add(shentsize.saturating_mul(shnum))
            .ok_or_else(|| truncated("the section header table"))?;
        if end > len {
            return Err(truncated("the section header table"));
        }
        for i in 0..shnum {
            let h = (shoff + i * shentsize) as usize;
            let (ty, off, size) = if is64 {
                (rd(h + 4, 4)?, rd(h + 0x18, 8)?, rd(h + 0x20, 8)?)
            } else {
                (rd(h + 4, 4)?, rd(h + 0x10, 4)?, rd(h + 0x14, 4)?)
            };
            const SHT_NOBITS: u64 = 8;
            const SHT_NULL: u64 = 0;
            if ty == SHT_NOBITS || ty == SHT_NULL {
                continue;
            }
            if off.checked_add(size).is_none_or(|e| e > len) {
                return Err(truncated(&format!("section {i}")));
            }
        }
    }
    Ok(())
}

/// Walks every entry of a zip archive, inflating it into nothing, and fails as soon as
/// the archive holds more than it may: a zip bomb costs a bounded amount of CPU.
fn check_zip(data: &[u8]) -> Result<(), DifError> {
    let bad = |e: &dyn std::fmt::Display| {
        DifError::Invalid(format!("the source bundle is not a valid zip archive: {e}"))
    };
    let mut zip = zip::ZipArchive::new(Cursor::new(data)).map_err(|e| bad(&e))?;
    if zip.len() > MAX_BUNDLE_ENTRIES {
        return Err(DifError::Invalid(format!(
            "the source bundle holds {} files; at most {MAX_BUNDLE_ENTRIES} are accepted",
            zip.len()
        )));
    }
    let budget = (data.len() as u64)
        .saturating_mul(MAX_BUNDLE_RATIO)
        .clamp(64 << 20, MAX_BUNDLE_UNCOMPRESSED);
    let bomb = || {
        DifError::Invalid(format!(
            "the source bundle inflates to more than {budget} bytes ({} bytes compressed): \
             refused as a zip bomb",
            data.len()
        ))
    };
    let mut total = 0u64;
    for i in 0..zip.len() {
        let entry = zip.by_index(i).map_err(|e| bad(&e))?;
        if total.saturating_add(entry.size()) > budget {
            return Err(bomb());
        }
        let mut limited = entry.take(budget - total + 1);
        let n = std::io::copy(&mut limited, &mut std::io::sink()).map_err(|e| bad(&e))?;
        total += n;
        if total > budget {
            return Err(bomb());
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rejects_what_is_not_a_debug_file() {
        let e = inspect(b"hello, world\n").unwrap_err();
        assert!(e.to_string().contains("not a debug file"), "{e}");
        let mut elf = vec![0x7f, b'E', b'L', b'F', 2, 1, 1, 0];
        elf.resize(40, 0);
        let e = inspect(&elf).unwrap_err();
        assert!(e.to_string().contains("truncated"), "{e}");
    }

    #[test]
    fn a_zip_bomb_is_refused() {
        use std::io::Write as _;
        let mut w = zip::ZipWriter::new(Cursor::new(Vec::new()));
        let opts = zip::write::SimpleFileOptions::default()
            .compression_method(zip::CompressionMethod::Deflated);
        w.start_file("files/zeros", opts).unwrap();
        let zeros = vec![0u8; 1 << 20];
        for _ in 0..80 {
            w.write_all(&zeros).unwrap();
        }
        let mut data = b"SYSB\x02\0\0\0".to_vec();
        data.extend(w.finish().unwrap().into_inner());
        assert!(data.len() < 1 << 20);
        let e = inspect(&data).unwrap_err();
        assert!(e.to_string().contains("zip bomb"), "{e}");
    }
}

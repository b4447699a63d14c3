//! The executable and the shared objects loaded in the process, in Sentry's
//! `debug_meta.images` shape, so a server can symbolicate the addresses of a stack.

use std::sync::Arc;

use findshlibs::{SharedLibrary as _, SharedLibraryId, TargetSharedLibrary};
use serde_json::value::RawValue;

use crate::event::DebugImage;

/// The images of the process, read once (`dl_iterate_phdr`, build ids from the notes
/// mapped in memory, so a binary replaced on disk after the start does not mislead).
#[derive(Debug, Default)]
pub(crate) struct Images {
    /// Sorted by `image_addr`, none overlapping.
    list: Vec<Loaded>,
    /// `list` as the JSON array of `debug_meta.images`, serialized once.
    json: Option<Arc<RawValue>>,
}

#[derive(Debug)]
struct Loaded {
    start: u64,
    end: u64,
    image: DebugImage,
}

impl Images {
    /// Reads the images of the running process. Meant for the agent's thread: it walks
    /// the loader's list (a lock inside libc) and allocates.
    pub(crate) fn load() -> Self {
        let mut list = Vec::new();
        if findshlibs::TARGET_SUPPORTED {
            TargetSharedLibrary::each(|shlib| {
                if let Some(loaded) = loaded(shlib) {
                    list.push(loaded);
                }
            });
        }
        Self::from_images(list.into_iter().map(|l| l.image).collect())
    }

    fn from_images(images: Vec<DebugImage>) -> Self {
        let mut list: Vec<Loaded> = images
            .into_iter()
            .filter_map(|image| {
                let start = parse_hex(&image.image_addr)?;
                Some(Loaded {
                    start,
                    end: start.saturating_add(image.image_size),
                    image,
                })
            })
            .collect();
        list.sort_by_key(|l| l.start);
        let typed: Vec<&DebugImage> = list.iter().map(|l| &l.image).collect();
        let json = serde_json::value::to_raw_value(&typed).ok().map(Arc::from);
        Self { list, json }
    }

    /// The image an absolute address falls in.
    pub(crate) fn find(&self, addr: u64) -> Option<&DebugImage> {
        let idx = self.list.partition_point(|l| l.start <= addr);
        let candidate = self.list.get(idx.checked_sub(1)?)?;
        (addr < candidate.end).then_some(&candidate.image)
    }

    /// The images, for events a `before_send` hook looks at.
    pub(crate) fn to_vec(&self) -> Vec<DebugImage> {
        self.list.iter().map(|l| l.image.clone()).collect()
    }

    /// The images as JSON, serialized once.
    pub(crate) fn json(&self) -> Option<&Arc<RawValue>> {
        self.json.as_ref()
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.list.is_empty()
    }
}

fn loaded(shlib: &TargetSharedLibrary<'_>) -> Option<Loaded> {
    let start = shlib.actual_load_addr().0;
    if start == usize::MAX {
        // No loadable segment: nothing an address can fall in.
        return None;
    }
    let size = shlib.len() as u64;
    let build_id = match shlib.id() {
        Some(SharedLibraryId::GnuBuildId(bytes)) if !bytes.is_empty() => Some(bytes),
        _ => None,
    };
    let name = shlib.name().to_string_lossy().into_owned();
    // The loader names the main program with an empty string.
    let code_file = if name.is_empty() {
        std::env::current_exe()
            .map(|p| p.display().to_string())
            .unwrap_or_else(|_| "<main>".to_owned())
    } else {
        name
    };
    Some(Loaded {
        start: start as u64,
        end: (start as u64).saturating_add(size),
        image: DebugImage {
            ty: "elf".to_owned(),
            code_file,
            code_id: build_id.as_deref().map(hex),
            debug_id: build_id.as_deref().map(debug_id),
            image_addr: format!("{start:#x}"),
            image_size: size,
            image_vmaddr: format!("{:#x}", shlib.stated_load_addr().0),
            arch: sentry_arch().to_owned(),
        },
    })
}

/// Sentry's debug id of an ELF file from its GNU build id, as symbolic computes it: the
/// first 16 bytes (zero-padded) read as a little-endian GUID (the first three fields
/// byte-swapped), age 0, so `68220ae2c65d65c1…` becomes `e20a2268-5dc6-c165-…`.
pub(crate) fn debug_id(build_id: &[u8]) -> String {
    let mut data = [0u8; 16];
    let len = build_id.len().min(16);
    data[..len].copy_from_slice(&build_id[..len]);
    if cfg!(target_endian = "little") {
        data[0..4].reverse();
        data[4..6].reverse();
        data[6..8].reverse();
    }
    uuid::Uuid::from_bytes(data).hyphenated().to_string()
}

fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write as _;
    bytes.iter().fold(String::new(), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}

fn parse_hex(s: &str) -> Option<u64> {
    u64::from_str_radix(s.strip_prefix("0x")?, 16).ok()
}

/// The architecture as Sentry names it (`arm64`, not `aarch64`).
fn sentry_arch() -> &'static str {
    match std::env::consts::ARCH {
        "aarch64" => "arm64",
        "arm" => "arm",
        "x86" => "x86",
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_ids_are_derived_from_build_ids_as_sentry_does() {
        // The ELF image example of Sentry's protocol (Relay's `NativeDebugImage` docs):
        // code_id 68220ae2c65d65c1b6aaa12fa6765a6ec2f5f434 has debug_id
        // e20a2268-5dc6-c165-b6aa-a12fa6765a6e.
        let build_id = [
            0x68, 0x22, 0x0a, 0xe2, 0xc6, 0x5d, 0x65, 0xc1, 0xb6, 0xaa, 0xa1, 0x2f, 0xa6, 0x76,
            0x5a, 0x6e, 0xc2, 0xf5, 0xf4, 0x34,
        ];
        assert_eq!(hex(&build_id), "68220ae2c65d65c1b6aaa12fa6765a6ec2f5f434");
        assert_eq!(debug_id(&build_id), "e20a2268-5dc6-c165-b6aa-a12fa6765a6e");
        // A short (8-byte, lld `--build-id=fast`) id is padded with zeros.
        assert_eq!(
            debug_id(&build_id[..8]),
            "e20a2268-5dc6-c165-0000-000000000000"
        );
    }

    #[test]
    fn the_running_test_binary_is_among_the_images() {
        let images = Images::load();
        assert!(!images.is_empty());
        let exe = std::env::current_exe().expect("exe").display().to_string();
        let main = images
            .to_vec()
            .into_iter()
            .find(|i| i.code_file == exe)
            .expect("the executable is listed");
        assert_eq!(main.ty, "elf");
        assert!(main.image_size > 0);
        // This function's own address falls in the executable's image.
        let here = Images::load as fn() -> Images as usize as u64;
        let found = images.find(here).expect("an image holds this code");
        assert_eq!(found.code_file, exe);
        assert_eq!(
            found.debug_id,
            found.code_id.as_deref().map(|c| {
                let bytes: Vec<u8> = (0..c.len())
                    .step_by(2)
                    .map(|i| u8::from_str_radix(&c[i..i + 2], 16).expect("hex"))
                    .collect();
                debug_id(&bytes)
            })
        );
        assert!(images.find(0).is_none());
        let json: serde_json::Value =
            serde_json::from_str(images.json().expect("json").get()).expect("valid");
        assert_eq!(json.as_array().map(Vec::len), Some(images.to_vec().len()));
        assert!(
            json[0]["image_addr"]
                .as_str()
                .is_some_and(|a| a.starts_with("0x"))
        );
    }
}

//! Rewrites the frames of a parsed event: each frame without a line, in an image whose
//! debug file is known, becomes the frames at its address (inlined ones expanded), with
//! in-app recomputed; then source context; then the list of images still missing a file.

use std::collections::{BTreeSet, HashMap};
use std::path::PathBuf;
use std::sync::Arc;

use serde_json::{Map, Value, json};

use super::Symbolicator;
use super::cache::{Misses, SymFile};
use super::event::{self, Adjustment, Image};
use super::inapp::InAppRules;
use super::resolve::{self, Resolved};

/// What symbolicating one event did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Outcome {
    /// Frames that were replaced by symbolicated ones.
    pub frames: usize,
    /// Frames that got source context.
    pub contexts: usize,
    /// Debug ids of the images whose frames wanted symbols and have no debug file.
    pub missing: Vec<String>,
    /// Whether the event changed.
    pub changed: bool,
}

/// The key of the stored event under which the collector keeps its notes.
pub const NOTES: &str = "errscope";

impl Symbolicator {
    /// Symbolicates a parsed event in place.
    pub fn symbolicate_value(&self, ev: &mut Value, misses: Misses) -> Outcome {
        let images = event::images(ev);
        let mut out = Outcome::default();
        if images.is_empty() {
            return out;
        }
        let main = images
            .iter()
            .find(|i| !i.code_file.as_deref().unwrap_or("").contains(".so"))
            .or(images.first())
            .and_then(|i| i.code_file.clone());
        let rules = InAppRules::of_event(ev, main.as_deref());
        let mut files: HashMap<usize, Option<Arc<SymFile>>> = HashMap::new();
        let mut missing: BTreeSet<usize> = BTreeSet::new();

        for st in event::stacktraces_mut(ev) {
            let adjustment = Adjustment::of(st);
            let Some(Value::Array(frames)) = st.get_mut("frames") else {
                continue;
            };
            let mut old = std::mem::take(frames);
            let n = old.len();
            let mut new = Vec::with_capacity(n + 8);
            let mut i = 0;
            while i < n {
                let addr = event::frame_addr(&old[i]);
                let mut j = i + 1;
                if addr.is_some() {
                    while j < n && event::frame_addr(&old[j]) == addr {
                        j += 1;
                    }
                }
                let wants = addr.is_some() && old[i..j].iter().all(event::needs_symbols);
                let located = addr
                    .filter(|_| wants)
                    .and_then(|a| event::locate(&images, &old[i], a));
                if let Some((idx, rel)) = located {
                    let img = &images[idx];
                    let file = files
                        .entry(idx)
                        .or_insert_with(|| {
                            self.caches.get(
                                self.lookup.as_ref(),
                                &img.debug_id,
                                img.code_id.as_deref(),
                                misses,
                            )
                        })
                        .clone();
                    match file {
                        Some(file) => {
                            // The newest frame is last; with `all_but_first` its address
                            // is the faulting instruction itself.
                            let adjust = match adjustment {
                                Adjustment::All => true,
                                Adjustment::None => false,
                                Adjustment::AllButFirst => j != n,
                            };
                            let at = if adjust { rel.saturating_sub(1) } else { rel };
                            let mut resolved = file
                                .symcache()
                                .map(|c| resolve::lookup(&c, at))
                                .unwrap_or_default();
                            file.columns.fill(at, &mut resolved);
                            if !resolved.is_empty() {
                                let template = std::mem::take(&mut old[i]);
                                for r in &resolved {
                                    new.push(symbolicated(&template, r, &rules));
                                }
                                out.frames += j - i;
                                i = j;
                                continue;
                            }
                        }
                        None => {
                            let unnamed = old[i..j].iter().any(|f| {
                                f.get("function")
                                    .and_then(Value::as_str)
                                    .is_none_or(|s| s.is_empty() || s == "<unknown>")
                            });
                            if unnamed || !img.is_system() {
                                missing.insert(idx);
                            }
                        }
                    }
                }
                // A system library's frames are never the application's (an SDK that
                // found nothing in-app marks every frame in-app).
                let system = addr
                    .and_then(|a| event::locate(&images, &old[i], a))
                    .is_some_and(|(idx, _)| images[idx].is_system());
                for f in &mut old[i..j] {
                    if system
                        && let Value::Object(m) = f
                        && m.get("in_app") == Some(&Value::Bool(true))
                    {
                        m.insert("in_app".into(), false.into());
                        out.changed = true;
                    }
                    new.push(std::mem::take(f));
                }
                i = j;
            }
            *frames = new;
        }
        out.changed |= out.frames > 0;

        out.contexts = self.add_context(ev, &images);
        out.changed |= out.contexts > 0;

        out.missing = missing
            .iter()
            .map(|&i| images[i].debug_id.clone())
            .collect();
        if set_missing(ev, &images, &missing) {
            out.changed = true;
        }
        out
    }

    /// Fills `pre_context`/`context_line`/`post_context` of frames in images that have a
    /// source bundle. Returns how many frames got context.
    fn add_context(&self, ev: &mut Value, images: &[Image]) -> usize {
        // (trace, frame, image, path, line) of each frame that could take context.
        let mut wanted: Vec<(usize, usize, usize, String, u64)> = Vec::new();
        let mut bundles: HashMap<usize, Option<PathBuf>> = HashMap::new();
        for (t, st) in event::stacktraces_mut(ev).into_iter().enumerate() {
            let Some(Value::Array(frames)) = st.get("frames") else {
                continue;
            };
            for (f, frame) in frames.iter().enumerate() {
                if !event::needs_context(frame) {
                    continue;
                }
                let Some(addr) = event::frame_addr(frame) else {
                    continue;
                };
                let Some((idx, _)) = event::locate(images, frame, addr) else {
                    continue;
                };
                let bundle = bundles
                    .entry(idx)
                    .or_insert_with(|| self.bundle_of(&images[idx].debug_id));
                if bundle.is_none() {
                    continue;
                }
                let path = frame["abs_path"].as_str().unwrap_or_default().to_owned();
                let line = frame["lineno"].as_u64().unwrap_or(0);
                wanted.push((t, f, idx, path, line));
            }
        }
        if wanted.is_empty() {
            return 0;
        }
        let mut contexts = Vec::with_capacity(wanted.len());
        for (idx, bundle) in &bundles {
            let Some(bundle) = bundle else { continue };
            let mine: Vec<&(usize, usize, usize, String, u64)> =
                wanted.iter().filter(|w| w.2 == *idx).collect();
            let asks: Vec<(String, u64)> = mine.iter().map(|w| (w.3.clone(), w.4)).collect();
            let got = self.sources.contexts(&images[*idx].debug_id, bundle, &asks);
            for (w, c) in mine.into_iter().zip(got) {
                if let Some(c) = c {
                    contexts.push((w.0, w.1, c));
                }
            }
        }
        let n = contexts.len();
        let mut traces = event::stacktraces_mut(ev);
        for (t, f, c) in contexts {
            if let Some(Value::Array(frames)) =
                traces.get_mut(t).and_then(|st| st.get_mut("frames"))
                && let Some(Value::Object(frame)) = frames.get_mut(f)
            {
                frame.insert("pre_context".into(), json!(c.pre));
                frame.insert("context_line".into(), json!(c.line));
                frame.insert("post_context".into(), json!(c.post));
            }
        }
        n
    }
}

/// A copy of `template` (the frame as the SDK sent it) for one resolved function.
fn symbolicated(template: &Value, r: &Resolved, rules: &InAppRules) -> Value {
    let mut f: Map<String, Value> = template.as_object().cloned().unwrap_or_default();
    f.insert("function".into(), r.function.clone().into());
    match resolve::module_of(&r.function) {
        Some(m) => f.insert("module".into(), m.into()),
        None => f.remove("module"),
    };
    match &r.abs_path {
        Some(p) => {
            f.insert("filename".into(), resolve::short_path(p).into());
            f.insert("abs_path".into(), p.clone().into());
        }
        None => {
            f.remove("filename");
            f.remove("abs_path");
        }
    }
    match r.lineno {
        Some(l) => f.insert("lineno".into(), l.into()),
        None => f.remove("lineno"),
    };
    // A column the SDK guessed would not match the line.
    match r.colno {
        Some(c) => f.insert("colno".into(), c.into()),
        None => f.remove("colno"),
    };
    f.remove("symbol");
    f.insert(
        "in_app".into(),
        rules.is_in_app(&r.function, r.abs_path.as_deref()).into(),
    );
    let data = f.entry("data").or_insert_with(|| Value::Object(Map::new()));
    if let Value::Object(d) = data {
        d.insert("symbolicator_status".into(), "symbolicated".into());
    }
    Value::Object(f)
}

/// Writes `errscope.missing_debug_files` (or removes it when nothing is missing any
/// more). Returns whether the event changed.
fn set_missing(ev: &mut Value, images: &[Image], missing: &BTreeSet<usize>) -> bool {
    let Value::Object(m) = ev else { return false };
    let list: Vec<Value> = missing
        .iter()
        .map(|&i| {
            let img = &images[i];
            json!({"debug_id": img.debug_id, "code_id": img.code_id, "code_file": img.code_file})
        })
        .collect();
    let notes = m.get_mut(NOTES).and_then(Value::as_object_mut);
    match (notes, list.is_empty()) {
        (None, true) => false,
        (Some(n), true) => n.remove("missing_debug_files").is_some(),
        (Some(n), false) => {
            let new = Value::Array(list);
            let same = n.get("missing_debug_files") == Some(&new);
            n.insert("missing_debug_files".into(), new);
            !same
        }
        (None, false) => {
            m.insert(NOTES.into(), json!({ "missing_debug_files": list }));
            true
        }
    }
}

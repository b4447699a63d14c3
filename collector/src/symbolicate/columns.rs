//! Columns, which SymCache does not keep: read once per debug file with gimli from the
//! DWARF line table (the address's column) and the inlined calls (their call columns).
//!
//! [`Columns::of`] builds the table next to the SymCache (see [`super::cache`]), so an
//! event pays two binary searches per frame; [`Columns::fill`] adds them to the frames
//! [`super::resolve::lookup`] found, where the line the SymCache gave is the line the
//! DWARF row or call has (else the column would belong to another line).

use std::borrow::Cow;

use symbolic_debuginfo::Object;
use symbolic_debuginfo::dwarf::gimli::{self, EndianSlice};
use symbolic_debuginfo::dwarf::{Dwarf, Endian};

use super::resolve::Resolved;

/// One line-table row: from `addr` (relative to the load address) on, until the next row.
#[derive(Debug, Clone, Copy)]
struct Row {
    addr: u64,
    line: u32,
    /// 0: none (the left edge, or the end of a sequence).
    col: u32,
}

/// An inlined call: `[start, end)` is code of the inlined function, called from
/// `line:col` in its caller.
#[derive(Debug, Clone, Copy)]
struct Call {
    start: u64,
    end: u64,
    line: u32,
    col: u32,
}

/// The columns of one debug file.
#[derive(Debug, Default)]
pub struct Columns {
    /// Sorted by address.
    rows: Vec<Row>,
    /// Per inlining depth (0: inlined straight into a function, 1: into that, ...), the
    /// calls sorted by start.
    calls: Vec<Vec<Call>>,
}

impl Columns {
    /// The columns of an ELF or Mach-O object with DWARF; empty for other objects and
    /// where the DWARF cannot be read (the frames then have no column, as before).
    pub fn of(object: &Object<'_>) -> Columns {
        let load = object.load_address();
        let read = match object {
            Object::Elf(o) => read(o, load),
            Object::MachO(o) => read(o, load),
            _ => return Columns::default(),
        };
        match read {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!("debug file {}: no columns: {e}", object.debug_id());
                Columns::default()
            }
        }
    }

    /// Bytes it takes in memory.
    pub fn size(&self) -> usize {
        self.rows.capacity() * size_of::<Row>()
            + self
                .calls
                .iter()
                .map(|c| c.capacity() * size_of::<Call>() + size_of::<Vec<Call>>())
                .sum::<usize>()
    }

    /// Sets `colno` on the frames of `addr`, outermost first as [`super::resolve::lookup`]
    /// returns them: each caller gets the column of its call to the next frame, the
    /// innermost the column of the address's row.
    pub fn fill(&self, addr: u64, frames: &mut [Resolved]) {
        let Some((innermost, callers)) = frames.split_last_mut() else {
            return;
        };
        for (depth, caller) in callers.iter_mut().enumerate() {
            let call = self.calls.get(depth).and_then(|calls| {
                let i = calls.partition_point(|c| c.start <= addr).checked_sub(1)?;
                Some(calls[i]).filter(|c| addr < c.end)
            });
            caller.colno = call
                .filter(|c| c.col > 0 && Some(c.line) == caller.lineno)
                .map(|c| c.col);
        }
        let row = self
            .rows
            .partition_point(|r| r.addr <= addr)
            .checked_sub(1)
            .map(|i| self.rows[i]);
        innermost.colno = row
            .filter(|r| r.col > 0 && Some(r.line) == innermost.lineno)
            .map(|r| r.col);
    }
}

fn read<'d>(object: &impl Dwarf<'d>, load: u64) -> Result<Columns, gimli::Error> {
    let endian: Endian = object.endianity();
    let sections = gimli::DwarfSections::load(|id| {
        let name = id.name().trim_start_matches('.');
        Ok::<Cow<'d, [u8]>, gimli::Error>(object.section(name).map(|s| s.data).unwrap_or_default())
    })?;
    let dwarf = sections.borrow(|s| EndianSlice::new(s, endian));
    let rel = |a: u64| a.checked_sub(load).filter(|_| a != 0);
    let mut out = Columns::default();
    let mut units = dwarf.units();
    while let Some(header) = units.next()? {
        let unit = dwarf.unit(header)?;
        if let Some(program) = unit.line_program.clone() {
            let mut rows = program.rows();
            // A sequence at address 0 is code the linker dropped.
            let mut dropped = false;
            let mut first = true;
            while let Some((_, row)) = rows.next_row()? {
                if first {
                    dropped = rel(row.address()).is_none();
                    first = false;
                }
                if row.end_sequence() {
                    if !dropped && let Some(addr) = rel(row.address()) {
                        out.rows.push(Row {
                            addr,
                            line: 0,
                            col: 0,
                        });
                    }
                    first = true;
                    continue;
                }
                let Some(addr) = rel(row.address()).filter(|_| !dropped) else {
                    continue;
                };
                let line = row.line().map_or(0, |l| clamp(l.get()));
                let col = match row.column() {
                    gimli::ColumnType::LeftEdge => 0,
                    gimli::ColumnType::Column(c) => clamp(c.get()),
                };
                match out.rows.last_mut() {
                    // Same place again: one row is enough.
                    Some(last) if last.line == line && last.col == col => {}
                    _ => out.rows.push(Row { addr, line, col }),
                }
            }
        }
        // The depth of each open inlined call in the tree: (DIE depth, inlining depth).
        let mut open: Vec<isize> = Vec::new();
        let mut entries = unit.entries();
        while let Some(entry) = entries.next_dfs()? {
            let depth = entry.depth();
            while open.last().is_some_and(|d| *d >= depth) {
                open.pop();
            }
            match entry.tag() {
                gimli::DW_TAG_subprogram => open.clear(),
                gimli::DW_TAG_inlined_subroutine => {
                    let level = open.len();
                    open.push(depth);
                    let udata = |at| {
                        entry
                            .attr_value(at)
                            .and_then(|v| v.udata_value())
                            .map_or(0, clamp)
                    };
                    let (line, col) = (
                        udata(gimli::DW_AT_call_line),
                        udata(gimli::DW_AT_call_column),
                    );
                    if col == 0 {
                        continue;
                    }
                    if out.calls.len() <= level {
                        out.calls.resize_with(level + 1, Vec::new);
                    }
                    let mut ranges = dwarf.die_ranges(&unit, entry)?;
                    while let Some(r) = ranges.next()? {
                        if let (Some(start), Some(end)) = (rel(r.begin), rel(r.end))
                            && start < end
                        {
                            out.calls[level].push(Call {
                                start,
                                end,
                                line,
                                col,
                            });
                        }
                    }
                }
                _ => {}
            }
        }
    }
    // At one address, a sequence's end before another's start.
    out.rows
        .sort_by_key(|r| (r.addr, r.line != 0 || r.col != 0));
    out.rows.shrink_to_fit();
    for calls in &mut out.calls {
        calls.sort_by_key(|c| c.start);
        calls.shrink_to_fit();
    }
    Ok(out)
}

fn clamp(v: u64) -> u32 {
    u32::try_from(v).unwrap_or(0)
}

//! Whether an IPAM plugin binary is calico-ipam of this very build, found out without running it.
//!
//! calico-ipam carries its build identity in an ELF note (`calico_ipam::build_id`: SHA-256 of the
//! IPAM code's sources, lock file, compiler and build settings). calico-cni links the same
//! library, so its own copy of the note names the IPAM code it holds. A binary whose note holds
//! the same identity runs the same code; anything else (host-local, a shell wrapper, another
//! calico-ipam version or build) does not, and is run as a process.
//!
//! Why not the device and inode: the installer copies both binaries, so the calico-ipam in
//! CNI_PATH is never the file calico-cni is; and a copy of the same file says nothing about
//! two binaries built together. Why not ask the binary (`calico-ipam --version`): that is the
//! process start this is meant to save. Reading the note costs an open and four small reads.
//!
//! Anything unexpected (not ELF, another class or byte order, no section headers, no note, a
//! read error) means "not the same build": the plugin is run, which is always correct.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::Path;

use calico_ipam::build_id::{ID_LEN, NOTE_NAME, NOTE_TYPE, SECTION};

/// Bounds on what is read from a file that may be anything.
const MAX_SECTIONS: usize = 4096;
const MAX_NAMES: u64 = 1 << 20;
const MAX_NOTES: u64 = 4096;

/// True when `binary` holds calico-ipam's build note with this build's identity.
pub fn same_build(binary: &Path) -> bool {
    build_note(binary).is_some_and(|id| &id == calico_ipam::build_id::id())
}

/// The identity in `binary`'s calico-ipam build note, if it has one.
pub fn build_note(binary: &Path) -> Option<[u8; ID_LEN]> {
    let file = File::open(binary).ok()?;
    let section = find_section(&file, SECTION)?;
    if section.size > MAX_NOTES {
        return None;
    }
    let notes = read_at(&file, section.offset, section.size)?;
    find_note(&notes)
}

/// A section's place in the file.
struct Section {
    offset: u64,
    size: u64,
}

/// ELF64 in this machine's byte order (the only binaries this machine runs natively).
fn find_section(file: &File, wanted: &str) -> Option<Section> {
    let header = read_at(file, 0, 64)?;
    let native = if cfg!(target_endian = "little") { 1 } else { 2 };
    if header[..4] != *b"\x7fELF" || header[4] != 2 || header[5] != native {
        return None;
    }
    let shoff = u64_at(&header, 0x28)?;
    let entsize = usize::from(u16_at(&header, 0x3a)?);
    let count = usize::from(u16_at(&header, 0x3c)?);
    let names_index = usize::from(u16_at(&header, 0x3e)?);
    // 0 sections, or an index past them, is also how ELF says "more than 65279" (SHN_XINDEX):
    // not a layout calico-ipam has.
    if entsize != 64 || count == 0 || count > MAX_SECTIONS || names_index >= count {
        return None;
    }
    let table = read_at(file, shoff, (count * entsize) as u64)?;
    let entry = |i: usize| -> Option<(u32, Section)> {
        let e = table.get(i * entsize..(i + 1) * entsize)?;
        Some((
            u32_at(e, 0)?,
            Section {
                offset: u64_at(e, 0x18)?,
                size: u64_at(e, 0x20)?,
            },
        ))
    };
    let (_, names) = entry(names_index)?;
    if names.size > MAX_NAMES {
        return None;
    }
    let names = read_at(file, names.offset, names.size)?;
    (0..count).find_map(|i| {
        let (name, section) = entry(i)?;
        let name = names.get(usize::try_from(name).ok()?..)?;
        let end = name.iter().position(|b| *b == 0)?;
        (name[..end] == *wanted.as_bytes()).then_some(section)
    })
}

/// The descriptor of the calico-ipam note among `notes` (namesz, descsz, type, then name and
/// descriptor, each padded to 4 bytes).
fn find_note(mut notes: &[u8]) -> Option<[u8; ID_LEN]> {
    let pad = |n: usize| n.checked_add(3).map(|n| n & !3);
    while notes.len() >= 12 {
        let namesz = usize::try_from(u32_at(notes, 0)?).ok()?;
        let descsz = usize::try_from(u32_at(notes, 4)?).ok()?;
        let kind = u32_at(notes, 8)?;
        let name_end = 12usize.checked_add(pad(namesz)?)?;
        let desc_end = name_end.checked_add(pad(descsz)?)?;
        let name = notes.get(12..12 + namesz)?;
        let desc = notes.get(name_end..name_end + descsz)?;
        if name == NOTE_NAME && kind == NOTE_TYPE {
            return desc.try_into().ok();
        }
        notes = notes.get(desc_end..)?;
    }
    None
}

fn read_at(file: &File, offset: u64, len: u64) -> Option<Vec<u8>> {
    let mut buf = vec![0; usize::try_from(len).ok()?];
    file.read_exact_at(&mut buf, offset).ok()?;
    Some(buf)
}

fn u16_at(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_ne_bytes(b.get(at..at + 2)?.try_into().ok()?))
}

fn u32_at(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_ne_bytes(b.get(at..at + 4)?.try_into().ok()?))
}

fn u64_at(b: &[u8], at: usize) -> Option<u64> {
    Some(u64::from_ne_bytes(b.get(at..at + 8)?.try_into().ok()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn this_binary_carries_the_note_it_compares_with() {
        // The unit-test binary links calico-ipam's library too, so it holds the note.
        let me = std::fs::read_link("/proc/self/exe").expect("/proc/self/exe");
        assert_eq!(
            build_note(&me).as_ref(),
            Some(calico_ipam::build_id::id()),
            "{}",
            me.display()
        );
        assert!(same_build(&me));
    }

    #[test]
    fn other_files_are_not_the_same_build() {
        let dir = tempfile::tempdir().expect("tempdir");
        let script = dir.path().join("calico-ipam");
        std::fs::write(&script, "#!/bin/sh\nexec calico-ipam \"$@\"\n").expect("write");
        assert!(!same_build(&script));
        assert!(!same_build(&dir.path().join("missing")));
        assert!(!same_build(Path::new("/bin/sh")));
        let mut elf = b"\x7fELF\x02\x01\x01".to_vec();
        elf.resize(64, 0xff);
        std::fs::write(&script, &elf).expect("write");
        assert!(!same_build(&script));
    }

    #[test]
    fn notes_are_walked_with_their_padding() {
        let mut notes = Vec::new();
        for (name, kind, desc) in [
            (&b"GNU\0"[..], 3u32, &[7u8; 20][..]),
            (NOTE_NAME, 2, &[1u8; ID_LEN][..]),
            (NOTE_NAME, NOTE_TYPE, &[b'a'; ID_LEN][..]),
        ] {
            notes.extend((name.len() as u32).to_ne_bytes());
            notes.extend((desc.len() as u32).to_ne_bytes());
            notes.extend(kind.to_ne_bytes());
            notes.extend(name);
            notes.resize(notes.len().next_multiple_of(4), 0);
            notes.extend(desc);
            notes.resize(notes.len().next_multiple_of(4), 0);
        }
        assert_eq!(find_note(&notes), Some([b'a'; ID_LEN]));
        assert_eq!(find_note(&notes[..notes.len() - 1]), None);
        assert_eq!(find_note(&[0xff; 40]), None);
    }
}

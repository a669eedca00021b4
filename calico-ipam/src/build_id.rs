//! This build's identity (`build-support/build_id.rs`: SHA-256 of the sources, lock file,
//! compiler and build settings of the IPAM code), carried in an ELF note so that calico-cni
//! can read it from a calico-ipam binary without running it.
//!
//! calico-cni links this library, so it carries the note too: the identity of the IPAM code
//! inside it. It runs IPAM in its own process only for a calico-ipam binary whose note holds
//! the same identity (`calico-cni/src/ipam_identity.rs`); `readelf -n calico-ipam` shows it, and
//! `calico-ipam --version` prints it.

/// The identity, 64 lower-case hex digits.
pub const HEX: &str = env!("CALICO_RS_BUILD_ID");
const _: () = assert!(HEX.len() == ID_LEN);

/// The section that holds the note.
pub const SECTION: &str = ".note.calico-rs.build";
/// The note's owner name (NUL included, as ELF counts it) and type.
pub const NOTE_NAME: &[u8] = b"calico-rs\0";
pub const NOTE_TYPE: u32 = 1;
/// Bytes of the identity in the note's descriptor (the hex digits).
pub const ID_LEN: usize = 64;

/// An ELF note: three 4-byte words, the name padded to 4 bytes, the descriptor (ELF64 notes
/// use 4-byte words and alignment, as the linkers and `readelf` read them).
#[repr(C, align(4))]
pub struct Note {
    namesz: u32,
    descsz: u32,
    kind: u32,
    name: [u8; 12],
    desc: [u8; ID_LEN],
}

// The linker keeps a section that something refers to: `id()` reads the note through an opaque
// pointer, so it is neither folded into the code nor dropped.
#[used]
#[unsafe(link_section = ".note.calico-rs.build")]
static NOTE: Note = Note {
    namesz: NOTE_NAME.len() as u32,
    descsz: ID_LEN as u32,
    kind: NOTE_TYPE,
    name: padded(NOTE_NAME),
    desc: padded(HEX.as_bytes()),
};

const fn padded<const N: usize>(bytes: &[u8]) -> [u8; N] {
    let mut out = [0u8; N];
    let mut i = 0;
    while i < bytes.len() {
        out[i] = bytes[i];
        i += 1;
    }
    out
}

/// The identity as the note holds it.
pub fn id() -> &'static [u8; ID_LEN] {
    &std::hint::black_box(&NOTE).desc
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_note_holds_the_hex_identity() {
        assert_eq!(id(), HEX.as_bytes());
        assert!(HEX.bytes().all(|b| b.is_ascii_hexdigit()));
        assert_eq!(std::mem::size_of::<Note>(), 12 + 12 + ID_LEN);
    }
}

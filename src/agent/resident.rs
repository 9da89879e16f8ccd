//! Giving back the pages of start-up once the agent is serving.
//!
//! Reading the flags and plans, setting up logging, metrics and the listeners, and spawning the
//! first exchange run code and read constants that serving never touches again, yet those
//! pages of the binary and of glibc stay mapped, and counted in every pod's RSS, for the life
//! of the pod. After each successful refresh, once every binding has credentials, the agent
//! unmaps the pages it holds of files it cannot have written. They stay in the page cache,
//! shared by every agent on the node, so what serving needs again comes back at its next use
//! by a minor fault (no disk read); the rest stays out. The same call hands glibc's free heap
//! pages back to the kernel.
//!
//! Which mappings qualify is decided from `/proc/self/smaps` by a pure function
//! ([`sheddable`]); the one `unsafe` call, `madvise(MADV_DONTNEED)`, is applied only to what
//! it returns.

use std::ops::Range;

/// What one pass gave back.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Shed {
    /// Mappings unmapped.
    pub mappings: usize,
    /// Their resident size before, in KiB (the kernel's figure from smaps).
    pub resident_kib: u64,
    /// Mappings the kernel refused; they stay as they were.
    pub refused: usize,
}

/// One mapping that can be given back, as smaps describes it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Sheddable {
    pub range: Range<usize>,
    pub resident_kib: u64,
}

/// Gives back the start-up pages (see the module documentation) and glibc's free heap pages.
/// Failing to read smaps gives back nothing; nothing here can fail the agent.
pub fn shed() -> Shed {
    let mut shed = Shed::default();
    let Ok(smaps) = std::fs::read_to_string("/proc/self/smaps") else {
        return shed;
    };
    for mapping in sheddable(&smaps) {
        match dont_need(&mapping.range) {
            Ok(()) => {
                shed.mappings += 1;
                shed.resident_kib += mapping.resident_kib;
            }
            Err(_) => shed.refused += 1,
        }
    }
    trim_heap();
    shed
}

/// The private, never-written file mappings of `smaps` that hold resident pages: not
/// writable, no anonymous (copied-on-write) page, not locked. Every page of such a mapping is
/// an unmodified copy of its file. Stacks, the heap, the vDSO and anonymous memory have no
/// file path; the relocated read-only data of the binary is not writable but holds anonymous
/// pages; `.data` and `.bss` are writable.
pub fn sheddable(smaps: &str) -> Vec<Sheddable> {
    let mut found = Vec::new();
    let mut current: Option<Candidate> = None;
    for line in smaps.lines() {
        if let Some(header) = Header::parse(line) {
            found.extend(current.take().and_then(Candidate::finish));
            current = Some(Candidate::new(header));
            continue;
        }
        let Some(candidate) = current.as_mut() else {
            continue;
        };
        let Some((key, value)) = line.split_once(':') else {
            continue;
        };
        let value = value.trim();
        match key {
            "Rss" => candidate.resident_kib = kib(value).unwrap_or(0),
            "Anonymous" => candidate.anonymous_kib = kib(value),
            "VmFlags" => candidate.locked = value.split_whitespace().any(|flag| flag == "lo"),
            _ => {}
        }
    }
    found.extend(current.and_then(Candidate::finish));
    found
}

/// A mapping's first line: `start-end perms offset dev inode [path]`.
struct Header {
    range: Range<usize>,
    eligible: bool,
}

impl Header {
    fn parse(line: &str) -> Option<Header> {
        let mut fields = line.split_whitespace();
        let (start, end) = fields.next()?.split_once('-')?;
        let range = usize::from_str_radix(start, 16).ok()?..usize::from_str_radix(end, 16).ok()?;
        let perms = fields.next()?.as_bytes();
        if perms.len() != 4 {
            return None;
        }
        // offset, device, inode; what follows is the path, if any.
        let path = fields.nth(3);
        let file_backed = path.is_some_and(|p| p.starts_with('/'));
        let eligible = file_backed && perms[1] != b'w' && perms[3] == b'p' && !range.is_empty();
        Some(Header { range, eligible })
    }
}

/// A mapping while its detail lines are read.
struct Candidate {
    header: Header,
    resident_kib: u64,
    /// `None` until its line is read: a mapping without a readable one is never given back.
    anonymous_kib: Option<u64>,
    locked: bool,
}

impl Candidate {
    fn new(header: Header) -> Candidate {
        Candidate {
            header,
            resident_kib: 0,
            anonymous_kib: None,
            locked: false,
        }
    }

    fn finish(self) -> Option<Sheddable> {
        let clean = self.anonymous_kib == Some(0);
        (self.header.eligible && clean && !self.locked && self.resident_kib > 0).then_some(
            Sheddable {
                range: self.header.range,
                resident_kib: self.resident_kib,
            },
        )
    }
}

/// `"1234 kB"` → 1234.
fn kib(value: &str) -> Option<u64> {
    value.strip_suffix("kB")?.trim().parse().ok()
}

/// `madvise(MADV_DONTNEED)` over one mapping.
#[allow(unsafe_code)]
fn dont_need(range: &Range<usize>) -> std::io::Result<()> {
    // SAFETY: `range` is a whole mapping that `sheddable` found, a moment ago, to be a private
    // mapping of a file, not writable and holding no anonymous page: each of its pages is an
    // unmodified copy of the file, so dropping them loses nothing and the next access maps the
    // same bytes again. No Rust object lives in such memory (the heap, stacks and statics that
    // are ever written are anonymous or writable mappings). The mappings of the binary and the
    // libraries loaded at start last as long as the process (the agent loads no library
    // later), so nothing else can have been mapped at this address in between.
    let rc = unsafe {
        libc::madvise(
            range.start as *mut libc::c_void,
            range.len(),
            libc::MADV_DONTNEED,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// Returns glibc's free heap pages to the kernel: what start-up allocated and freed (flag and
/// plan parsing) would otherwise stay resident in the arena.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
#[allow(unsafe_code)]
fn trim_heap() {
    // SAFETY: malloc_trim only returns free memory of glibc's own arenas; it takes glibc's
    // locks and is safe to call from any thread at any time.
    unsafe {
        libc::malloc_trim(0);
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn trim_heap() {}

#[cfg(test)]
mod tests {
    use super::*;

    const SMAPS: &str = "\
55d0c1a00000-55d0c1b2a000 r--p 00000000 fd:01 1234                       /usr/bin/credvend
Size:               1192 kB
Rss:                1100 kB
Anonymous:             0 kB
VmFlags: rd mr mw me dw sd
55d0c1b2a000-55d0c2000000 r-xp 0012a000 fd:01 1234                       /usr/bin/credvend
Size:               4952 kB
Rss:                1600 kB
Anonymous:             0 kB
VmFlags: rd ex mr mw me dw sd
55d0c2000000-55d0c2080000 r--p 00600000 fd:01 1234                       /usr/bin/credvend
Size:                512 kB
Rss:                 512 kB
Anonymous:           512 kB
VmFlags: rd mr mw me dw ac sd
55d0c2080000-55d0c2090000 rw-p 00680000 fd:01 1234                       /usr/bin/credvend
Size:                 64 kB
Rss:                  64 kB
Anonymous:            12 kB
VmFlags: rd wr mr mw me dw ac sd
55d0c3000000-55d0c3021000 rw-p 00000000 00:00 0                          [heap]
Size:                132 kB
Rss:                  40 kB
Anonymous:            40 kB
VmFlags: rd wr mr mw me ac sd
7f0000000000-7f0000100000 r-xp 00028000 fd:01 99                         /usr/lib/x86_64-linux-gnu/libc.so.6
Size:               1024 kB
Rss:                 700 kB
Anonymous:             0 kB
VmFlags: rd ex mr mw me lo sd
7f0000100000-7f0000120000 r--p 00000000 00:00 0
Size:                128 kB
Rss:                  16 kB
Anonymous:            16 kB
VmFlags: rd mr mw me ac sd
7f0000200000-7f0000210000 r--s 00000000 fd:01 77                         /etc/some.db
Size:                 64 kB
Rss:                  64 kB
Anonymous:             0 kB
VmFlags: rd mr mw me dw sd
7f0000300000-7f0000310000 r--p 00000000 fd:01 78                         /usr/lib/locale/C.utf8/LC_CTYPE
Size:                 64 kB
Rss:                   0 kB
Anonymous:             0 kB
VmFlags: rd mr mw me dw sd
7ffd00000000-7ffd00002000 r-xp 00000000 00:00 0                          [vdso]
Size:                  8 kB
Rss:                   8 kB
Anonymous:             0 kB
VmFlags: rd ex mr mw me de sd
";

    #[test]
    fn only_unwritten_private_file_pages_are_given_back() {
        let found = sheddable(SMAPS);
        assert_eq!(
            found,
            vec![
                Sheddable {
                    range: 0x55d0c1a00000..0x55d0c1b2a000,
                    resident_kib: 1100,
                },
                Sheddable {
                    range: 0x55d0c1b2a000..0x55d0c2000000,
                    resident_kib: 1600,
                },
            ],
            "the binary's read-only data and text only: not its relocated data (anonymous \
             pages), .data (writable), the heap, a locked library, an anonymous mapping, a \
             shared mapping, a mapping with nothing resident or the vDSO"
        );
    }

    #[test]
    fn a_mapping_whose_anonymous_line_is_missing_or_unreadable_is_kept() {
        let missing = "7f00-7f01 r--p 00000000 fd:01 1 /usr/bin/credvend\nRss: 4 kB\n";
        assert!(sheddable(missing).is_empty());
        let unreadable =
            "7f00-7f01 r--p 00000000 fd:01 1 /usr/bin/credvend\nRss: 4 kB\nAnonymous: lots\n";
        assert!(sheddable(unreadable).is_empty());
    }

    #[test]
    fn nonsense_is_not_a_mapping() {
        assert!(sheddable("").is_empty());
        assert!(
            sheddable("not smaps at all\n:::\nzz-yy r--p 0 0 0 /x\nAnonymous: 0 kB\n").is_empty()
        );
    }

    /// `RssFile` of this process, in KiB.
    fn resident_file_kib() -> u64 {
        let status = std::fs::read_to_string("/proc/self/status").unwrap();
        let line = status.lines().find(|l| l.starts_with("RssFile:")).unwrap();
        kib(line["RssFile:".len()..].trim()).unwrap()
    }

    #[test]
    fn this_process_gives_its_file_pages_back_and_keeps_working() {
        let expected = sheddable(SMAPS);
        let before = resident_file_kib();
        let shed = shed();
        let after = resident_file_kib();
        assert!(shed.mappings > 0 && shed.resident_kib > 0, "{shed:?}");
        assert!(
            after < before,
            "RssFile {before} KiB before, {after} KiB after"
        );
        // The code and the constants given back fault in again and read the same.
        assert_eq!(sheddable(SMAPS), expected);
    }
}

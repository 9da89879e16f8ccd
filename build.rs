//! How the release binary is linked: the part of its shape that cargo's profiles cannot say.
//!
//! Every injected pod maps the one binary, and the kernel maps its file pages in 64 KiB
//! windows around each page a process touches. With the linker's default layout the agent's
//! 2.2 MiB of executed code lies scattered over most of the 15 MiB of text, so an idle agent
//! held 8.5 MiB of it (BENCHMARKS.md). Two link options change that, for release builds on
//! x86_64 Linux with glibc, where rustc links with its bundled LLD:
//!
//! - `--symbol-ordering-file=layout/agent.order` puts the functions the agent runs first and
//!   next to each other, those of a serving agent ahead of those of its start-up, so a serving
//!   agent touches a few contiguous pages of text once it has given back its start-up pages.
//!   The list is
//!   recorded from a run of the release agent itself by `scripts/agent-layout.sh` (which says
//!   when to re-record it); names it no longer finds are skipped silently, so a stale list
//!   costs memory, never a build.
//! - `-z pack-relative-relocs` (DT_RELR, glibc ≥ 2.36, the image's Debian 12) stores the
//!   position-independent binary's 30,000 relocations in a few KiB instead of the 717 KiB the
//!   loader read at every start.
//!
//! Any other profile, target or linker links as cargo's default.

use std::path::Path;

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-changed=layout/agent.order");
    let profile = std::env::var("PROFILE").unwrap_or_default();
    let target = std::env::var("TARGET").unwrap_or_default();
    if profile != "release" || target != "x86_64-unknown-linux-gnu" {
        return;
    }
    let dir = std::env::var("CARGO_MANIFEST_DIR").unwrap_or_default();
    let order = Path::new(&dir).join("layout/agent.order");
    println!("cargo:rustc-link-arg-bin=credvend=-Wl,-z,pack-relative-relocs");
    if order.is_file() {
        println!(
            "cargo:rustc-link-arg-bin=credvend=-Wl,--symbol-ordering-file={}",
            order.display()
        );
        println!("cargo:rustc-link-arg-bin=credvend=-Wl,--no-warn-symbol-ordering");
    }
}

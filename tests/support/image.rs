//! Container images without a registry or a Docker engine: OCI image layout archives written
//! here (an `oci-layout` file, `index.json` naming the image with the
//! `io.containerd.image.name` annotation, a manifest, a config and one uncompressed layer) and
//! imported into the test node's containerd (see [`super::node::Node::import`]). Pods run them
//! with `imagePullPolicy: Never`.
//!
//! The images hold a binary and what it needs at run time — the shared libraries `ldd` names
//! (the same glibc the binary was linked against, as the Dockerfile's distroless/cc base
//! provides), `/etc/passwd` and `/etc/group` with the distroless `nonroot` user, `/tmp` — and
//! nothing else: no shell, no package manager.
//!
//! The `tar` crate writes the archives (a dev-dependency only: tar headers have enough
//! corner cases — long names, checksums, modes — that a hand-written writer would be a liability).

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context as _, bail, ensure};
use serde_json::json;
use sha2::{Digest as _, Sha256};

/// The sandbox image containerd starts first in every pod (its `pinned_images.sandbox`).
pub const PAUSE_IMAGE: &str = "credvend.test/pause:1";
/// The credvend image: the release binary laid out as the Dockerfile lays it out.
pub const CREDVEND_IMAGE: &str = "credvend.test/credvend:test";
/// An app image holding the static Go SDK client of `tests/sdk/go`.
pub const SDK_GO_IMAGE: &str = "credvend.test/sdk-go:test";

/// The distroless `nonroot` user the Dockerfile's `USER 65532:65532` names.
pub const NONROOT: u64 = 65532;

/// One file-system entry of a layer.
#[derive(Clone, Debug)]
pub enum Entry {
    Dir {
        path: String,
        mode: u32,
        owner: u64,
    },
    File {
        path: String,
        mode: u32,
        data: Vec<u8>,
    },
}

/// An image ready to import: its reference and its OCI archive.
pub struct Image {
    pub name: String,
    pub archive: Vec<u8>,
}

/// What the image's config says about how its process runs.
pub struct RunConfig<'a> {
    pub entrypoint: &'a [&'a str],
    pub user: &'a str,
    pub env: &'a [&'a str],
}

const PATH_ENV: &str = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

fn sha256_hex(data: &[u8]) -> String {
    Sha256::digest(data)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// The uncompressed layer tar of `entries`, parent directories added where missing.
pub fn layer(entries: &[Entry]) -> anyhow::Result<Vec<u8>> {
    let mut builder = tar::Builder::new(Vec::new());
    let explicit: BTreeSet<String> = entries
        .iter()
        .filter_map(|e| match e {
            Entry::Dir { path, .. } => Some(path.trim_matches('/').to_owned()),
            Entry::File { .. } => None,
        })
        .collect();
    let mut written = BTreeSet::new();
    for entry in entries {
        let path = match entry {
            Entry::Dir { path, .. } | Entry::File { path, .. } => path.trim_matches('/'),
        };
        // Parents first, root-owned 0755, unless listed explicitly.
        let mut parent = Path::new(path).parent();
        let mut parents = Vec::new();
        while let Some(p) = parent.filter(|p| !p.as_os_str().is_empty()) {
            parents.push(p.to_string_lossy().into_owned());
            parent = p.parent();
        }
        for p in parents.into_iter().rev() {
            if !explicit.contains(&p) && written.insert(p.clone()) {
                append(&mut builder, &p, tar::EntryType::Directory, 0o755, 0, &[])?;
            }
        }
        match entry {
            Entry::Dir { mode, owner, .. } => {
                if written.insert(path.to_owned()) {
                    append(
                        &mut builder,
                        path,
                        tar::EntryType::Directory,
                        *mode,
                        *owner,
                        &[],
                    )?;
                }
            }
            Entry::File { mode, data, .. } => {
                append(&mut builder, path, tar::EntryType::Regular, *mode, 0, data)?;
            }
        }
    }
    builder.into_inner().context("finishing the layer tar")
}

fn append(
    builder: &mut tar::Builder<Vec<u8>>,
    path: &str,
    kind: tar::EntryType,
    mode: u32,
    owner: u64,
    data: &[u8],
) -> anyhow::Result<()> {
    let mut header = tar::Header::new_gnu();
    header.set_entry_type(kind);
    header.set_mode(mode);
    header.set_uid(owner);
    header.set_gid(owner);
    header.set_size(data.len() as u64);
    header.set_mtime(0);
    let name = if kind == tar::EntryType::Directory {
        format!("{path}/")
    } else {
        path.to_owned()
    };
    builder
        .append_data(&mut header, name, data)
        .with_context(|| format!("adding {path} to the layer"))
}

/// The OCI image layout archive of a one-layer image named `name`.
pub fn archive(name: &str, layer: &[u8], run: &RunConfig<'_>) -> anyhow::Result<Vec<u8>> {
    let layer_digest = format!("sha256:{}", sha256_hex(layer));
    let mut env = vec![PATH_ENV];
    env.extend(run.env);
    let config = serde_json::to_vec(&json!({
        "architecture": "amd64",
        "os": "linux",
        "config": {
            "User": run.user,
            "Entrypoint": run.entrypoint,
            "Env": env,
            "WorkingDir": "/",
        },
        "rootfs": {"type": "layers", "diff_ids": [layer_digest]},
    }))?;
    let config_digest = format!("sha256:{}", sha256_hex(&config));
    let manifest = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {
            "mediaType": "application/vnd.oci.image.config.v1+json",
            "digest": config_digest,
            "size": config.len(),
        },
        "layers": [{
            "mediaType": "application/vnd.oci.image.layer.v1.tar",
            "digest": layer_digest,
            "size": layer.len(),
        }],
    }))?;
    let manifest_digest = format!("sha256:{}", sha256_hex(&manifest));
    let tag = name.rsplit_once(':').map_or("latest", |(_, tag)| tag);
    let index = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": [{
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "digest": manifest_digest,
            "size": manifest.len(),
            "platform": {"architecture": "amd64", "os": "linux"},
            "annotations": {
                "io.containerd.image.name": name,
                "org.opencontainers.image.ref.name": tag,
            },
        }],
    }))?;

    let mut builder = tar::Builder::new(Vec::new());
    let mut add = |path: &str, data: &[u8]| {
        append(&mut builder, path, tar::EntryType::Regular, 0o644, 0, data)
    };
    add("oci-layout", br#"{"imageLayoutVersion":"1.0.0"}"#)?;
    add("index.json", &index)?;
    for (digest, data) in [
        (&layer_digest, layer),
        (&config_digest, &config[..]),
        (&manifest_digest, &manifest[..]),
    ] {
        let hex = digest.trim_start_matches("sha256:");
        add(&format!("blobs/sha256/{hex}"), data)?;
    }
    builder.into_inner().context("finishing the image archive")
}

/// The shared libraries `ldd` lists for `binary` (none for a static one), as files at the
/// paths the dynamic loader looks for them.
pub fn libraries(binary: &Path) -> anyhow::Result<Vec<Entry>> {
    let out = Command::new("ldd")
        .arg(binary)
        .output()
        .context("running ldd")?;
    let text = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() || text.contains("not a dynamic executable") {
        return Ok(Vec::new());
    }
    let mut entries = Vec::new();
    for line in text.lines() {
        // "libc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x...)" or "/lib64/ld-linux-x86-64.so.2 (0x...)"
        let path = match line.split_once("=>") {
            Some((_, rest)) => rest.split_whitespace().next(),
            None => line
                .split_whitespace()
                .next()
                .filter(|p| p.starts_with('/')),
        };
        let Some(path) = path.filter(|p| p.starts_with('/')) else {
            continue;
        };
        let data = std::fs::read(path).with_context(|| format!("reading {path}"))?;
        entries.push(Entry::File {
            path: path.to_owned(),
            mode: 0o755,
            data,
        });
    }
    Ok(entries)
}

/// What every image here has besides its program: the distroless users and a `/tmp`.
fn base_entries() -> Vec<Entry> {
    vec![
        Entry::File {
            path: "/etc/passwd".into(),
            mode: 0o644,
            data: b"root:x:0:0:root:/root:/sbin/nologin\nnonroot:x:65532:65532:nonroot:/home/nonroot:/sbin/nologin\n".to_vec(),
        },
        Entry::File {
            path: "/etc/group".into(),
            mode: 0o644,
            data: b"root:x:0:\nnonroot:x:65532:\n".to_vec(),
        },
        Entry::Dir { path: "/tmp".into(), mode: 0o1777, owner: 0 },
        Entry::Dir { path: "/home/nonroot".into(), mode: 0o700, owner: NONROOT },
    ]
}

fn read_program(binary: &Path, path: &str) -> anyhow::Result<Entry> {
    Ok(Entry::File {
        path: path.to_owned(),
        mode: 0o755,
        data: std::fs::read(binary).with_context(|| format!("reading {}", binary.display()))?,
    })
}

/// The sandbox image: the pause program as `/pause`.
pub fn pause_image(pause: &Path) -> anyhow::Result<Image> {
    let mut entries = base_entries();
    entries.push(read_program(pause, "/pause")?);
    entries.extend(libraries(pause)?);
    let run = RunConfig {
        entrypoint: &["/pause"],
        user: "65535:65535",
        env: &[],
    };
    Ok(Image {
        name: PAUSE_IMAGE.to_owned(),
        archive: archive(PAUSE_IMAGE, &layer(&entries)?, &run)?,
    })
}

/// The credvend image as the Dockerfile's runtime stage makes it: the release binary at
/// `/usr/local/bin/credvend`, `USER 65532:65532`, `ENTRYPOINT ["credvend"]`, and a CA bundle
/// at the distroless path (`SSL_CERT_FILE`) — here holding `ca_pem`, the test CA, so the agent
/// trusts the test's STS over https.
pub fn credvend_image(release_binary: &Path, ca_pem: &str) -> anyhow::Result<Image> {
    let mut entries = base_entries();
    entries.push(read_program(release_binary, "/usr/local/bin/credvend")?);
    entries.extend(libraries(release_binary)?);
    entries.push(Entry::File {
        path: "/etc/ssl/certs/ca-certificates.crt".into(),
        mode: 0o644,
        data: ca_pem.as_bytes().to_vec(),
    });
    let run = RunConfig {
        entrypoint: &["credvend"],
        user: "65532:65532",
        env: &["SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt"],
    };
    Ok(Image {
        name: CREDVEND_IMAGE.to_owned(),
        archive: archive(CREDVEND_IMAGE, &layer(&entries)?, &run)?,
    })
}

/// An app image whose entrypoint is the Go SDK client (`tests/sdk/go`), trusting `ca_pem`.
pub fn sdk_go_image(client: &Path, ca_pem: &str) -> anyhow::Result<Image> {
    let mut entries = base_entries();
    entries.push(read_program(client, "/usr/local/bin/sdk-client-go")?);
    entries.extend(libraries(client)?);
    entries.push(Entry::File {
        path: "/etc/ssl/certs/ca-certificates.crt".into(),
        mode: 0o644,
        data: ca_pem.as_bytes().to_vec(),
    });
    let run = RunConfig {
        entrypoint: &["sdk-client-go"],
        user: "65532:65532",
        env: &["SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt"],
    };
    Ok(Image {
        name: SDK_GO_IMAGE.to_owned(),
        archive: archive(SDK_GO_IMAGE, &layer(&entries)?, &run)?,
    })
}

/// The static Go SDK client binary: `CREDVEND_SDK_GO_STATIC`, else what
/// `scripts/sdk-go-static.sh` builds or finds.
pub fn sdk_go_client() -> anyhow::Result<PathBuf> {
    if let Some(path) = std::env::var_os("CREDVEND_SDK_GO_STATIC").filter(|p| !p.is_empty()) {
        return Ok(PathBuf::from(path));
    }
    let script = super::python::repo_path("scripts/sdk-go-static.sh");
    let out = Command::new(&script)
        .stderr(std::process::Stdio::inherit())
        .output()
        .with_context(|| format!("running {}", script.display()))?;
    ensure!(out.status.success(), "{} failed", script.display());
    let path = PathBuf::from(String::from_utf8(out.stdout)?.trim());
    if !path.is_file() {
        bail!(
            "{} printed {}, which is not a file",
            script.display(),
            path.display()
        );
    }
    Ok(path)
}

//! Debian's `chromium`, headless, as a real browser for pages the tests produce
//! (`scripts/install-telemetry-test-deps` installs it): the DOM after rendering, and a
//! screenshot.

use std::path::Path;
use std::process::{Output, Stdio};

use anyhow::{Context, Result, bail, ensure};
use tokio::process::Command;

use crate::process::output;

/// The window size of [`dump_dom`] and [`screenshot`].
const WINDOW: (u32, u32) = (1400, 1000);

/// Runs headless chromium on `url` with `action` (`--dump-dom`, `--screenshot=...`), in a
/// throw-away profile and a 1400x1000 window.
async fn chromium(url: &str, action: &str) -> Result<Output> {
    chromium_in(url, action, WINDOW).await
}

/// Runs headless chromium on `url` with `action` in a window of `(width, height)`.
async fn chromium_in(url: &str, action: &str, (width, height): (u32, u32)) -> Result<Output> {
    let profile = tempfile::tempdir()?;
    let mut cmd = Command::new("chromium");
    cmd.args([
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--hide-scrollbars",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
    ])
    .arg(format!("--window-size={width},{height}"))
    .arg(format!("--user-data-dir={}", profile.path().display()))
    .arg(action)
    .arg(url)
    // No session bus in a test machine: without this, chromium waits for one at start.
    .env("DBUS_SESSION_BUS_ADDRESS", "disabled:")
    .stdin(Stdio::null())
    .kill_on_drop(true);
    let out = match output(&mut cmd).await {
        Ok(out) => out,
        Err(e) if is_not_found(&e) => {
            bail!("chromium is not installed (run scripts/install-telemetry-test-deps)")
        }
        Err(e) => return Err(e),
    };
    if !out.status.success() {
        bail!(
            "chromium {action} {url} failed with {}:\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(out)
}

fn is_not_found(e: &anyhow::Error) -> bool {
    e.chain().any(|c| {
        c.downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::NotFound)
    })
}

/// The DOM of `url` after chromium rendered it, serialized.
pub async fn dump_dom(url: &str) -> Result<String> {
    let out = chromium(url, "--dump-dom").await?;
    String::from_utf8(out.stdout).context("chromium printed a DOM that is not UTF-8")
}

/// The DOM of `url` after chromium rendered it (and ran its scripts) in a window of
/// `(width, height)`, serialized.
pub async fn dump_dom_in(url: &str, window: (u32, u32)) -> Result<String> {
    let out = chromium_in(url, "--dump-dom", window).await?;
    String::from_utf8(out.stdout).context("chromium printed a DOM that is not UTF-8")
}

/// A screenshot of `url` written to `png`; returns its width and height from the PNG header.
pub async fn screenshot(url: &str, png: &Path) -> Result<(u32, u32)> {
    chromium(url, &format!("--screenshot={}", png.display())).await?;
    let bytes = std::fs::read(png)
        .with_context(|| format!("chromium wrote no screenshot at {}", png.display()))?;
    png_size(&bytes)
}

/// Width and height from the IHDR chunk of a PNG.
pub fn png_size(bytes: &[u8]) -> Result<(u32, u32)> {
    const SIGNATURE: &[u8] = b"\x89PNG\r\n\x1a\n";
    ensure!(
        bytes.starts_with(SIGNATURE) && bytes.get(12..16) == Some(b"IHDR"),
        "not a PNG ({} bytes)",
        bytes.len()
    );
    let word = |at: usize| -> Result<u32> {
        let b: [u8; 4] = bytes
            .get(at..at + 4)
            .context("truncated PNG header")?
            .try_into()?;
        Ok(u32::from_be_bytes(b))
    };
    Ok((word(16)?, word(20)?))
}

const PNG_DETAIL: &str = r#"
import struct, sys, zlib
data = open(sys.argv[1], 'rb').read()
pos, idat = 8, b''
while pos < len(data):
    (n,) = struct.unpack('>I', data[pos:pos + 4])
    if data[pos + 4:pos + 8] == b'IDAT':
        idat += data[pos + 8:pos + 8 + n]
    pos += 12 + n
print(len(set(zlib.decompress(idat))))
"#;

/// How many distinct byte values the decompressed image data of a PNG holds: a handful for
/// a page of one flat colour, hundreds once text and shapes are drawn.
pub async fn png_detail(png: &Path) -> Result<usize> {
    let mut cmd = Command::new("python3");
    cmd.args(["-c", PNG_DETAIL])
        .arg(png)
        .stdin(Stdio::null())
        .kill_on_drop(true);
    let out = output(&mut cmd).await?;
    if !out.status.success() {
        bail!(
            "cannot decode {}: {}",
            png.display(),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse()
        .context("unexpected output from the PNG decoder")
}

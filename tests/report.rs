//! The HTML report opens in headless Chromium without console errors (CI installs
//! Debian's chromium and sets MICROSEG_REQUIRE_BROWSER_TESTS; elsewhere the test is
//! skipped with a notice when no browser is installed).

use std::path::Path;
use std::process::Command;

use tempfile::TempDir;

use crate::util::repo;

fn chromium() -> Option<&'static str> {
    ["/usr/bin/chromium", "/usr/bin/chromium-browser", "/usr/bin/google-chrome"]
        .into_iter()
        .find(|p| Path::new(p).exists())
}

#[test]
fn report_renders_in_headless_chromium_without_console_errors() {
    let d = TempDir::new().unwrap();
    let p = d.path();
    let data = repo().join("datasets/online_retail_customers.parquet");
    let ms = env!("CARGO_BIN_EXE_microseg");
    let o = Command::new(ms)
        .args([
            "segment",
            data.to_str().unwrap(),
            "--k",
            "6",
            "--log1p",
            "monetary,frequency",
            "--outcomes",
            "country",
            "--out-dir",
            "out",
        ])
        .current_dir(p)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let html = std::fs::read_to_string(p.join("out/report.html")).unwrap();
    // Self-contained: no script, no remote resource.
    for needle in ["<script", "http://", "https://", "src=\""] {
        assert!(!html.contains(needle), "the report references {needle}");
    }
    assert!(html.contains("Segments and why") && html.contains("<svg"));
    render_in_chromium(p, &p.join("out/report.html"), 20_000);
}

/// Open `page` in headless Chromium: no console message, a screenshot of at least
/// `min_png` bytes (skipped with a notice where no browser is installed, unless
/// MICROSEG_REQUIRE_BROWSER_TESTS is set).
pub fn render_in_chromium(p: &Path, page: &Path, min_png: usize) {
    let Some(browser) = chromium() else {
        if std::env::var_os("MICROSEG_REQUIRE_BROWSER_TESTS").is_some() {
            panic!("no chromium found but MICROSEG_REQUIRE_BROWSER_TESTS is set");
        }
        eprintln!("note: chromium not installed; the browser check is skipped");
        return;
    };
    let shot = p.join("shot.png");
    let o = Command::new(browser)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--enable-logging=stderr",
            "--v=0",
            "--window-size=1280,2000",
        ])
        .arg(format!("--user-data-dir={}", p.join("profile").display()))
        .arg(format!("--screenshot={}", shot.display()))
        .arg(format!("file://{}", page.display()))
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "chromium failed: {err}");
    let console: Vec<&str> = err.lines().filter(|l| l.contains(":CONSOLE") || l.contains("Uncaught")).collect();
    assert!(console.is_empty(), "console messages: {console:?}");
    let png = std::fs::read(&shot).unwrap();
    assert!(png.len() > min_png && png.starts_with(b"\x89PNG"), "no screenshot ({} bytes)", png.len());
}

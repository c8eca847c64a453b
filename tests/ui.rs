//! The status page (issue 18) in a real headless Chromium, driven over the DevTools protocol:
//! it shows a group converging, heals without a reload, shows a paused group with its message,
//! renders hostile plugin text as text, and is refused without the token on TCP.

use std::io::{Read, Write};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use headless_chrome::protocol::cdp::Page::CaptureScreenshotFormatOption;
use headless_chrome::{Browser, LaunchOptions, Tab};
use serde_json::{Value, json};

use crate::support::daemon::Daemon;
use crate::support::group::{instances, write_spec};
use crate::support::{Env, external_tool};

const TOKEN: &str = "ui-test-token-0123456789";
const HOSTILE: &str =
    "<script>window.__pwned = 1</script><img src=x onerror=\"window.__pwned = 2\">";

fn eval(tab: &Tab, js: &str) -> Value {
    tab.evaluate(js, false)
        .unwrap_or_else(|e| panic!("evaluating {js}: {e}"))
        .value
        .unwrap_or(Value::Null)
}

fn wait_page(tab: &Tab, what: &str, js: &str) {
    let start = Instant::now();
    while eval(tab, js) != Value::Bool(true) {
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "the page never showed {what}; main is:\n{}",
            eval(tab, "document.getElementById('main').innerText")
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A raw GET on the TCP listener with no credentials: (status, body).
fn get_without_token(addr: &str, path: &str) -> (u16, String) {
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    let status = out
        .split_whitespace()
        .nth(1)
        .unwrap_or("0")
        .parse()
        .unwrap_or(0);
    let body = out
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    (status, body)
}

#[test]
fn the_status_page_is_live_escapes_plugin_text_and_needs_the_token() {
    let Some(chromium) = external_tool("INFRAKIT_CHROMIUM", "chromium", "apt-get install chromium")
    else {
        return;
    };
    let env = Env::new();
    env.set_var("INFRAKIT_TOKEN", TOKEN);
    env.install_plugin("fixture-misbehave", None);
    let daemon = Daemon::start(&env, &["--tcp", "127.0.0.1:0", "--poll-interval", "200ms"]);
    let addr = daemon.tcp_address().expect("the TCP listener's address");

    // Without the token: the login form, no data, on every page path; the cookie never opens
    // the API.
    let spec = env.data_dir().join("web.json");
    write_spec(&spec, "web", json!({"Size": 3}), json!({}));
    env.ok(&["group", "commit", spec.to_str().unwrap()], None);
    let (status, body) = get_without_token(&addr, "/");
    assert_eq!(status, 401);
    assert!(body.contains("<form") && !body.contains("web"), "{body}");
    assert_eq!(get_without_token(&addr, "/ui/fragment").0, 401);
    assert_eq!(get_without_token(&addr, "/?token=wrong").0, 401);

    let browser = Browser::new(
        LaunchOptions::default_builder()
            .path(Some(PathBuf::from(chromium)))
            .headless(true)
            .sandbox(false)
            .window_size(Some((1280, 1000)))
            .idle_browser_timeout(Duration::from_secs(120))
            .build()
            .unwrap(),
    )
    .expect("start chromium");
    let tab = browser.new_tab().unwrap();
    tab.navigate_to(&format!("http://{addr}/?token={TOKEN}"))
        .unwrap()
        .wait_until_navigated()
        .unwrap();
    assert_eq!(
        tab.get_url(),
        format!("http://{addr}/"),
        "the token left the address bar"
    );
    // A reload would lose this.
    eval(&tab, "window.__same_page = 42");

    wait_page(
        &tab,
        "web converged with 3 of 3",
        "(() => { const r = document.querySelector('tr[data-group=\"web\"]'); \
         return !!r && r.dataset.phase === 'converged' && r.querySelector('.count').textContent === '3 / 3'; })()",
    );

    // An instance deleted on disk is replaced, and the page shows it without a reload.
    let before = instances(&env);
    let victim = before[0]["ID"].as_str().unwrap().to_string();
    std::fs::remove_file(env.scratch("instance-file").join(format!("{victim}.json"))).unwrap();
    wait_page(
        &tab,
        "the replacement",
        &format!(
            "(() => {{ const ids = [...document.querySelectorAll('#group-web tr.instance')].map(r => r.dataset.id); \
             return ids.length === 3 && !ids.includes('{victim}'); }})()"
        ),
    );

    // A group a plugin refuses with hostile text: paused, its message shown as text.
    let evil = env.data_dir().join("evil.json");
    std::fs::write(
        &evil,
        json!({"ID": "evil", "Properties": {
            "Allocation": {"Size": 1},
            "Instance": {"Plugin": "fixture-misbehave", "Properties": {"Do": "invalid", "Message": HOSTILE}},
            "Flavor": {"Plugin": "flavor-vanilla"},
        }})
        .to_string(),
    )
    .unwrap();
    env.ok(&["group", "commit", evil.to_str().unwrap()], None);
    wait_page(
        &tab,
        "evil paused with its message",
        "(() => { const a = document.querySelector('#group-evil .alert'); \
         return !!a && a.textContent.includes('<script>window.__pwned'); })()",
    );
    assert_eq!(
        eval(&tab, "typeof window.__pwned"),
        json!("undefined"),
        "plugin text ran"
    );
    assert_eq!(
        eval(
            &tab,
            "document.querySelectorAll('main img, main script').length"
        ),
        json!(0)
    );
    assert_eq!(
        eval(
            &tab,
            "document.querySelector('tr[data-group=\"evil\"]').dataset.phase"
        ),
        json!("paused")
    );
    assert_eq!(
        eval(&tab, "window.__same_page"),
        json!(42),
        "the page was reloaded"
    );
    assert_eq!(
        eval(&tab, "document.getElementById('live').textContent"),
        json!("live")
    );

    let png = tab
        .capture_screenshot(CaptureScreenshotFormatOption::Png, None, None, true)
        .unwrap();
    let shot = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("status-page.png");
    std::fs::write(&shot, png).unwrap();
    eprintln!("screenshot of the status page: {}", shot.display());
    drop(daemon);
}

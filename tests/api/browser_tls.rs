//! The chat page in Chromium over HTTPS and HTTP/2, with a certificate
//! from a throwaway CA that only this browser trusts (by the CA's key hash,
//! not a blanket "ignore certificate errors"): twelve tabs of one room, all
//! live, over one connection (HTTP/1.1 would allow six per host).

use std::time::Duration;

use serde_json::json;

use crate::external::{BrowserOpts, ChromeDriver, Session};
use crate::helpers::spawn_app_with;
use crate::tls::TestCa;

const BW: Duration = Duration::from_secs(30);
const TABS: usize = 12;

async fn wait_connected(s: &Session, who: &str) {
    s.wait_js(
        &format!("{who}: connected"),
        BW,
        "const e = document.getElementById('status');
         return {ok: !!window.ssechat && !!e && e.dataset.state === 'connected',
                 state: e && e.dataset.state};",
        json!([]),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn browser_twelve_tabs_over_one_https_http2_connection() {
    let Some(wd) = ChromeDriver::start("browser_twelve_tabs_https").await else {
        return;
    };
    let ca = TestCa::new();
    let dir = tempfile::tempdir().unwrap();
    let (c, k) = ca.leaf(&["127.0.0.1"]).write(dir.path(), "server");
    let app = spawn_app_with(&[
        "--tls-cert",
        c.to_str().unwrap(),
        "--tls-key",
        k.to_str().unwrap(),
    ])
    .await;
    let base = format!("https://{}", app.addr);
    let url = format!("{base}/chat?room=tls12");
    let s = wd
        .session_with_args(
            BrowserOpts::default(),
            &[format!(
                "--ignore-certificate-errors-spki-list={}",
                ca.spki_hash()
            )],
        )
        .await;

    let mut tabs = vec![s.window_handle().await];
    for i in 1..=TABS {
        if i > 1 {
            tabs.push(s.new_tab().await);
        }
        s.goto(&url).await;
        wait_connected(&s, &format!("tab {i}")).await;
        let proto = s
            .execute(
                "return performance.getEntriesByType('navigation')[0].nextHopProtocol",
                json!([]),
            )
            .await;
        assert_eq!(proto, "h2", "tab {i} loaded over HTTP/2");
    }

    // Every page, script, stream and fetch of the twelve tabs: one
    // connection (checked before the test's own client connects). Under
    // load the browser may race a spare connection while the first TLS
    // handshake is slow; it closes an unused one, so wait for that.
    let deadline = tokio::time::Instant::now() + BW;
    loop {
        let n = crate::tls::established_to(app.addr.port());
        if n == 1 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the browser holds {n} connections, expected one"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let http = reqwest::Client::builder()
        .use_rustls_tls()
        .tls_built_in_root_certs(false)
        .add_root_certificate(ca.root())
        .build()
        .unwrap();
    let res = http
        .post(format!("{base}/chat/messages"))
        .json(&json!({"room": "tls12", "name": "carol", "text": "to twelve tabs"}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 201);
    for (i, t) in tabs.iter().enumerate() {
        s.switch_to(t).await;
        s.wait_js(
            &format!("tab {} to show the message", i + 1),
            BW,
            "const rows = [...document.querySelectorAll('#messages > li.msg')]
               .filter(li => li.textContent.includes('to twelve tabs'));
             return rows.length === 1;",
            json!([]),
        )
        .await;
        wait_connected(&s, &format!("tab {}", i + 1)).await;
    }
    s.quit().await;
}

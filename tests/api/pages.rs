//! The HTML pages and static assets.

use std::io::Read as _;

use crate::helpers::{spawn_app, spawn_app_with, token, TestApp};

#[tokio::test]
async fn chat_page_renders_history_escaped_with_a_working_form() {
    let app = spawn_app().await;
    let t = token();
    app.post_json(Some(&t), serde_json::json!({"room":"pg","text":"<script>alert(1)</script>\nline two","name":"<b>bob</b>"}))
        .await;
    let id = app.send(None, "pg", "plain & simple").await;
    let res = app
        .http
        .get(app.url("/chat?room=pg"))
        .header("cookie", format!("ssechat_client={t}"))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    assert!(res.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/html"));
    assert!(
        !res.headers().contains_key("set-cookie"),
        "cookie already present"
    );
    let html = res.text().await.unwrap();
    assert!(!html.contains("<script>alert(1)"), "user text is escaped");
    assert!(!html.contains("<b>bob</b>"), "names are escaped");
    assert!(html.contains("alert(1)") && html.contains("line two"));
    assert!(html.contains("plain &amp; simple") || html.contains("plain &#38; simple"));
    assert!(html.contains(r#"method="post""#) && html.contains(r#"action="/chat/messages""#));
    assert!(html.contains(r#"name="text""#));
    assert!(html.contains(&format!(r#"data-last-id="{id}""#)));
    assert!(html.contains("/chat.js\""));
    assert!(
        html.contains(r#"class="msg me""#) || html.contains("msg me"),
        "own message marked"
    );
}

#[tokio::test]
async fn chat_page_sets_the_client_cookie_when_missing() {
    let app = spawn_app().await;
    let res = app.get("/chat").await;
    let cookie = res.headers()["set-cookie"].to_str().unwrap().to_owned();
    assert!(cookie.starts_with("ssechat_client=") && cookie.contains("HttpOnly"));
    assert_eq!(app.get("/chat?room=no%20spaces").await.status(), 400);
}

#[tokio::test]
async fn welcome_page_lists_rooms_with_online_counts() {
    let app = spawn_app().await;
    app.send(None, "quiet-room", "hi").await;
    let _s = app.subscribe("busy-room", &token(), "x").await;
    let html = app.get("/").await.text().await.unwrap();
    assert!(html.contains("/chat"));
    assert!(html.contains("quiet-room"));
    assert!(html.contains("busy-room"));
    // Each room's line carries its own count.
    let line_of = |room: &str| {
        let at = html.find(&format!(">{room}<")).expect("room listed");
        html[at..].split("</li>").next().unwrap().to_owned()
    };
    assert!(
        line_of("busy-room").contains("1 online"),
        "online count shown"
    );
    assert!(line_of("quiet-room").contains("0 online"));
}

/// The hashed directory a page links to, e.g. `/static/0123456789ab`.
fn static_dir(html: &str) -> String {
    let at = html.find("/static/").expect("the page links to /static/");
    let dir = &html[at..at + "/static/".len() + 12];
    assert!(
        dir["/static/".len()..]
            .bytes()
            .all(|b| b.is_ascii_hexdigit()),
        "a content hash names the directory: {dir}"
    );
    dir.to_owned()
}

/// Every `href="/static/…"` and `src="/static/…"` of a page.
fn static_links(html: &str) -> Vec<String> {
    let mut out = Vec::new();
    for attr in ["href=\"", "src=\""] {
        for (at, _) in html.match_indices(attr) {
            let rest = &html[at + attr.len()..];
            let url = &rest[..rest.find('"').unwrap()];
            if url.starts_with("/static/") {
                out.push(url.to_owned());
            }
        }
    }
    out
}

async fn get_with(app: &TestApp, path: &str, headers: &[(&str, &str)]) -> reqwest::Response {
    let mut req = app.http.get(app.url(path));
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    req.send().await.expect("GET")
}

fn gunzip(b: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    flate2::read::GzDecoder::new(b)
        .read_to_end(&mut out)
        .expect("valid gzip");
    out
}

fn unbrotli(b: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    brotli::BrotliDecompress(&mut &b[..], &mut out).expect("valid brotli");
    out
}

#[tokio::test]
async fn pages_link_hashed_static_files_cached_for_a_year_and_imports_resolve_inside() {
    let app = spawn_app().await;
    for page in ["/", "/chat?room=hash"] {
        let html = app.get(page).await.text().await.unwrap();
        let dir = static_dir(&html);
        let links = static_links(&html);
        assert!(
            links.iter().all(|l| l.starts_with(&format!("{dir}/"))),
            "{page}: every static link is hashed: {links:?}"
        );
        assert!(links.contains(&format!("{dir}/chat.css")), "{page}");
        for url in links {
            let res = app.get(&url).await;
            assert_eq!(res.status(), 200, "{url}");
            assert_eq!(
                res.headers()["cache-control"],
                "public, max-age=31536000, immutable",
                "{url}"
            );
            assert!(res.headers().contains_key("etag"), "{url}");
        }
    }
    let html = app.get("/chat").await.text().await.unwrap();
    let dir = static_dir(&html);
    assert!(html.contains(&format!(r#"<script type="module" src="{dir}/chat.js">"#)));
    // Every module a module imports is served from the same hashed
    // directory, and the page preloads it.
    let mut seen = vec!["chat.js".to_owned()];
    let mut i = 0;
    while i < seen.len() {
        let js = app
            .get(&format!("{dir}/{}", seen[i]))
            .await
            .text()
            .await
            .unwrap();
        for (at, _) in js.match_indices(" from './") {
            let rest = &js[at + " from './".len()..];
            let name = rest[..rest.find('\'').unwrap()].to_owned();
            if !seen.contains(&name) {
                seen.push(name);
            }
        }
        i += 1;
    }
    assert!(
        seen.len() >= 6,
        "the page script is split into modules: {seen:?}"
    );
    for m in &seen[1..] {
        assert!(
            html.contains(&format!(r#"<link rel="modulepreload" href="{dir}/{m}">"#)),
            "{m} is preloaded"
        );
        assert_eq!(app.get(&format!("{dir}/{m}")).await.status(), 200, "{m}");
    }
    // The unhashed names still work, revalidated on every use.
    let plain = app.get("/static/chat.js").await;
    assert_eq!(plain.status(), 200);
    assert_eq!(plain.headers()["cache-control"], "no-cache");
    let hashed = app
        .get(&format!("{dir}/chat.js"))
        .await
        .bytes()
        .await
        .unwrap();
    assert_eq!(plain.bytes().await.unwrap(), hashed, "the same bytes");
    // Another build's directory, or a path that climbs out, is not found.
    for bad in [
        "/static/000000000000/chat.js",
        "/static/../Cargo.toml",
        "/static/nope.js",
    ] {
        assert_eq!(app.get(bad).await.status(), 404, "{bad}");
    }
}

#[tokio::test]
async fn static_files_come_in_the_encoding_the_client_accepts() {
    let app = spawn_app().await;
    let dir = static_dir(&app.get("/chat").await.text().await.unwrap());
    for file in ["chat.js", "view.js", "chat.css"] {
        let url = format!("{dir}/{file}");
        let plain = get_with(&app, &url, &[]).await;
        assert!(!plain.headers().contains_key("content-encoding"), "{file}");
        assert_eq!(plain.headers()["vary"], "accept-encoding");
        assert_eq!(plain.headers()["x-content-type-options"], "nosniff");
        let plain = plain.bytes().await.unwrap().to_vec();
        let mut etags = Vec::new();
        for (accept, want) in [
            ("gzip", Some("gzip")),
            ("gzip, deflate, br, zstd", Some("br")),
            ("br;q=0, gzip", Some("gzip")),
            ("gzip;q=0.2, br;q=0.9", Some("br")),
            ("identity", None),
            ("*;q=0", None),
        ] {
            let res = get_with(&app, &url, &[("accept-encoding", accept)]).await;
            assert_eq!(res.status(), 200);
            let got = res
                .headers()
                .get("content-encoding")
                .map(|v| v.to_str().unwrap().to_owned());
            assert_eq!(
                got.as_deref(),
                want,
                "{file} with Accept-Encoding: {accept}"
            );
            let etag = res.headers()["etag"].to_str().unwrap().to_owned();
            let body = res.bytes().await.unwrap().to_vec();
            let decoded = match want {
                Some("gzip") => gunzip(&body),
                Some("br") => unbrotli(&body),
                _ => body.clone(),
            };
            assert_eq!(decoded, plain, "{file} {accept}: the same file");
            if want.is_some() {
                assert!(body.len() < plain.len() / 2, "{file} {accept}: compressed");
            }
            etags.push((accept, etag));
        }
        // Each representation has its own validator.
        let br_tag = &etags[1].1;
        assert_ne!(br_tag, &etags[0].1);
        let again = get_with(
            &app,
            &url,
            &[("accept-encoding", "br"), ("if-none-match", br_tag)],
        )
        .await;
        assert_eq!(again.status(), 304);
        let other = get_with(
            &app,
            &url,
            &[("accept-encoding", "gzip"), ("if-none-match", br_tag)],
        )
        .await;
        assert_eq!(
            other.status(),
            200,
            "a brotli ETag does not validate the gzip bytes"
        );
    }
    // Pages are gzipped too when the browser takes it.
    for _ in 0..30 {
        app.send(None, "gz", "a message to make the page worth compressing")
            .await;
    }
    let res = get_with(&app, "/chat?room=gz", &[("accept-encoding", "gzip, br")]).await;
    assert_eq!(res.headers()["content-encoding"], "gzip");
    let html = String::from_utf8(gunzip(&res.bytes().await.unwrap())).unwrap();
    assert!(html.contains("a message to make the page worth compressing"));
}

#[tokio::test]
async fn pages_forbid_inline_script_and_foreign_origins() {
    let app = spawn_app().await;
    for page in ["/", "/chat?room=csp"] {
        let res = app.get(page).await;
        let h = res.headers().clone();
        let csp = h["content-security-policy"].to_str().unwrap();
        for want in [
            "default-src 'self'",
            "script-src 'self'",
            "style-src 'self'",
            "connect-src 'self'",
            "frame-ancestors 'none'",
            "base-uri 'none'",
            "form-action 'self'",
        ] {
            assert!(csp.contains(want), "{page}: CSP has {want}: {csp}");
        }
        assert!(!csp.contains("unsafe"), "{page}: nothing unsafe: {csp}");
        assert_eq!(h["x-content-type-options"], "nosniff", "{page}");
        // The templates hold nothing the policy would block.
        let html = res.text().await.unwrap();
        for (at, _) in html.match_indices("<script") {
            let tag = &html[at..at + html[at..].find('>').unwrap()];
            assert!(tag.contains(" src="), "{page}: no inline script: {tag}");
        }
        assert!(
            !html.contains("<style") && !html.contains(" style="),
            "{page}: no inline style"
        );
        let lower = html.to_ascii_lowercase();
        assert!(
            !lower.contains(" onclick=")
                && !lower.contains(" onload=")
                && !lower.contains("javascript:"),
            "{page}: no inline handlers"
        );
    }
}

#[tokio::test]
async fn a_page_that_mints_a_client_token_is_never_stored_by_a_cache() {
    let app = spawn_app().await;
    let res = app.get("/chat?room=ns").await;
    assert!(res.headers().contains_key("set-cookie"));
    assert_eq!(res.headers()["cache-control"], "no-store");
}

/// The name a client's next stream is greeted with.
async fn name_of(app: &TestApp, t: &str) -> String {
    let mut s = app.events_with("room=bk", &[("x-chat-client", t)]).await;
    s.expect_json("hello").await["name"]
        .as_str()
        .unwrap()
        .to_owned()
}

async fn page_as(app: &TestApp, query: &str, t: &str, extra: &[(&str, &str)]) -> reqwest::Response {
    let cookie = format!("ssechat_client={t}");
    let mut headers = vec![("cookie", cookie.as_str())];
    headers.extend_from_slice(extra);
    get_with(app, &format!("/chat?{query}"), &headers).await
}

#[tokio::test]
async fn a_bookmarked_name_is_taken_unless_the_link_comes_from_another_site() {
    let app = spawn_app().await;
    let t = token();
    let res = page_as(
        &app,
        "room=bk&name=alice",
        &t,
        &[("sec-fetch-site", "none")],
    )
    .await;
    assert_eq!(res.status(), 200);
    assert!(res.text().await.unwrap().contains(r#"data-name="alice""#));
    assert_eq!(name_of(&app, &t).await, "alice");

    // A link on another site cannot rename anyone.
    let res = page_as(
        &app,
        "room=bk&name=mallory",
        &t,
        &[("sec-fetch-site", "cross-site")],
    )
    .await;
    assert_eq!(res.status(), 200, "the page still shows");
    assert!(res.text().await.unwrap().contains(r#"data-name="alice""#));
    assert_eq!(name_of(&app, &t).await, "alice");
    // From our own pages (same-origin), it does.
    page_as(
        &app,
        "room=bk&name=alicia",
        &t,
        &[("sec-fetch-site", "same-origin")],
    )
    .await;
    assert_eq!(name_of(&app, &t).await, "alicia");

    // A name the server refuses is an error and changes nothing.
    let long = "n".repeat(33);
    for bad in ["", "x%0Ay", "%20%20", long.as_str()] {
        let res = page_as(&app, &format!("room=bk&name={bad}"), &t, &[]).await;
        assert_eq!(res.status(), 400, "name={bad}");
    }
    assert_eq!(name_of(&app, &t).await, "alicia");

    // A first visit with a name: the new token carries it.
    let res = app.get("/chat?room=bk&name=zoe").await;
    let cookie = res.headers()["set-cookie"].to_str().unwrap().to_owned();
    let minted = cookie
        .strip_prefix("ssechat_client=")
        .and_then(|c| c.split(';').next())
        .unwrap()
        .to_owned();
    assert_eq!(name_of(&app, &minted).await, "zoe");
}

#[tokio::test]
async fn without_a_message_limit_the_box_has_no_maxlength() {
    let app = spawn_app_with(&["--max-message-chars", "0"]).await;
    let html = app.get("/chat").await.text().await.unwrap();
    assert!(!html.contains("maxlength=\"0\""), "no zero-length box");
    assert!(!html.contains("data-max-chars"));
    assert!(html.contains(r#"name="text""#));
    let limited = spawn_app().await;
    let html = limited.get("/chat").await.text().await.unwrap();
    assert!(html.contains(r#"maxlength="2000""#) && html.contains(r#"data-max-chars="2000""#));
}

#[tokio::test]
async fn static_assets_are_served_from_the_binary() {
    let app = spawn_app().await;
    let js = app.get("/static/chat.js").await;
    assert_eq!(js.status(), 200);
    assert!(js.headers()["content-type"]
        .to_str()
        .unwrap()
        .contains("javascript"));
    let etag = js.headers()["etag"].to_str().unwrap().to_owned();
    assert!(js.text().await.unwrap().contains("import "));
    let css = app.get("/static/chat.css").await;
    assert_eq!(css.status(), 200);
    let again = app
        .http
        .get(app.url("/static/chat.js"))
        .header("if-none-match", etag)
        .send()
        .await
        .unwrap();
    assert_eq!(again.status(), 304);
    assert_eq!(app.get("/static/nope.js").await.status(), 404);
}

//! The HTML pages and static assets.

use crate::helpers::{spawn_app, token};

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
    assert!(html.contains("/static/chat.js"));
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
    assert!(js.text().await.unwrap().contains("EventSource"));
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

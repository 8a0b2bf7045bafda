//! `/healthz`, `/metrics`, unknown routes.

use serde_json::Value;

use crate::helpers::{metric_value, spawn_app, token};

#[tokio::test]
async fn healthz_says_ok_then_503_when_shutting_down() {
    let app = spawn_app().await;
    let res = app.get("/healthz").await;
    assert_eq!(res.status(), 200);
    assert_eq!(res.text().await.unwrap(), "ok");
    let head = app.http.head(app.url("/healthz")).send().await.unwrap();
    assert_eq!(head.status(), 200, "HEAD works for health checks");
    assert_eq!(head.text().await.unwrap(), "", "HEAD has no body");
    app.chat.shutdown();
    assert_eq!(app.get("/healthz").await.status(), 503);
}

#[tokio::test]
async fn metrics_change_as_traffic_flows() {
    let app = spawn_app().await;
    let before = app.get("/metrics").await.text().await.unwrap();
    assert_eq!(metric_value(&before, "ssechat_sse_streams"), 0.0);
    let mut s = app.subscribe("m", &token(), "x").await;
    app.send(None, "m", "hi").await;
    s.expect("message").await;
    app.post_raw("/chat/messages", Some("application/json"), "{", &[])
        .await;
    let after = app.get("/metrics").await.text().await.unwrap();
    assert_eq!(metric_value(&after, "ssechat_sse_streams"), 1.0);
    assert_eq!(metric_value(&after, "ssechat_messages_total"), 1.0);
    assert!(metric_value(&after, "ssechat_events_delivered_total") >= 1.0);
    // One batch stored: one commit timed.
    assert_eq!(
        metric_value(&after, "ssechat_store_commit_seconds_count"),
        1.0
    );
    assert_eq!(metric_value(&after, "ssechat_long_polls"), 0.0);
    assert_eq!(
        metric_value(&after, "ssechat_subscribers_dropped_total"),
        0.0
    );
    assert_eq!(
        metric_value(
            &after,
            "ssechat_requests_rejected_total{reason=\"bad_request\"}"
        ),
        1.0
    );
}

#[tokio::test]
async fn unknown_routes_and_methods_are_json_errors() {
    let app = spawn_app().await;
    let res = app.get("/nope").await;
    assert_eq!(res.status(), 404);
    let v: Value = res.json().await.unwrap();
    assert!(v["error"].is_string());
    let res = app
        .http
        .delete(app.url("/chat/messages"))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 405);
}

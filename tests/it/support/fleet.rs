//! Helpers the purge and fleet tests share: an admin listener with a token, admin purge
//! requests, and bounded polling.

use std::time::{Duration, Instant};

use super::proxy;

/// The admin token the tests configure.
pub const TOKEN: &str = "s3cret-token";

/// An `admin:` YAML line on a free loopback port with `TOKEN`, and that listener's URL.
pub fn admin_yaml() -> (String, String) {
    let port = crate::support::free_port();
    (
        format!("admin: {{ listen: 127.0.0.1:{port}, token: {TOKEN} }}\n"),
        format!("http://127.0.0.1:{port}"),
    )
}

/// `POST {admin}/purge?{query}` with `token`: (status, body).
pub async fn admin_purge(admin: &str, query: &str, token: &str) -> (u16, String) {
    let r = proxy::client()
        .post(format!("{admin}/purge?{query}"))
        .bearer_auth(token)
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    (status, summary(&r.text().await.unwrap()))
}

/// A purge answer as `{"purged":TOTAL,"mode":"MODE"}\n` (the counts per selector
/// dropped), or the body as it was when it is not a purge answer.
pub fn summary(body: &str) -> String {
    let Ok(v) = serde_json::from_str::<serde_json::Value>(body) else {
        return body.to_string();
    };
    match (v["total"].as_u64(), v["mode"].as_str()) {
        (Some(total), Some(mode)) => format!("{{\"purged\":{total},\"mode\":\"{mode}\"}}\n"),
        _ => body.to_string(),
    }
}

/// Polls `done` every 20 ms for at most `limit`; false when it never held.
pub async fn eventually(limit: Duration, mut done: impl AsyncFnMut() -> bool) -> bool {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if done().await {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    false
}

//! Registry notifications (`[[notifications]]`): events in distribution's
//! envelope (`application/vnd.docker.distribution.events.v2+json`), so
//! receivers written for distribution work unchanged.
//!
//! An event is queued in the metadata store in the same transaction as the
//! change it describes (`Notifier::events` gives the `QueueEvent` writes a
//! handler adds to its own), so a change is never committed without its
//! event nor an event without its change, and a kill loses neither. One
//! task per endpoint (`deliver`) sends the queue in order, in batches, at
//! least once: an event leaves the queue only after the endpoint answered
//! 2xx. Failures back off exponentially. A dead endpoint costs a push
//! nothing but a queued row, and its queue is bounded (`max_pending`;
//! beyond it events are dropped, counted and logged). With several nodes,
//! one at a time holds an endpoint's delivery lease.
//!
//! Owns: endpoint filters, the event JSON, delivery and its backoff.
//! Must not: send anything from a request's path, or hold events in
//! memory between the queue and the endpoint beyond one batch.

use crate::auth::pattern::RepoPattern;
use crate::calendar::unix_now;
use crate::config::NotificationConfig;
use crate::meta::{Meta, MetaError, MetaWrite};
use crate::metrics::Metrics;
use crate::oci::Digest;
use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue, Method, Request};
use http_body_util::{BodyExt, Full};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::{connect::HttpConnector, Client};
use hyper_util::rt::TokioExecutor;
use std::sync::Arc;
use std::time::{Duration, SystemTime};
use tokio::sync::Notify;

pub const MEDIA_TYPE: &str = "application/vnd.docker.distribution.events.v2+json";
/// Events sent in one POST at most.
const BATCH: usize = 64;
/// How long a node's claim on an endpoint lasts.
const LEASE: Duration = Duration::from_secs(30);
/// How often a delivery task looks for events queued by other nodes.
const POLL: Duration = Duration::from_secs(1);
const BACKOFF_MIN: Duration = Duration::from_secs(1);
const BACKOFF_MAX: Duration = Duration::from_secs(60);

/// What an event reports (distribution's event `action`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventKind {
    Push,
    Pull,
    Delete,
}

impl EventKind {
    fn name(self) -> &'static str {
        match self {
            EventKind::Push => "push",
            EventKind::Pull => "pull",
            EventKind::Delete => "delete",
        }
    }
}

/// What an event is about.
pub struct Target<'a> {
    pub repository: &'a str,
    pub digest: Option<&'a Digest>,
    pub media_type: Option<&'a str>,
    pub size: Option<u64>,
    pub tag: Option<&'a str>,
}

/// The request that made the change.
pub struct Origin {
    pub id: String,
    pub addr: String,
    pub host: String,
    pub method: String,
    pub user_agent: String,
    pub actor: String,
    /// An OIDC user's issuer and subject (the audit log's, not the
    /// event's).
    pub identity: String,
}

struct Receiver {
    url: String,
    actions: Vec<EventKind>,
    repositories: Vec<RepoPattern>,
    headers: HeaderMap,
    timeout: Duration,
    max_pending: u64,
}

impl Receiver {
    fn wants(&self, action: EventKind, repository: &str) -> bool {
        self.actions.contains(&action)
            && (self.repositories.is_empty()
                || self.repositories.iter().any(|p| p.matches(repository)))
    }
}

/// The configured endpoints, and who this node is in its events.
pub struct Notifier {
    endpoints: Vec<Receiver>,
    /// `source.addr`: where this registry listens.
    source_addr: String,
    /// `http` or `https`, for the target's URL.
    scheme: &'static str,
    /// `source.instanceID`, and this node's name for delivery leases.
    instance: String,
    /// Rung after a handler's write queued events here, so they go out at
    /// once instead of at the next poll.
    queued: Notify,
}

impl Notifier {
    /// The configuration's rules for `[[notifications]]`, checked without I/O.
    pub fn check(cfgs: &[NotificationConfig]) -> Result<(), String> {
        Self::compile(cfgs).map(|_| ())
    }

    fn compile(cfgs: &[NotificationConfig]) -> Result<Vec<Receiver>, String> {
        let mut out: Vec<Receiver> = Vec::new();
        for (i, c) in cfgs.iter().enumerate() {
            let at = format!("notifications[{i}] ({})", c.url);
            let url: url::Url = c.url.parse().map_err(|e| format!("{at}: url: {e}"))?;
            if !matches!(url.scheme(), "http" | "https") {
                return Err(format!("{at}: url must be http:// or https://"));
            }
            if out.iter().any(|e| e.url == c.url) {
                return Err(format!("{at}: the same url twice"));
            }
            let actions = c
                .events
                .iter()
                .map(|e| match e.as_str() {
                    "push" => Ok(EventKind::Push),
                    "pull" => Ok(EventKind::Pull),
                    "delete" => Ok(EventKind::Delete),
                    other => Err(format!(
                        "{at}: unknown event {other:?} (push, pull, delete)"
                    )),
                })
                .collect::<Result<Vec<_>, _>>()?;
            let mut headers = HeaderMap::new();
            for (k, v) in &c.headers {
                let name = HeaderName::from_bytes(k.as_bytes())
                    .map_err(|e| format!("{at}: header {k:?}: {e}"))?;
                let value =
                    HeaderValue::from_str(v).map_err(|e| format!("{at}: header {k:?}: {e}"))?;
                headers.insert(name, value);
            }
            if c.timeout_secs == 0 || c.max_pending == 0 {
                return Err(format!("{at}: timeout_secs and max_pending must be > 0"));
            }
            out.push(Receiver {
                url: c.url.clone(),
                actions,
                repositories: c.repositories.iter().map(|p| RepoPattern::new(p)).collect(),
                headers,
                timeout: Duration::from_secs(c.timeout_secs),
                max_pending: c.max_pending,
            });
        }
        Ok(out)
    }

    pub fn new(
        cfgs: &[NotificationConfig],
        source_addr: String,
        tls: bool,
    ) -> Result<Notifier, String> {
        Ok(Notifier {
            endpoints: Self::compile(cfgs)?,
            source_addr,
            scheme: if tls { "https" } else { "http" },
            instance: uuid::Uuid::new_v4().to_string(),
            queued: Notify::new(),
        })
    }

    pub fn endpoint_count(&self) -> usize {
        self.endpoints.len()
    }

    /// Whether any endpoint takes `action` events (pull events cost a
    /// write per pull, so they are made only when someone wants them).
    pub fn wants(&self, action: EventKind) -> bool {
        self.endpoints.iter().any(|e| e.actions.contains(&action))
    }

    /// The queue writes for an event, one per endpoint that wants it: to
    /// be committed with the change they describe.
    pub fn events(
        &self,
        action: EventKind,
        target: &Target<'_>,
        origin: &Origin,
    ) -> Vec<MetaWrite> {
        let wanting: Vec<&Receiver> = self
            .endpoints
            .iter()
            .filter(|e| e.wants(action, target.repository))
            .collect();
        if wanting.is_empty() {
            return Vec::new();
        }
        let payload = self.event_json(action, target, origin);
        wanting
            .into_iter()
            .map(|e| MetaWrite::QueueEvent {
                endpoint: e.url.clone(),
                payload: payload.clone(),
                max_pending: e.max_pending,
            })
            .collect()
    }

    /// Tells the delivery tasks that events were committed.
    pub fn wake(&self) {
        self.queued.notify_waiters();
    }

    /// Forgets queues of endpoints no longer configured (at start).
    pub fn forget_others(&self) -> MetaWrite {
        MetaWrite::ForgetEndpoints {
            keep: self.endpoints.iter().map(|e| e.url.clone()).collect(),
        }
    }

    fn event_json(&self, action: EventKind, t: &Target<'_>, o: &Origin) -> Vec<u8> {
        let mut target = serde_json::Map::new();
        let mut put = |k: &str, v: serde_json::Value| {
            target.insert(k.to_owned(), v);
        };
        if let Some(m) = t.media_type {
            put("mediaType", m.into());
        }
        if let Some(s) = t.size {
            put("size", s.into());
            put("length", s.into());
        }
        if let Some(d) = t.digest {
            put("digest", d.to_string().into());
        }
        put("repository", t.repository.into());
        if let (Some(d), Some(_)) = (t.digest, t.media_type) {
            put(
                "url",
                format!(
                    "{}://{}/v2/{}/manifests/{d}",
                    self.scheme, o.host, t.repository
                )
                .into(),
            );
        }
        if let Some(tag) = t.tag {
            put("tag", tag.into());
        }
        let event = serde_json::json!({
            "id": uuid::Uuid::new_v4().to_string(),
            "timestamp": crate::calendar::rfc3339(SystemTime::now()),
            "action": action.name(),
            "target": target,
            "request": {
                "id": o.id,
                "addr": o.addr,
                "host": o.host,
                "method": o.method,
                "useragent": o.user_agent,
            },
            "actor": { "name": o.actor },
            "source": { "addr": self.source_addr, "instanceID": self.instance },
        });
        serde_json::to_vec(&event).unwrap_or_default()
    }
}

/// Delivers endpoint `index`'s queue until the task is aborted (it is one
/// of the server's background tasks).
pub async fn deliver(meta: Meta, notifier: Arc<Notifier>, index: usize, metrics: Arc<Metrics>) {
    let Some(endpoint) = notifier.endpoints.get(index) else {
        return;
    };
    let url = endpoint.url.as_str();
    let client = match http_client() {
        Ok(c) => c,
        Err(e) => {
            tracing::error!(endpoint = url, error = %e, "notifications disabled");
            return;
        }
    };
    let m = &metrics.notifications;
    let (pending, delivered, failed, dropped) = (
        m.pending.with_label_values(&[url]),
        m.delivered.with_label_values(&[url]),
        m.failed.with_label_values(&[url]),
        m.dropped.with_label_values(&[url]),
    );
    let mut backoff = BACKOFF_MIN;
    let mut dropped_seen = 0;
    // Until when this node's claim on the endpoint stands (unix s). It is
    // renewed only when there is something to send and half of it has
    // run, so an idle endpoint costs reads, never a commit per poll.
    let mut claimed_until = 0;
    loop {
        let woken = notifier.queued.notified();
        let e = url.to_owned();
        let read = meta
            .query(move |r| Ok((r.pending_events(&e, BATCH)?, r.event_counts(&e)?)))
            .await;
        let (batch, (queued, lost)) = match read {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!(endpoint = url, error = %e, "notification queue unreadable");
                tokio::time::sleep(backoff).await;
                continue;
            }
        };
        pending.set(queued as i64);
        dropped.set(lost as i64);
        if lost > dropped_seen {
            tracing::warn!(
                endpoint = url,
                dropped = lost,
                max_pending = endpoint.max_pending,
                "notification queue full: events dropped"
            );
            dropped_seen = lost;
        }
        let Some(through) = batch.last().map(|(seq, _)| *seq) else {
            tokio::select! {
                _ = woken => {}
                _ = tokio::time::sleep(POLL) => {}
            }
            continue;
        };
        let now = unix_now();
        if claimed_until <= now + LEASE.as_secs() / 2 {
            let claim = MetaWrite::ClaimDelivery {
                endpoint: url.to_owned(),
                node: notifier.instance.clone(),
                until: now + LEASE.as_secs(),
            };
            match meta.write(vec![claim]).await {
                Ok(()) => claimed_until = now + LEASE.as_secs(),
                // Another node delivers this endpoint; look again later.
                Err(MetaError::Conflict(_)) => {
                    tokio::time::sleep(LEASE / 3).await;
                    continue;
                }
                Err(e) => {
                    tracing::warn!(endpoint = url, error = %e, "notification lease not taken");
                    tokio::time::sleep(backoff).await;
                    continue;
                }
            }
        }
        let body = envelope(batch.iter().map(|(_, p)| p.as_slice()));
        match send(&client, endpoint, body).await {
            Ok(()) => {
                if let Err(e) = meta
                    .write(vec![MetaWrite::AckEvents {
                        endpoint: url.to_owned(),
                        through,
                    }])
                    .await
                {
                    // Sent again later: at least once.
                    tracing::warn!(endpoint = url, error = %e, "delivered events not acknowledged");
                }
                delivered.inc_by(batch.len() as u64);
                backoff = BACKOFF_MIN;
            }
            Err(why) => {
                failed.inc();
                tracing::warn!(endpoint = url, error = %why, retry_in_secs = backoff.as_secs(), events = batch.len(), "notification not delivered");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(BACKOFF_MAX);
            }
        }
    }
}

/// `{"events":[...]}` around already-serialized events.
fn envelope<'a>(events: impl Iterator<Item = &'a [u8]>) -> Bytes {
    let mut out = b"{\"events\":[".to_vec();
    for (i, e) in events.enumerate() {
        if i > 0 {
            out.push(b',');
        }
        out.extend_from_slice(e);
    }
    out.extend_from_slice(b"]}");
    Bytes::from(out)
}

type HttpClient = Client<HttpsConnector<HttpConnector>, Full<Bytes>>;

fn http_client() -> Result<HttpClient, String> {
    let tls = crate::tls::client_trust(None, "notifications", None)
        .or_else(|_| crate::tls::client_trusting_nothing())?;
    Ok(Client::builder(TokioExecutor::new())
        .build(crate::tls::client_connector(tls, Duration::from_secs(10))))
}

async fn send(client: &HttpClient, endpoint: &Receiver, body: Bytes) -> Result<(), String> {
    let mut req = Request::builder()
        .method(Method::POST)
        .uri(&endpoint.url)
        .header(http::header::CONTENT_TYPE, MEDIA_TYPE)
        .header(
            http::header::USER_AGENT,
            concat!("wharf/", env!("CARGO_PKG_VERSION")),
        );
    for (k, v) in &endpoint.headers {
        req = req.header(k, v);
    }
    let req = req.body(Full::new(body)).map_err(|e| e.to_string())?;
    let answer = async {
        let resp = client.request(req).await.map_err(|e| e.to_string())?;
        let status = resp.status();
        // Read (and drop) the answer so the connection can be reused.
        let _ = resp.into_body().collect().await;
        match status.is_success() {
            true => Ok(()),
            false => Err(format!("the endpoint answered {status}")),
        }
    };
    match tokio::time::timeout(endpoint.timeout, answer).await {
        Ok(r) => r,
        Err(_) => Err(format!("no answer within {} s", endpoint.timeout.as_secs())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(url: &str) -> NotificationConfig {
        NotificationConfig {
            url: url.into(),
            events: vec!["push".into(), "delete".into()],
            repositories: vec![],
            headers: Default::default(),
            timeout_secs: 5,
            max_pending: 10,
        }
    }

    fn origin() -> Origin {
        Origin {
            id: "req".into(),
            addr: "10.0.0.1".into(),
            host: "reg:5000".into(),
            method: "PUT".into(),
            user_agent: "docker/28".into(),
            actor: "ci".into(),
            identity: String::new(),
        }
    }

    #[test]
    fn events_go_to_the_endpoints_that_want_them() {
        let mut team = cfg("http://a/events");
        team.repositories = vec!["team-a/**".into()];
        let mut pulls = cfg("http://b/events");
        pulls.events = vec!["pull".into()];
        let n = Notifier::new(&[team, pulls], "reg:5000".into(), false).unwrap();
        let d = Digest::of(crate::oci::Algorithm::Sha256, b"m");
        let target = |repository| Target {
            repository,
            digest: Some(&d),
            media_type: Some("application/vnd.oci.image.manifest.v1+json"),
            size: Some(1),
            tag: Some("v1"),
        };
        assert_eq!(
            n.events(EventKind::Push, &target("team-a/app"), &origin())
                .len(),
            1
        );
        assert!(n
            .events(EventKind::Push, &target("team-b/app"), &origin())
            .is_empty());
        assert_eq!(
            n.events(EventKind::Pull, &target("team-b/app"), &origin())
                .len(),
            1
        );
        assert!(n.wants(EventKind::Pull) && n.wants(EventKind::Delete));
        let MetaWrite::QueueEvent {
            payload,
            endpoint,
            max_pending,
        } = &n.events(EventKind::Push, &target("team-a/app"), &origin())[0]
        else {
            panic!("not a queue write")
        };
        assert_eq!((endpoint.as_str(), *max_pending), ("http://a/events", 10));
        let v: serde_json::Value = serde_json::from_slice(payload).unwrap();
        assert_eq!(v["action"], "push");
        assert_eq!(v["target"]["digest"], d.to_string());
        assert_eq!(v["target"]["tag"], "v1");
        assert_eq!(v["target"]["repository"], "team-a/app");
        assert_eq!(
            v["target"]["url"],
            format!("http://reg:5000/v2/team-a/app/manifests/{d}")
        );
        assert_eq!(v["request"]["useragent"], "docker/28");
        assert_eq!(v["actor"]["name"], "ci");
        assert_eq!(v["source"]["addr"], "reg:5000");
        assert!(v["timestamp"].as_str().unwrap().ends_with('Z'));
    }

    #[test]
    fn envelope_wraps_events_in_order() {
        let body = envelope([&b"{\"a\":1}"[..], &b"{\"b\":2}"[..]].into_iter());
        assert_eq!(&body[..], br#"{"events":[{"a":1},{"b":2}]}"#);
    }

    #[test]
    fn refuses_what_cannot_work() {
        let mut bad_event = cfg("http://a");
        bad_event.events = vec!["tag".into()];
        let mut bad_header = cfg("http://a");
        bad_header.headers.insert("bad header".into(), "x".into());
        for bad in [
            vec![cfg("ftp://a")],
            vec![cfg("http://a"), cfg("http://a")],
            vec![bad_event],
            vec![bad_header],
        ] {
            assert!(Notifier::check(&bad).is_err());
        }
    }
}

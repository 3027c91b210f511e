//! The Iceberg REST catalog protocol, as far as a writer of change logs
//! needs it (what AWS Glue, S3 Tables, Polaris, Nessie, Unity and
//! Lakekeeper speak; spec: apache/iceberg `open-api/rest-catalog-open-api.yaml`).
//!
//! ```text
//!  GET  /v1/config?warehouse=W                      → overrides.prefix
//!  POST /v1/{prefix}/namespaces                     {namespace: [ns]}          409: exists
//!  GET  /v1/{prefix}/namespaces/{ns}/tables/{t}     → {metadata-location, metadata}
//!  POST /v1/{prefix}/namespaces/{ns}/tables         {name, location, schema, partition-spec, properties}
//!  POST /v1/{prefix}/namespaces/{ns}/tables/{t}     {requirements: [assert-table-uuid,
//!                                                    assert-ref-snapshot-id main = parent, …],
//!                                                    updates: [add-snapshot, set-snapshot-ref,
//!                                                    set-properties, …]}
//!       200: committed · 409: someone else committed first · 5xx / no answer: unknown
//! ```
//!
//! The server writes the metadata file and swaps it in; the requirements
//! make the swap conditional on the snapshot tidewater built upon, as the
//! SQL catalog's compare-and-swap does. A commit whose answer is lost (a
//! 5xx, a dropped connection) is settled by loading the table and looking
//! for the snapshot id tidewater chose.

use std::time::Duration;

use serde_json::{json, Value};
use tidewater_core::ErrorClass;
use tokio::sync::OnceCell;

use super::metadata::TableMetadata;
use crate::error::LakeError;

/// The outcome of a commit request.
pub enum Committed {
    Done(TableMetadata),
    /// A requirement failed (409): someone else committed first.
    Conflict,
    /// No answer, or one that does not say (5xx): the table says.
    Unknown(String),
}

/// OAuth2 client credentials (Polaris, Snowflake Open Catalog, Lakekeeper,
/// Unity, …): exchanged for a bearer token at `server`, renewed before it
/// expires and when the catalog answers 401.
#[derive(Clone)]
pub struct OAuth {
    pub client_id: String,
    pub client_secret: String,
    pub scope: String,
    /// The token endpoint; default `<uri>/v1/oauth/tokens`.
    pub server: Option<String>,
}

/// A token and when to renew it.
struct Token {
    value: String,
    renew_at: std::time::Instant,
}

/// A REST catalog at `uri`.
#[derive(Clone)]
pub struct RestCatalog {
    uri: String,
    warehouse: Option<String>,
    token: Option<String>,
    oauth: Option<OAuth>,
    fetched: std::sync::Arc<tokio::sync::Mutex<Option<Token>>>,
    client: reqwest::Client,
    prefix: std::sync::Arc<OnceCell<String>>,
}

impl std::fmt::Debug for RestCatalog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "RestCatalog({})", self.uri)
    }
}

/// A path segment, percent-encoded (namespace levels joined by 0x1F).
fn segment(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for b in text.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

impl RestCatalog {
    /// `uri` without a trailing `/`; `token` is sent as a bearer token.
    pub fn new(uri: &str, warehouse: Option<String>, token: Option<String>) -> Self {
        let client = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(10))
            .timeout(Duration::from_secs(60))
            .build()
            .unwrap_or_default();
        Self {
            uri: uri.trim_end_matches('/').to_string(),
            warehouse,
            token,
            oauth: None,
            fetched: Default::default(),
            client,
            prefix: Default::default(),
        }
    }

    /// Authenticates with OAuth2 client credentials instead of a fixed
    /// token.
    pub fn with_oauth(mut self, oauth: OAuth) -> Self {
        self.oauth = Some(oauth);
        self
    }

    /// The bearer token to send: the configured one, or one of the OAuth2
    /// server's (fetched when there is none, it is due, or `renew`).
    async fn bearer(&self, renew: bool) -> Result<Option<String>, LakeError> {
        let Some(oauth) = &self.oauth else {
            return Ok(self.token.clone());
        };
        let mut fetched = self.fetched.lock().await;
        if let Some(token) = fetched.as_ref() {
            if !renew && std::time::Instant::now() < token.renew_at {
                return Ok(Some(token.value.clone()));
            }
        }
        let server = oauth
            .server
            .clone()
            .unwrap_or_else(|| format!("{}/v1/oauth/tokens", self.uri));
        let form = [
            ("grant_type", "client_credentials"),
            ("client_id", oauth.client_id.as_str()),
            ("client_secret", oauth.client_secret.as_str()),
            ("scope", oauth.scope.as_str()),
        ];
        let body: String = form
            .iter()
            .map(|(k, v)| format!("{k}={}", segment(v)))
            .collect::<Vec<_>>()
            .join("&");
        let response = self
            .client
            .post(&server)
            .header("Content-Type", "application/x-www-form-urlencoded")
            .body(body)
            .send()
            .await
            .map_err(|err| {
                self.error(
                    format!(
                        "the OAuth2 server gave no answer: {}",
                        tidewater_core::error_chain(&err)
                    ),
                    ErrorClass::Transient,
                )
            })?;
        let status = response.status().as_u16();
        let answer: Value = response
            .text()
            .await
            .ok()
            .and_then(|t| serde_json::from_str(&t).ok())
            .unwrap_or(Value::Null);
        let Some(token) = answer.get("access_token").and_then(Value::as_str) else {
            let class = match status {
                400 | 401 | 403 => ErrorClass::Config,
                _ => ErrorClass::Transient,
            };
            let why = answer
                .get("error_description")
                .or_else(|| answer.get("error"))
                .map(|e| e.to_string())
                .unwrap_or_else(|| "(no reason given)".into());
            return Err(self.error(
                format!(
                    "the OAuth2 server refused the client credentials (HTTP {status}: {why}); \
                     check sink.catalog.credential and sink.catalog.scope"
                ),
                class,
            ));
        };
        // Renewed at 80 % of its life (an hour when the server does not say).
        let life = answer
            .get("expires_in")
            .and_then(Value::as_u64)
            .unwrap_or(3600);
        *fetched = Some(Token {
            value: token.to_string(),
            renew_at: std::time::Instant::now() + Duration::from_secs(life * 4 / 5),
        });
        Ok(Some(token.to_string()))
    }

    pub fn describe(&self) -> String {
        format!("REST catalog {}", self.uri)
    }

    fn error(&self, what: impl std::fmt::Display, class: ErrorClass) -> LakeError {
        LakeError::Catalog {
            catalog: self.describe(),
            what: what.to_string(),
            class,
        }
    }

    /// `GET /v1/config`: the prefix the server wants in every path.
    async fn prefix(&self) -> Result<&str, LakeError> {
        self.prefix
            .get_or_try_init(|| async {
                let mut url = format!("{}/v1/config", self.uri);
                if let Some(warehouse) = &self.warehouse {
                    url.push_str(&format!("?warehouse={}", segment(warehouse)));
                }
                let (status, body) = self.send(reqwest::Method::GET, &url, None).await?;
                if status != 200 {
                    return Err(self.refused("reading the catalog's config", status, &body));
                }
                let prefix = ["overrides", "defaults"]
                    .iter()
                    .find_map(|k| body.get(k)?.get("prefix")?.as_str())
                    .unwrap_or_default()
                    .trim_matches('/')
                    .to_string();
                Ok(prefix)
            })
            .await
            .map(String::as_str)
    }

    async fn url(&self, rest: &str) -> Result<String, LakeError> {
        let prefix = self.prefix().await?;
        Ok(if prefix.is_empty() {
            format!("{}/v1/{rest}", self.uri)
        } else {
            format!("{}/v1/{prefix}/{rest}", self.uri)
        })
    }

    /// Sends one request; the status and the JSON body (Null when none).
    /// A request that got no answer is a transient error.
    async fn send(
        &self,
        method: reqwest::Method,
        url: &str,
        body: Option<&Value>,
    ) -> Result<(u16, Value), LakeError> {
        let answered = self.send_once(method.clone(), url, body, false).await?;
        if answered.0 == 401 && self.oauth.is_some() {
            // The token expired early or was revoked: a new one, once.
            return self.send_once(method, url, body, true).await;
        }
        Ok(answered)
    }

    async fn send_once(
        &self,
        method: reqwest::Method,
        url: &str,
        body: Option<&Value>,
        renew: bool,
    ) -> Result<(u16, Value), LakeError> {
        let mut request = self.client.request(method, url);
        if let Some(token) = self.bearer(renew).await? {
            request = request.bearer_auth(token);
        }
        if let Some(body) = body {
            request = request
                .header("Content-Type", "application/json")
                .body(body.to_string());
        }
        let response = request.send().await.map_err(|err| {
            self.error(
                format!("no answer: {}", tidewater_core::error_chain(&err)),
                ErrorClass::Transient,
            )
        })?;
        let status = response.status().as_u16();
        let text = response.text().await.map_err(|err| {
            self.error(
                format!(
                    "the answer broke off: {}",
                    tidewater_core::error_chain(&err)
                ),
                ErrorClass::Transient,
            )
        })?;
        let body = serde_json::from_str(&text).unwrap_or(Value::Null);
        Ok((status, body))
    }

    /// An error for an answer that refused `doing`, classed by status.
    fn refused(&self, doing: &str, status: u16, body: &Value) -> LakeError {
        let message = body
            .get("error")
            .and_then(|e| e.get("message"))
            .and_then(Value::as_str)
            .unwrap_or("(no message)");
        let class = match status {
            401 | 403 => ErrorClass::Config,
            408 | 429 | 500..=599 => ErrorClass::Transient,
            _ => ErrorClass::Definite,
        };
        let hint = match status {
            401 | 403 => {
                "; check sink.catalog.token or sink.catalog.credential and the catalog's grants"
            }
            _ => "",
        };
        self.error(format!("{doing}: HTTP {status}: {message}{hint}"), class)
    }

    fn loaded(&self, body: &Value) -> Result<TableMetadata, LakeError> {
        let (Some(location), Some(json)) = (
            body.get("metadata-location").and_then(Value::as_str),
            body.get("metadata"),
        ) else {
            return Err(self.error(
                "the catalog's answer lacks metadata-location or metadata",
                ErrorClass::Definite,
            ));
        };
        Ok(TableMetadata {
            json: json.clone(),
            location: location.to_string(),
        })
    }

    pub async fn ensure_namespace(&self, namespace: &str) -> Result<(), LakeError> {
        let url = self.url("namespaces").await?;
        let body = json!({"namespace": [namespace], "properties": {}});
        let (status, answer) = self.send(reqwest::Method::POST, &url, Some(&body)).await?;
        match status {
            200 | 201 | 204 | 409 => Ok(()),
            _ => Err(self.refused("creating a namespace", status, &answer)),
        }
    }

    pub async fn load(
        &self,
        namespace: &str,
        table: &str,
    ) -> Result<Option<TableMetadata>, LakeError> {
        let url = self
            .url(&format!(
                "namespaces/{}/tables/{}",
                segment(namespace),
                segment(table)
            ))
            .await?;
        let (status, body) = self.send(reqwest::Method::GET, &url, None).await?;
        match status {
            200 => self.loaded(&body).map(Some),
            404 => Ok(None),
            _ => Err(self.refused("loading a table", status, &body)),
        }
    }

    /// Creates the table from `json` (a new table's metadata as tidewater
    /// would write it); None when a table of that name exists.
    pub async fn create(
        &self,
        namespace: &str,
        table: &str,
        json: &Value,
    ) -> Result<Option<TableMetadata>, LakeError> {
        let url = self
            .url(&format!("namespaces/{}/tables", segment(namespace)))
            .await?;
        let schema = json["schemas"][0].clone();
        let spec = json["partition-specs"][0].clone();
        let body = json!({
            "name": table,
            "location": json["location"],
            "schema": schema,
            "partition-spec": spec,
            "write-order": {"order-id": 0, "fields": []},
            "stage-create": false,
            "properties": json["properties"],
        });
        let (status, answer) = self.send(reqwest::Method::POST, &url, Some(&body)).await?;
        match status {
            200 => self.loaded(&answer).map(Some),
            409 => Ok(None),
            _ => Err(self.refused("creating a table", status, &answer)),
        }
    }

    /// Commits `updates` on condition `requirements`.
    pub async fn commit(
        &self,
        namespace: &str,
        table: &str,
        requirements: Vec<Value>,
        updates: Vec<Value>,
    ) -> Result<Committed, LakeError> {
        let url = self
            .url(&format!(
                "namespaces/{}/tables/{}",
                segment(namespace),
                segment(table)
            ))
            .await?;
        let body = json!({
            "identifier": {"namespace": [namespace], "name": table},
            "requirements": requirements,
            "updates": updates,
        });
        let (status, answer) = match self.send(reqwest::Method::POST, &url, Some(&body)).await {
            Ok(answered) => answered,
            Err(err) => return Ok(Committed::Unknown(err.to_string())),
        };
        match status {
            200 => self.loaded(&answer).map(Committed::Done),
            409 => Ok(Committed::Conflict),
            500..=599 => Ok(Committed::Unknown(format!("HTTP {status}"))),
            _ => Err(self.refused("committing", status, &answer)),
        }
    }

    pub async fn drop_table(&self, namespace: &str, table: &str) -> Result<(), LakeError> {
        let url = self
            .url(&format!(
                "namespaces/{}/tables/{}",
                segment(namespace),
                segment(table)
            ))
            .await?;
        let (status, body) = self.send(reqwest::Method::DELETE, &url, None).await?;
        match status {
            200 | 204 | 404 => Ok(()),
            _ => Err(self.refused("dropping a table", status, &body)),
        }
    }

    /// Proves the catalog reachable (its config answers).
    pub async fn probe(&self) -> Result<(), LakeError> {
        self.prefix().await.map(|_| ())
    }
}

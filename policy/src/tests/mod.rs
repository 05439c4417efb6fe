//! Behaviour tests of the whole crate: loading, matching, evaluation, explanation, printing.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod egress;
mod evaluation;
mod istio;
mod jwt;
mod load_errors;
mod matching;
mod properties;

use std::collections::BTreeMap;

use crate::{
    Decision, Explanation, HttpRequest, LoadErrors, LoadOptions, PolicySet, Request, Source,
    Workload, WorkloadPolicies, load,
};

pub(crate) const FRONTEND: &str = "cluster.local/ns/shop/sa/frontend";
pub(crate) const ADMIN: &str = "cluster.local/ns/ops/sa/admin";

/// Loads one source named `test.yaml` with default options.
pub(crate) fn load_text(text: &str) -> Result<PolicySet, LoadErrors> {
    load_with(text, &LoadOptions::default())
}

pub(crate) fn load_with(text: &str, opts: &LoadOptions) -> Result<PolicySet, LoadErrors> {
    load(
        &[Source {
            name: "test.yaml",
            text,
        }],
        opts,
    )
}

/// A document in namespace `shop` named `name`, with the given `spec` body (indented by two).
pub(crate) fn doc(name: &str, spec: &str) -> String {
    format!(
        "apiVersion: picket.dev/v1\nkind: AuthorizationPolicy\nmetadata: {{name: {name}, namespace: shop}}\nspec:\n{spec}"
    )
}

/// The `orders` workload in `shop`.
pub(crate) fn orders() -> Workload {
    Workload {
        namespace: "shop".into(),
        labels: BTreeMap::from([("app".to_owned(), "orders".to_owned())]),
    }
}

/// The policies of `orders` in a set loaded from `text` (which must load).
pub(crate) fn orders_policies(text: &str) -> WorkloadPolicies {
    orders_policies_with(text, &LoadOptions::default())
}

pub(crate) fn orders_policies_with(text: &str, opts: &LoadOptions) -> WorkloadPolicies {
    match load_with(text, opts) {
        Ok(set) => set.for_workload(&orders()),
        Err(e) => panic!("policy did not load:\n{e}\n{text}"),
    }
}

/// An owned request description; [`Req::run`] lends it out as a [`Request`].
#[derive(Debug, Clone)]
pub(crate) struct Req {
    pub(crate) principal: Option<String>,
    pub(crate) ip: String,
    pub(crate) port: u16,
    pub(crate) sni: Option<String>,
    pub(crate) http: Option<Http>,
    pub(crate) auth: Option<crate::RequestAuth>,
}

#[derive(Debug, Clone)]
pub(crate) struct Http {
    pub(crate) method: String,
    pub(crate) path: String,
    pub(crate) host: String,
    pub(crate) headers: Vec<(String, String)>,
}

impl Req {
    /// `GET /` to host `orders` on port 8080 from 10.0.0.1 as `principal`.
    pub(crate) fn http(principal: &str) -> Req {
        Req {
            principal: Some(principal.to_owned()),
            ip: "10.0.0.1".into(),
            port: 8080,
            sni: None,
            http: Some(Http {
                method: "GET".into(),
                path: "/".into(),
                host: "orders".into(),
                headers: Vec::new(),
            }),
            auth: None,
        }
    }

    /// The request carrying a validated JWT whose payload is `claims` (a JSON object).
    pub(crate) fn jwt(mut self, claims: serde_json::Value) -> Req {
        let serde_json::Value::Object(map) = claims else {
            panic!("claims must be a JSON object")
        };
        self.auth = Some(crate::RequestAuth::from_claims(map));
        self
    }

    /// A TCP connection on port 8080 from 10.0.0.1 as `principal`.
    pub(crate) fn tcp(principal: &str) -> Req {
        Req {
            http: None,
            ..Req::http(principal)
        }
    }

    pub(crate) fn anonymous(mut self) -> Req {
        self.principal = None;
        self
    }

    pub(crate) fn ip(mut self, ip: &str) -> Req {
        self.ip = ip.into();
        self
    }

    pub(crate) fn port(mut self, port: u16) -> Req {
        self.port = port;
        self
    }

    pub(crate) fn sni(mut self, sni: &str) -> Req {
        self.sni = Some(sni.into());
        self
    }

    fn http_mut(&mut self) -> &mut Http {
        self.http.get_or_insert_with(|| Http {
            method: "GET".into(),
            path: "/".into(),
            host: "orders".into(),
            headers: Vec::new(),
        })
    }

    pub(crate) fn method(mut self, m: &str) -> Req {
        self.http_mut().method = m.into();
        self
    }

    pub(crate) fn path(mut self, p: &str) -> Req {
        self.http_mut().path = p.into();
        self
    }

    pub(crate) fn host(mut self, h: &str) -> Req {
        self.http_mut().host = h.into();
        self
    }

    pub(crate) fn header(mut self, name: &str, value: &str) -> Req {
        self.http_mut()
            .headers
            .push((name.to_owned(), value.to_owned()));
        self
    }

    pub(crate) fn run<R>(&self, f: impl FnOnce(&Request<'_>) -> R) -> R {
        let headers: Vec<(&str, &str)> = self
            .http
            .as_ref()
            .map(|h| {
                h.headers
                    .iter()
                    .map(|(n, v)| (n.as_str(), v.as_str()))
                    .collect()
            })
            .unwrap_or_default();
        let req = Request {
            source_principal: self.principal.as_deref(),
            source_ip: self.ip.parse().unwrap(),
            destination_port: self.port,
            sni: self.sni.as_deref(),
            http: self.http.as_ref().map(|h| HttpRequest {
                method: &h.method,
                path: &h.path,
                host: &h.host,
                headers: &headers,
            }),
            auth: self.auth.as_ref(),
        };
        f(&req)
    }

    pub(crate) fn evaluate(&self, policies: &WorkloadPolicies) -> Decision {
        self.run(|r| policies.evaluate(r))
    }

    pub(crate) fn explain(&self, policies: &WorkloadPolicies) -> Explanation {
        self.run(|r| policies.explain(r))
    }
}

#[test]
fn shared_types_are_send_and_sync() {
    fn check<T: Send + Sync>() {}
    check::<PolicySet>();
    check::<WorkloadPolicies>();
    check::<Decision>();
    check::<Explanation>();
    check::<LoadErrors>();
}

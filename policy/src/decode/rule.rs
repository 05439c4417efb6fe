//! A rule: `from` sources, `to` operations and `when` conditions, each decoded into the
//! model and compiled at once.

use super::values::*;
use super::*;

impl Decoder<'_> {
    pub(super) fn rule(&mut self, node: &Yaml, path: &str) -> Option<(Rule, CompiledRule)> {
        let f = self.fields(node, path, RULE_FIELDS, &[])?;
        let mut rule = Rule::default();
        let mut compiled = CompiledRule::default();
        if let Some(from) = f.get("from") {
            if self.egress {
                self.error(
                    f.key_pos("from").unwrap_or(from.pos),
                    format!(
                        "`{path}.from`: an egress policy decides the selected workloads' own \
                         connections, so it has no sources; select the workloads with \
                         `spec.selector`"
                    ),
                );
            }
            self.rule_from(from, path, &mut rule, &mut compiled);
        }
        let op_http = match f.get("to") {
            Some(to) => self.rule_to(to, path, &mut rule, &mut compiled),
            None => Vec::new(),
        };
        let (when_ports, header_conditions) = match f.get("when") {
            Some(when) => self.rule_when(when, path, &mut rule, &mut compiled),
            None => (None, Vec::new()),
        };
        if self.egress {
            // Egress rules match hosts against the name the client asked for, which every
            // egress connection is evaluated with (present or not): nothing is HTTP-only.
            return Some((rule, compiled));
        }
        compiled.http_only = compiled.from.iter().any(Peer::has_http_fields)
            || compiled.to.iter().any(Operation::has_http_fields)
            || compiled.when.iter().any(Condition::is_http_only);
        self.http_fields_on_opaque_ports(&op_http, when_ports.as_deref(), &header_conditions);
        Some((rule, compiled))
    }

    /// `from`: the sources.
    fn rule_from(&mut self, from: &Yaml, path: &str, rule: &mut Rule, compiled: &mut CompiledRule) {
        let from_path = format!("{path}.from");
        let entries = self.list(from, &from_path, |d, item, item_path| {
            let ef = d.fields(item, item_path, FROM_FIELDS, &[])?;
            let source = d.required(&ef, item, item_path, "source")?;
            d.source(source, &format!("{item_path}.source"))
        });
        for (spec, peer) in entries {
            rule.from.push(spec);
            compiled.from.push(peer);
        }
    }

    /// `to`: the operations; returns the HTTP-only fields of each, with the ports it names.
    fn rule_to(
        &mut self,
        to: &Yaml,
        path: &str,
        rule: &mut Rule,
        compiled: &mut CompiledRule,
    ) -> Vec<(Vec<u16>, Spots)> {
        let to_path = format!("{path}.to");
        let entries = self.list(to, &to_path, |d, item, item_path| {
            let ef = d.fields(item, item_path, TO_FIELDS, &[])?;
            let op = d.required(&ef, item, item_path, "operation")?;
            d.operation(op, &format!("{item_path}.operation"))
        });
        let mut op_http = Vec::with_capacity(entries.len());
        for (spec, op, fields) in entries {
            op_http.push((spec.ports.clone(), fields));
            rule.to.push(spec);
            compiled.to.push(op);
        }
        op_http
    }

    /// `when`: the conditions; returns the ports every `destination.port` condition allows
    /// (when there are such conditions) and the HTTP-only conditions.
    fn rule_when(
        &mut self,
        when: &Yaml,
        path: &str,
        rule: &mut Rule,
        compiled: &mut CompiledRule,
    ) -> (Option<Vec<u16>>, Spots) {
        let when_path = format!("{path}.when");
        let conditions = self.list(when, &when_path, |d, item, item_path| {
            d.condition(item, item_path)
        });
        let mut when_ports: Option<Vec<u16>> = None;
        let mut header_conditions: Spots = Vec::new();
        for (i, (spec, cond, key_pos)) in conditions.into_iter().enumerate() {
            if let CondValues::Port(ports) = &cond.values
                && !ports.is_empty()
            {
                when_ports = Some(match when_ports {
                    None => ports.clone(),
                    Some(prev) => prev.into_iter().filter(|p| ports.contains(p)).collect(),
                });
            }
            if cond.is_http_only() {
                header_conditions.push((key_pos, format!("`{when_path}[{i}]` ({})", spec.key)));
            }
            rule.when.push(spec);
            compiled.when.push(cond);
        }
        (when_ports, header_conditions)
    }

    /// Reports HTTP-only fields and conditions where every port the request could arrive on
    /// is opaque TCP: they can never match.
    fn http_fields_on_opaque_ports(
        &mut self,
        op_http: &[(Vec<u16>, Spots)],
        when_ports: Option<&[u16]>,
        header_conditions: &Spots,
    ) {
        let reachable = |ports: &[u16]| -> Option<Vec<u16>> {
            match (when_ports, ports.is_empty()) {
                (None, true) => None,
                (None, false) => Some(ports.to_vec()),
                (Some(w), true) => Some(w.to_vec()),
                (Some(w), false) => Some(ports.iter().copied().filter(|p| w.contains(p)).collect()),
            }
        };
        let opaque = |ports: &[u16]| {
            !ports.is_empty() && ports.iter().all(|p| self.opaque_ports.contains(p))
        };
        let mut never: Vec<(Pos, String, Vec<u16>)> = Vec::new();
        let mut rule_ports: Option<Vec<u16>> = if op_http.is_empty() {
            when_ports.map(<[u16]>::to_vec)
        } else {
            Some(Vec::new())
        };
        for (ports, fields) in op_http {
            let op_reach = reachable(ports);
            match (&mut rule_ports, &op_reach) {
                (Some(all), Some(r)) => all.extend(r),
                _ => rule_ports = None,
            }
            if let Some(r) = op_reach.filter(|r| opaque(r)) {
                never.extend(
                    fields
                        .iter()
                        .map(|(pos, what)| (*pos, what.clone(), r.clone())),
                );
            }
        }
        if let Some(r) = rule_ports.filter(|r| opaque(r)) {
            never.extend(
                header_conditions
                    .iter()
                    .map(|(pos, what)| (*pos, what.clone(), r.clone())),
            );
        }
        for (pos, what, ports) in never {
            self.error(
                pos,
                format!(
                    "{what} can never match: it only applies to ports declared opaque TCP \
                     ({}), which carry no HTTP requests",
                    show_ports(&ports)
                ),
            );
        }
    }

    pub(super) fn source(&mut self, node: &Yaml, path: &str) -> Option<(PeerSpec, Peer)> {
        let f = self.fields(node, path, SOURCE_FIELDS, SOURCE_UNSUPPORTED)?;
        if f.empty {
            self.error(
                node.pos,
                format!(
                    "`{path}` has no fields: remove the entry to match any source, or give it \
                     principals, requestPrincipals, namespaces or ipBlocks"
                ),
            );
        }
        let p = |name: &str| format!("{path}.{name}");
        let principals = self.patterns(f.get("principals"), &p("principals"), parse_principal);
        let not_principals =
            self.patterns(f.get("notPrincipals"), &p("notPrincipals"), parse_principal);
        let namespaces = self.patterns(f.get("namespaces"), &p("namespaces"), parse_namespace);
        let not_namespaces =
            self.patterns(f.get("notNamespaces"), &p("notNamespaces"), parse_namespace);
        let ip_blocks = self.patterns(f.get("ipBlocks"), &p("ipBlocks"), Cidr::parse);
        let not_ip_blocks = self.patterns(f.get("notIpBlocks"), &p("notIpBlocks"), Cidr::parse);
        let request_principals = self.patterns(
            f.get("requestPrincipals"),
            &p("requestPrincipals"),
            parse_request_principal,
        );
        let not_request_principals = self.patterns(
            f.get("notRequestPrincipals"),
            &p("notRequestPrincipals"),
            parse_request_principal,
        );
        self.contradiction(
            path,
            ("requestPrincipals", &request_principals),
            ("notRequestPrincipals", &not_request_principals),
        );
        self.contradiction(
            path,
            ("principals", &principals),
            ("notPrincipals", &not_principals),
        );
        self.contradiction(
            path,
            ("namespaces", &namespaces),
            ("notNamespaces", &not_namespaces),
        );
        self.contradiction(
            path,
            ("ipBlocks", &ip_blocks),
            ("notIpBlocks", &not_ip_blocks),
        );
        let spec = PeerSpec {
            principals: raws(&principals),
            not_principals: raws(&not_principals),
            namespaces: raws(&namespaces),
            not_namespaces: raws(&not_namespaces),
            ip_blocks: raws(&ip_blocks),
            not_ip_blocks: raws(&not_ip_blocks),
            request_principals: raws(&request_principals),
            not_request_principals: raws(&not_request_principals),
        };
        let peer = Peer {
            principals: values(&principals),
            not_principals: values(&not_principals),
            namespaces: values(&namespaces),
            not_namespaces: values(&not_namespaces),
            ip_blocks: values(&ip_blocks),
            not_ip_blocks: values(&not_ip_blocks),
            request_principals: values(&request_principals),
            not_request_principals: values(&not_request_principals),
        };
        Some((spec, peer))
    }

    pub(super) fn operation(
        &mut self,
        node: &Yaml,
        path: &str,
    ) -> Option<(OperationSpec, Operation, Spots)> {
        let f = self.fields(node, path, OPERATION_FIELDS, &[])?;
        if f.empty {
            self.error(
                node.pos,
                format!(
                    "`{path}` has no fields: remove the entry to match any operation, or give \
                     it hosts, ports, methods or paths"
                ),
            );
        }
        let p = |name: &str| format!("{path}.{name}");
        let hosts = self.patterns(f.get("hosts"), &p("hosts"), HostMatch::parse);
        let not_hosts = self.patterns(f.get("notHosts"), &p("notHosts"), HostMatch::parse);
        let ports = self.ports(f.get("ports"), &p("ports"));
        let not_ports = self.ports(f.get("notPorts"), &p("notPorts"));
        let methods = self.patterns(f.get("methods"), &p("methods"), parse_method);
        let not_methods = self.patterns(f.get("notMethods"), &p("notMethods"), parse_method);
        let paths = self.patterns(f.get("paths"), &p("paths"), parse_path);
        let not_paths = self.patterns(f.get("notPaths"), &p("notPaths"), parse_path);
        self.contradiction(path, ("hosts", &hosts), ("notHosts", &not_hosts));
        self.contradiction(path, ("ports", &ports), ("notPorts", &not_ports));
        self.contradiction(path, ("methods", &methods), ("notMethods", &not_methods));
        self.contradiction(path, ("paths", &paths), ("notPaths", &not_paths));

        if self.egress {
            for name in ["methods", "notMethods", "paths", "notPaths"] {
                if let Some(pos) = f.key_pos(name) {
                    self.error(
                        pos,
                        format!(
                            "`{}`: an egress connection is decided before any request is read; \
                             egress operations match `hosts` (the TLS SNI or HTTP Host) and \
                             `ports`",
                            p(name)
                        ),
                    );
                }
            }
        }
        let http_fields: Vec<(Pos, String)> = HTTP_FIELDS
            .iter()
            .filter_map(|name| f.key_pos(name).map(|pos| (pos, format!("`{}`", p(name)))))
            .collect();
        let port_values = values(&ports);
        let spec = OperationSpec {
            hosts: raws(&hosts),
            not_hosts: raws(&not_hosts),
            ports: port_values.clone(),
            not_ports: values(&not_ports),
            methods: raws(&methods),
            not_methods: raws(&not_methods),
            paths: raws(&paths),
            not_paths: raws(&not_paths),
        };
        let op = Operation {
            hosts: values(&hosts),
            not_hosts: values(&not_hosts),
            ports: port_values,
            not_ports: values(&not_ports),
            methods: values(&methods),
            not_methods: values(&not_methods),
            paths: values(&paths),
            not_paths: values(&not_paths),
        };
        Some((spec, op, http_fields))
    }

    pub(super) fn condition(
        &mut self,
        node: &Yaml,
        path: &str,
    ) -> Option<(ConditionSpec, Condition, Pos)> {
        let f = self.fields(node, path, CONDITION_FIELDS, &[])?;
        let key_node = self.required(&f, node, path, "key")?;
        let key_text = self.string(key_node, &format!("{path}.key"))?;
        let key = match (self.egress, parse_condition_key(key_text)) {
            (true, _) if key_text == "destination.ip" => CondKey::DestinationIp,
            (true, Ok(key @ (CondKey::DestinationPort | CondKey::Sni))) | (false, Ok(key)) => key,
            (true, Ok(_)) => {
                self.error(
                    key_node.pos,
                    format!(
                        "`{path}.key`: `{key_text}` has no value on an egress connection; egress \
                         conditions are {EGRESS_WHEN_KEYS}"
                    ),
                );
                return None;
            }
            (_, Err(why)) => {
                self.error(key_node.pos, format!("`{path}.key`: {why}"));
                return None;
            }
        };
        let values_node = f.get("values");
        let not_values_node = f.get("notValues");
        if values_node.is_none() && not_values_node.is_none() {
            self.error(
                node.pos,
                format!("`{path}` needs `values`, `notValues` or both"),
            );
            return None;
        }
        let (spec_values, spec_not, values, not_values) =
            self.condition_values(&key, values_node, not_values_node, path);
        let spec = ConditionSpec {
            key: key_text.to_owned(),
            values: spec_values,
            not_values: spec_not,
        };
        let condition = Condition {
            key,
            values,
            not_values,
        };
        Some((spec, condition, key_node.pos))
    }

    /// A condition's `values` and `notValues`, parsed as its key's values are (addresses,
    /// ports or strings), raw for the canonical form and compiled for matching.
    fn condition_values(
        &mut self,
        key: &CondKey,
        values_node: Option<&Yaml>,
        not_values_node: Option<&Yaml>,
        path: &str,
    ) -> (Vec<String>, Vec<String>, CondValues, CondValues) {
        let vp = format!("{path}.values");
        let np = format!("{path}.notValues");
        match key {
            CondKey::SourceIp | CondKey::DestinationIp => {
                let v = self.patterns(values_node, &vp, Cidr::parse);
                let n = self.patterns(not_values_node, &np, Cidr::parse);
                self.contradiction(path, ("values", &v), ("notValues", &n));
                (
                    raws(&v),
                    raws(&n),
                    CondValues::Ip(values(&v)),
                    CondValues::Ip(values(&n)),
                )
            }
            CondKey::DestinationPort => {
                let v = self.ports(values_node, &vp);
                let n = self.ports(not_values_node, &np);
                self.contradiction(path, ("values", &v), ("notValues", &n));
                (
                    raws(&v),
                    raws(&n),
                    CondValues::Port(values(&v)),
                    CondValues::Port(values(&n)),
                )
            }
            CondKey::Header(_)
            | CondKey::SourceNamespace
            | CondKey::SourcePrincipal
            | CondKey::Sni
            | CondKey::RequestPrincipal
            | CondKey::RequestAudiences
            | CondKey::RequestPresenter
            | CondKey::RequestClaim(_) => {
                let parse: fn(&str) -> Result<StrMatch, String> = match key {
                    CondKey::SourceNamespace => parse_namespace,
                    CondKey::SourcePrincipal => parse_principal,
                    CondKey::Sni => parse_sni,
                    CondKey::RequestPrincipal => parse_request_principal,
                    _ => parse_header_value,
                };
                let v = self.patterns(values_node, &vp, parse);
                let n = self.patterns(not_values_node, &np, parse);
                self.contradiction(path, ("values", &v), ("notValues", &n));
                (
                    raws(&v),
                    raws(&n),
                    CondValues::Str(values(&v)),
                    CondValues::Str(values(&n)),
                )
            }
        }
    }
}

//! The cluster's state as `crm_mon --output-as=xml` reports it: the DC, which nodes are
//! online, where each resource runs, the failed actions. Used by `up` to wait for the
//! cluster and by the tests to watch a failover.

use std::collections::BTreeMap;

/// One resource (primitives only; those inside groups and clones are listed too).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resource {
    /// Its id.
    pub id: String,
    /// `ocf:vesper:vesper`, ...
    pub agent: String,
    /// `Started`, `Stopped`, `Starting`, ...
    pub role: String,
    /// Whether Pacemaker marks it failed.
    pub failed: bool,
    /// The nodes it runs on.
    pub nodes: Vec<String>,
}

/// A failed action (`Failed Resource Actions` in `crm_mon -1`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    /// `web1_monitor_2000`.
    pub op_key: String,
    /// Where.
    pub node: String,
    /// The agent's exit reason.
    pub exit_reason: String,
}

/// The cluster's state.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ClusterStatus {
    /// The designated controller, once elected.
    pub dc: Option<String>,
    /// Whether the DC's partition has quorum.
    pub quorate: bool,
    /// Each node: online or not.
    pub nodes: BTreeMap<String, bool>,
    /// The resources.
    pub resources: Vec<Resource>,
    /// Failed actions.
    pub failures: Vec<Failure>,
}

impl ClusterStatus {
    /// Parses `crm_mon -1 --output-as=xml`.
    pub fn parse(xml: &str) -> Result<Self, String> {
        let doc = roxmltree::Document::parse(xml).map_err(|e| format!("crm_mon XML: {e}"))?;
        let mut s = ClusterStatus::default();
        let attr = |n: roxmltree::Node, a: &str| n.attribute(a).unwrap_or("").to_string();
        for n in doc.descendants().filter(|n| n.is_element()) {
            match n.tag_name().name() {
                "current_dc" if n.attribute("present") == Some("true") => {
                    s.dc = n.attribute("name").map(str::to_string);
                    s.quorate = n.attribute("with_quorum") == Some("true");
                }
                "node" if n.parent_element().map(|p| p.tag_name().name()) == Some("nodes") => {
                    s.nodes
                        .insert(attr(n, "name"), n.attribute("online") == Some("true"));
                }
                "resource" => s.resources.push(Resource {
                    id: attr(n, "id"),
                    agent: attr(n, "resource_agent"),
                    role: attr(n, "role"),
                    failed: n.attribute("failed") == Some("true"),
                    nodes: n
                        .children()
                        .filter(|c| c.has_tag_name("node"))
                        .map(|c| attr(c, "name"))
                        .collect(),
                }),
                "failure" => s.failures.push(Failure {
                    op_key: attr(n, "op_key"),
                    node: attr(n, "node"),
                    exit_reason: attr(n, "exitreason"),
                }),
                _ => {}
            }
        }
        Ok(s)
    }

    /// Whether a DC is elected and every one of `nodes` is online.
    pub fn ready(&self, nodes: &[String]) -> bool {
        self.dc.is_some() && nodes.iter().all(|n| self.nodes.get(n) == Some(&true))
    }

    /// The resource `id`.
    pub fn resource(&self, id: &str) -> Option<&Resource> {
        self.resources.iter().find(|r| r.id == id)
    }

    /// Whether `id` is started on `node` (and only there) and not failed.
    pub fn started_on(&self, id: &str, node: &str) -> bool {
        self.resource(id).is_some_and(|r| {
            r.role == "Started" && !r.failed && r.nodes.len() == 1 && r.nodes[0] == node
        })
    }

    /// One line for messages: DC, nodes, resources.
    pub fn summary(&self) -> String {
        let nodes: Vec<String> = self
            .nodes
            .iter()
            .map(|(n, on)| format!("{n} {}", if *on { "online" } else { "offline" }))
            .collect();
        let res: Vec<String> = self
            .resources
            .iter()
            .map(|r| format!("{} {} {}", r.id, r.role, r.nodes.join(",")))
            .collect();
        format!(
            "DC {}; nodes: {}; resources: {}",
            self.dc.as_deref().unwrap_or("none"),
            nodes.join(", "),
            if res.is_empty() {
                "none".to_string()
            } else {
                res.join(", ")
            }
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // Trimmed from crm_mon 2.1.5 on a lab right after a failover.
    const XML: &str = r#"<pacemaker-result api-version="2.25" request="crm_mon -1 --output-as=xml">
  <summary>
    <stack type="corosync"/>
    <current_dc present="true" version="2.1.5-a3f44794f94" name="n1" id="1" with_quorum="true" mixed_version="false"/>
    <nodes_configured number="2"/>
  </summary>
  <nodes>
    <node name="n1" id="1" online="true" standby="false" type="member"/>
    <node name="n2" id="2" online="false" standby="false" type="member"/>
  </nodes>
  <resources>
    <resource id="web1" resource_agent="ocf:vesper:vesper" role="Started" active="true" orphaned="false" blocked="false" managed="true" failed="false" failure_ignored="false" nodes_running_on="1">
      <node name="n2" id="2" cached="true"/>
    </resource>
    <group id="g" number_resources="1">
      <resource id="web1-ip" resource_agent="ocf:heartbeat:IPaddr2" role="Stopped" active="false" orphaned="false" blocked="false" managed="true" failed="false" failure_ignored="false" nodes_running_on="0"/>
    </group>
  </resources>
  <node_history>
    <node name="n1"><resource_history id="web1" orphan="false" migration-threshold="1"/></node>
  </node_history>
  <failures>
    <failure op_key="web1_monitor_2000" node="n1" exitstatus="error" exitreason="Vesper saw a failure in guest web1: svc (pid 93) killed by signal 9" exitcode="1" call="12" status="complete" interval="2000" task="monitor"/>
  </failures>
  <status code="0" message="OK"/>
</pacemaker-result>"#;

    #[test]
    fn reads_dc_nodes_resources_and_failures() {
        let s = ClusterStatus::parse(XML).unwrap();
        assert_eq!(s.dc.as_deref(), Some("n1"));
        assert!(s.quorate);
        assert_eq!(s.nodes.len(), 2, "history's node elements are not nodes");
        assert!(!s.ready(&["n1".into(), "n2".into()]));
        assert!(s.ready(&["n1".into()]));
        assert!(s.started_on("web1", "n2"));
        assert!(!s.started_on("web1", "n1"));
        assert!(!s.started_on("web1-ip", "n2"));
        assert_eq!(s.resource("web1-ip").unwrap().role, "Stopped");
        assert_eq!(s.failures.len(), 1);
        assert!(s.failures[0].exit_reason.contains("Vesper saw a failure"));
        assert!(s.summary().contains("web1 Started n2"));
    }

    #[test]
    fn no_dc_and_garbage() {
        let s = ClusterStatus::parse(r#"<pacemaker-result><summary><current_dc present="false"/></summary></pacemaker-result>"#).unwrap();
        assert_eq!(s.dc, None);
        assert!(!s.ready(&[]));
        assert!(ClusterStatus::parse("not xml").is_err());
    }
}

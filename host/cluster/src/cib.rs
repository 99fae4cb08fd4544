//! Which guest is which cluster resource: the `ocf:vesper:vesper` primitives of a CIB
//! (`cibadmin --query --scope resources`), keyed by their `guest` instance attribute.

use std::collections::BTreeMap;

use crate::ClusterError;

/// The guests a CIB manages, and the resource that manages each.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Resources {
    by_guest: BTreeMap<String, String>,
}

impl Resources {
    /// Reads the `ocf:vesper:vesper` primitives out of CIB XML (the whole CIB or its
    /// `resources` section), wherever they sit: top level, in a group, clone or bundle.
    pub fn from_cib_xml(xml: &str) -> Result<Resources, ClusterError> {
        let doc = roxmltree::Document::parse(xml).map_err(|e| ClusterError::Cib(e.to_string()))?;
        let mut by_guest = BTreeMap::new();
        for p in doc.descendants().filter(|n| n.has_tag_name("primitive")) {
            let is_vesper = p.attribute("class") == Some("ocf")
                && p.attribute("provider") == Some("vesper")
                && p.attribute("type") == Some("vesper");
            if !is_vesper {
                continue;
            }
            let Some(id) = p.attribute("id") else {
                continue;
            };
            // Only the primitive's own parameters: not a nested meta or op's.
            let guest = p
                .children()
                .filter(|c| c.has_tag_name("instance_attributes"))
                .flat_map(|ia| ia.children().filter(|c| c.has_tag_name("nvpair")))
                .find(|nv| nv.attribute("name") == Some("guest"))
                .and_then(|nv| nv.attribute("value"));
            if let Some(guest) = guest {
                // Two resources for one guest is a CIB mistake; the first one wins, and
                // the bridge says which one it reports.
                by_guest
                    .entry(guest.to_string())
                    .or_insert_with(|| id.to_string());
            }
        }
        Ok(Resources { by_guest })
    }

    /// The resource managing `guest`, if the cluster manages it.
    pub fn resource_of(&self, guest: &str) -> Option<&str> {
        self.by_guest.get(guest).map(String::as_str)
    }

    /// The guest `resource` manages, if it is one of Vesper's.
    pub fn guest_of(&self, resource: &str) -> Option<&str> {
        self.by_guest
            .iter()
            .find(|(_, r)| r.as_str() == resource)
            .map(|(g, _)| g.as_str())
    }

    /// How many guests the cluster manages.
    pub fn len(&self) -> usize {
        self.by_guest.len()
    }

    /// True when the cluster manages no guest.
    pub fn is_empty(&self) -> bool {
        self.by_guest.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CIB: &str = r#"<resources>
  <primitive id="web1-vm" class="ocf" provider="vesper" type="vesper">
    <instance_attributes id="web1-vm-ia">
      <nvpair id="a" name="guest" value="web1"/>
      <nvpair id="b" name="memory" value="512"/>
    </instance_attributes>
    <meta_attributes id="m"><nvpair id="c" name="guest" value="not-this"/></meta_attributes>
  </primitive>
  <group id="g">
    <primitive id="db-vm" class="ocf" provider="vesper" type="vesper">
      <instance_attributes id="db-ia"><nvpair id="d" name="guest" value="db"/></instance_attributes>
    </primitive>
    <primitive id="ip" class="ocf" provider="heartbeat" type="IPaddr2">
      <instance_attributes id="ip-ia"><nvpair id="e" name="guest" value="web1"/></instance_attributes>
    </primitive>
  </group>
  <primitive id="noguest" class="ocf" provider="vesper" type="vesper"/>
</resources>"#;

    #[test]
    fn vesper_primitives_map_their_guest_wherever_they_sit() {
        let r = Resources::from_cib_xml(CIB).unwrap();
        assert_eq!(r.resource_of("web1"), Some("web1-vm"));
        assert_eq!(r.resource_of("db"), Some("db-vm"));
        assert_eq!(
            r.resource_of("not-this"),
            None,
            "a meta attribute is no parameter"
        );
        assert_eq!(r.guest_of("db-vm"), Some("db"));
        assert_eq!(r.guest_of("ip"), None);
        assert_eq!(
            r.len(),
            2,
            "IPaddr2's guest param and a guestless primitive are not guests"
        );
    }

    #[test]
    fn broken_xml_is_a_cib_error() {
        let e = Resources::from_cib_xml("<resources><primitive").unwrap_err();
        assert!(matches!(e, ClusterError::Cib(_)), "{e}");
    }
}

//! The node's default pod network, with the seeds' numbers.

use serde_json::{json, Value};

/// Name of the default network.
pub const DEFAULT_NETWORK: &str = "pods";
/// Name of the default config file in the conf dir.
pub const DEFAULT_CONFLIST_FILE: &str = "10-sandboxd.conflist";
/// Where sandboxd reads network configs; its own, so other runtimes' configs are not touched.
pub const DEFAULT_CONF_DIR: &str = "/etc/sandboxd/net.d";
/// Where sandboxd keeps CNI results and host-local leases.
pub const DEFAULT_CNI_STATE_DIR: &str = "/var/lib/sandboxd/cni";

/// Node `node_index` gets 10.244.<node_index>.0/24 with its gateway .1 on bridge `cni0`,
/// as flannel gives each node a /24 of the cluster's 10.244.0.0/16.
pub fn default_conflist(node_index: u8, ipam_data_dir: &str) -> Value {
    let subnet = crate::cidr::Ipv4Cidr::new(std::net::Ipv4Addr::new(10, 244, node_index, 0), 24);
    conflist(subnet, None, ipam_data_dir)
}

/// The pod network of a node holding `subnet`: bridge `cni0` with the gateway `.1`,
/// host-local leases from the subnet, and the MTU the overlay leaves (None: the kernel's
/// default, for a node without one).
pub fn conflist(subnet: crate::cidr::Ipv4Cidr, mtu: Option<u32>, ipam_data_dir: &str) -> Value {
    let subnet = subnet.network().to_string();
    let mut doc = json!({
        "cniVersion": "1.0.0",
        "name": DEFAULT_NETWORK,
        "plugins": [
            {
                "type": "bridge",
                "bridge": "cni0",
                "isGateway": true,
                "ipMasq": false,
                "hairpinMode": true,
                "ipam": {
                    "type": "host-local",
                    "ranges": [[{ "subnet": subnet }]],
                    "routes": [{ "dst": "0.0.0.0/0" }],
                    "dataDir": ipam_data_dir,
                },
            },
            { "type": "portmap", "capabilities": { "portMappings": true } },
            { "type": "loopback" },
        ],
    });
    if let Some(mtu) = mtu {
        doc["plugins"][0]["mtu"] = json!(mtu);
    }
    doc
}

/// Writes the default network for node `node_index` into the config's conf dir, with its
/// IPAM leases under the state dir, and returns the file written.
pub fn install_default(
    config: &crate::config::Config,
    node_index: u8,
) -> std::io::Result<std::path::PathBuf> {
    let ipam = config.cni_cache_dir().join("ipam");
    install(
        config,
        default_conflist(node_index, &ipam.display().to_string()),
    )
}

/// Writes the pod network of a cluster node (its leased `subnet`, the overlay's `mtu`).
pub fn install_for_subnet(
    config: &crate::config::Config,
    subnet: crate::cidr::Ipv4Cidr,
    mtu: u32,
) -> std::io::Result<std::path::PathBuf> {
    let ipam = config.cni_cache_dir().join("ipam");
    install(
        config,
        conflist(subnet, Some(mtu), &ipam.display().to_string()),
    )
}

/// Writes `doc` as the default network file, atomically.
fn install(config: &crate::config::Config, doc: Value) -> std::io::Result<std::path::PathBuf> {
    std::fs::create_dir_all(&config.cni_conf_dir)?;
    let file = config.cni_conf_dir.join(DEFAULT_CONFLIST_FILE);
    let staging = file.with_extension("tmp");
    std::fs::write(&staging, serde_json::to_string_pretty(&doc).expect("json"))?;
    std::fs::rename(&staging, &file)?;
    Ok(file)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_network_is_a_valid_conflist_on_the_nodes_subnet() {
        let doc = default_conflist(2, "/tmp/ipam");
        let list = cni_host::NetworkConfigList::from_bytes(doc.to_string().as_bytes(), "<default>")
            .unwrap();
        assert_eq!(list.name, DEFAULT_NETWORK);
        let types: Vec<_> = list
            .plugins
            .iter()
            .map(|p| p.plugin_type.as_str())
            .collect();
        assert_eq!(types, ["bridge", "portmap", "loopback"]);
        assert_eq!(
            list.plugins[0].raw["ipam"]["ranges"][0][0]["subnet"],
            "10.244.2.0/24"
        );
        assert!(list.plugins[0].raw.get("mtu").is_none());
    }

    #[test]
    fn a_cluster_nodes_network_carries_its_lease_and_the_overlays_mtu() {
        let doc = conflist("10.244.7.0/24".parse().unwrap(), Some(1450), "/tmp/ipam");
        let list =
            cni_host::NetworkConfigList::from_bytes(doc.to_string().as_bytes(), "<node>").unwrap();
        assert_eq!(list.plugins[0].raw["mtu"], 1450);
        assert_eq!(list.plugins[0].raw["bridge"], "cni0");
        assert_eq!(
            list.plugins[0].raw["ipam"]["ranges"][0][0]["subnet"],
            "10.244.7.0/24"
        );
    }
}
